// The CPU emulation of the CUDA runtime (tests/cuda_emu/cuda_emu.h): devices, memory (device and
// pinned host), streams, events, errors, stream capture into CUDA graphs and their replay, and
// kernel launches run as one fiber per CUDA thread.
//
// Work runs when enqueued, except behind deferred work (runtime_internal.h EnqueueDeferred: the
// NCCL emulation's sends and receives, which wait for a peer): while a stream has some, its later
// kernels, copies and memsets are queued and run in stream order once it completes (on whichever
// thread makes progress), cudaStreamQuery says cudaErrorNotReady, and cudaStreamSynchronize,
// cudaDeviceSynchronize (this device's streams), cudaStreamDestroy, synchronous copies and
// copies to pageable host memory wait for it; cuBLAS calls, event records, graph launches,
// stream-ordered allocation and capture on such a stream are refused (cudaErrorIllegalState, with
// a message). cudaFree does not wait for deferred work (a GPU's would synchronize the device).
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <source_location>
#include <string>
#include <thread>
#include <vector>

#include "tests/cuda_emu/cuda_emu.h"
#include "tests/cuda_emu/runtime_internal.h"

// Fiber switches: a few instructions of our own on x86-64 (swapcontext makes a system call per
// switch, and a block switches thousands of times); ucontext elsewhere and under AddressSanitizer,
// which understands swapcontext.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define CMOE_EMU_ASM_SWITCH 1
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save, and
// resumes the stack `load` saved the same way. (MXCSR and the x87 control word are not switched:
// no kernel changes them.)
extern "C" void cmoe_emu_switch(void** save, void* load);
asm(R"(
  .text
  .globl cmoe_emu_switch
  .type cmoe_emu_switch, @function
cmoe_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cmoe_emu_switch, .-cmoe_emu_switch
)");
#else
#define CMOE_EMU_ASM_SWITCH 0
#endif

// A node of a captured graph: one captured call, with its parameters by value.
struct CUgraphNode_st {
  enum class Type { kKernel, kMemcpy, kMemset };  // a cuBLAS call is a kernel node, as on a GPU
  Type type = Type::kKernel;
  // kKernel: a launch (kernel, config, body) or a library call (library: "" or what failed).
  const void* kernel = nullptr;
  cmoe::cuda_emu::LaunchConfig config{dim3(), dim3()};
  std::function<void()> body;
  std::function<std::string()> library;
  // kMemcpy (dst, src, bytes; which sides are device memory) and kMemset (dst, value, bytes).
  void* dst = nullptr;
  const void* src = nullptr;
  size_t bytes = 0;
  bool dst_device = false;
  bool src_device = false;
  int value = 0;
};
struct CUgraph_st {
  std::vector<CUgraphNode_st> nodes;  // in capture order: a chain, as one stream captures it
};
struct CUgraphExec_st {
  std::vector<CUgraphNode_st> nodes;
};

namespace cmoe::cuda_emu {

FiberState* g_fiber = nullptr;
uint3 g_block_idx;
dim3 g_block_dim;
dim3 g_grid_dim;
void* g_dynamic_shared = nullptr;

namespace {

constexpr size_t kStackBytes = size_t{256} << 10;
constexpr size_t kDefaultDynamicShared = size_t{48} << 10;
constexpr size_t kMaxDynamicShared = size_t{227} << 10;  // sm_90's opt-in limit per block
constexpr size_t kSharedPerSm = size_t{228} << 10;
constexpr int kSms = 132;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kMaxThreadsPerSm = 2048;

struct Context {
#if CMOE_EMU_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

void SwitchTo(Context& save, Context& load) {
#if CMOE_EMU_ASM_SWITCH
  cmoe_emu_switch(&save.sp, load.sp);
#else
  swapcontext(&save.uc, &load.uc);
#endif
}

struct Fiber : FiberState {
  Context context;
  bool done = false;
};

struct Warp {
  uint64_t values[2][kWarpSize];
  unsigned masks[2][kWarpSize];
  unsigned live_at[2] = {0, 0};         // the live lanes when the exchange in that slot completed
  bool uniform_at[2] = {false, false};  // whether every live lane posted the same mask
  int arrived = 0;
  unsigned generation = 0;
  unsigned live = 0;
  int live_count = 0;
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  int live = 0;
  int arrived = 0;
  unsigned generation = 0;
  uint64_t progress = 0;  // arrivals and exits: unchanged over a whole round means deadlock
  bool aborted = false;   // a fault: abandon the block's fibers
  Context scheduler;
};

struct Event {
  std::chrono::steady_clock::time_point time;
  bool recorded = false;
  bool timing = true;  // not created with cudaEventDisableTiming
};

// An active stream capture: the nodes recorded so far.
struct Capture {
  cudaStream_t stream = nullptr;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::thread::id owner;  // the thread that began it
  bool blocking = false;  // the stream synchronizes with the legacy stream (cudaStreamDefault)
  bool invalidated = false;
  std::vector<CUgraphNode_st> nodes;
};

// Everything the emulation keeps; guarded by mu. Kernel launches and graph launches hold mu for
// their duration.
struct State {
  std::mutex mu;
  std::map<uintptr_t, size_t> allocations;     // device pointer -> bytes
  std::map<uintptr_t, int> allocation_device;  // device pointer -> the device current at cudaMalloc
  size_t allocated = 0;
  std::map<uintptr_t, size_t> pinned;         // cudaHostAlloc'd host pointer -> bytes
  std::map<cudaStream_t, unsigned> streams;   // -> flags
  std::map<cudaStream_t, int> stream_device;  // -> the device current at its creation
  // Work queued behind a deferred operation (NCCL, tests/cuda_emu/nccl.cc), per stream (the
  // legacy one is nullptr), in stream order: the front step runs with mu held whenever progress
  // is made (ProgressLocked) and returns whether it is done; the later ones wait behind it.
  std::map<cudaStream_t, std::deque<std::function<bool()>>> deferred;
  std::condition_variable changed;  // notified whenever deferred work completes a step
  std::map<cudaStream_t, Capture> captures;
  std::set<cudaGraph_t> graphs;
  std::set<cudaGraphExec_t> execs;
  std::set<cudaEvent_t> events;
  std::map<const void*, size_t> max_dynamic_shared;  // per kernel, by cudaFuncSetAttribute
  cudaError_t sticky = cudaSuccess;
  std::vector<char*> stacks;
  // Current launch (valid while mu is held by Launch).
  Block* block = nullptr;
  const std::function<void()>* body = nullptr;
  std::string fault;
};

State& S() {
  static State* state = new State();  // never destroyed: backends may free memory at exit
  return *state;
}

thread_local cudaError_t t_last_error = cudaSuccess;
thread_local int t_device = 0;

int DeviceCount() {
  static const int count = [] {
    const char* env = std::getenv("CMOE_CUDA_EMU_DEVICES");
    return env != nullptr ? std::max(0, std::atoi(env)) : 1;
  }();
  return count;
}

size_t MemoryLimit() {
  static const size_t limit = [] {
    const char* env = std::getenv("CMOE_CUDA_EMU_MEMORY_MB");
    return (env != nullptr ? static_cast<size_t>(std::atoll(env)) : size_t{16384}) << 20;
  }();
  return limit;
}

// The result of a runtime call: a sticky error wins; errors are remembered for
// cudaGetLastError.
cudaError_t Result(State& s, cudaError_t e) {
  if (s.sticky != cudaSuccess) e = s.sticky;
  if (e != cudaSuccess) t_last_error = e;
  return e;
}

// Whether [p, p + bytes) lies inside one allocation of `ranges` (start -> bytes).
bool InRanges(const std::map<uintptr_t, size_t>& ranges, const void* p, size_t bytes) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  auto it = ranges.upper_bound(address);
  if (it == ranges.begin()) return false;
  --it;
  return address + bytes <= it->first + it->second;
}

bool IsPinnedRange(State& s, const void* p, size_t bytes) { return InRanges(s.pinned, p, bytes); }

// The capture `stream` is in, or null (the legacy stream never captures).
Capture* CaptureOf(State& s, cudaStream_t stream) {
  if (stream == nullptr) return nullptr;
  const auto it = s.captures.find(stream);
  return it != s.captures.end() ? &it->second : nullptr;
}

template <class Pred>
bool AnyCapture(State& s, Pred pred) {
  return std::any_of(s.captures.begin(), s.captures.end(),
                     [&](const auto& entry) { return pred(entry.second); });
}

// A call the rules of stream capture forbid: says so on stderr, invalidates the captures `which`
// selects (their cudaStreamEndCapture then returns cudaErrorStreamCaptureInvalidated and no
// graph), and returns `error` as the call's result.
template <class Pred>
cudaError_t Forbid(State& s, cudaError_t error, const char* what, Pred which) {
  int invalidated = 0;
  for (auto& [stream, capture] : s.captures) {
    if (which(capture)) {
      capture.invalidated = true;
      ++invalidated;
    }
  }
  std::fprintf(stderr, "cuda-emu: %s (%s); %d stream capture(s) invalidated\n", what,
               ::cudaGetErrorName(error), invalidated);
  return Result(s, error);
}

bool IsThisThread(const Capture& c) { return c.owner == std::this_thread::get_id(); }

// Whether this thread may not make "potentially unsafe" calls (cudaMalloc, cudaHostAlloc) under
// `c`: CUDA's rule for a thread in the default cudaStreamCaptureModeGlobal interaction mode.
bool ProhibitsUnsafeCalls(const Capture& c) {
  return c.mode == cudaStreamCaptureModeGlobal ||
         (c.mode == cudaStreamCaptureModeThreadLocal && IsThisThread(c));
}

// Work on the legacy stream (nullptr) would depend on every blocking stream, so it may not be
// enqueued while one captures: cudaErrorStreamCaptureImplicit, and those captures end invalid.
cudaError_t CheckLegacyStream(State& s, const char* what) {
  if (!AnyCapture(s, [](const Capture& c) { return c.blocking; })) return cudaSuccess;
  return Forbid(s, cudaErrorStreamCaptureImplicit, what,
                [](const Capture& c) { return c.blocking; });
}

// Where work enqueued on `stream` goes (Mutex() held): run now (*capture null), recorded into
// *capture, or an error (returned; the thread's last error).
cudaError_t Enqueue(State& s, cudaStream_t stream, const char* what, Capture** capture) {
  *capture = nullptr;
  if (stream != nullptr && s.streams.count(stream) == 0) {
    return Result(s, cudaErrorInvalidResourceHandle);
  }
  if (s.sticky != cudaSuccess) return Result(s, s.sticky);
  if (stream == nullptr) return CheckLegacyStream(s, what);
  Capture* c = CaptureOf(s, stream);
  if (c != nullptr && c->invalidated) return Result(s, cudaErrorStreamCaptureInvalidated);
  *capture = c;
  return cudaSuccess;
}

// An enqueue on a capturing stream failed its own checks: as on a GPU, the capture is then
// invalid. Returns `error` (the thread's last error).
cudaError_t FailCaptured(State& s, Capture* c, cudaError_t error, const char* what) {
  if (c == nullptr) return Result(s, error);
  return Forbid(s, error, what, [c](const Capture& other) { return &other == c; });
}

// Whether `stream` has deferred work not yet done (its later work must wait behind it).
bool HasDeferred(State& s, cudaStream_t stream) {
  const auto it = s.deferred.find(stream);
  return it != s.deferred.end() && !it->second.empty();
}

// Runs every stream's deferred work in stream order as far as it can go (mu held), and wakes the
// threads waiting for streams to drain. A step may complete another stream's step as a side
// effect (a send posted on one stream matches a receive waiting on another), so the passes repeat
// after the first and then while a step completes.
void ProgressLocked(State& s) {
  bool moved = false;
  for (int pass = 0, again = 1; again != 0; ++pass) {
    again = pass == 0 ? 1 : 0;
    for (auto it = s.deferred.begin(); it != s.deferred.end();) {
      std::deque<std::function<bool()>>& steps = it->second;
      while (!steps.empty() && steps.front()()) {
        steps.pop_front();
        again = 1;
        moved = true;
      }
      it = steps.empty() ? s.deferred.erase(it) : std::next(it);
    }
  }
  if (moved) s.changed.notify_all();
}

// Blocks (mu released meanwhile) until `stream` has no deferred work left.
void AwaitDrained(State& s, std::unique_lock<std::mutex>& lock, cudaStream_t stream) {
  ProgressLocked(s);
  s.changed.wait(lock, [&s, stream] { return !HasDeferred(s, stream); });
}

// Work that CUDA would queue but the emulation only runs at once (cuBLAS, event records, graph
// launches, stream-ordered allocation, capture): refused with a message while `stream` has
// deferred work ahead of it (mu held). cudaSuccess when the stream has none.
cudaError_t RefuseBehindDeferred(State& s, cudaStream_t stream, const char* call) {
  if (!HasDeferred(s, stream)) return cudaSuccess;
  std::fprintf(stderr,
               "cuda-emu: %s on a stream with NCCL work still pending: not emulated "
               "(tests/cuda_emu); synchronize the stream first\n",
               call);
  return Result(s, cudaErrorIllegalState);
}

char* Stack(State& s, size_t i) {
  while (s.stacks.size() <= i) {
    const long page = sysconf(_SC_PAGESIZE);
    void* p = mmap(nullptr, kStackBytes + static_cast<size_t>(page), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "cuda-emu: cannot map a fiber stack\n");
      std::abort();
    }
    mprotect(p, static_cast<size_t>(page), PROT_NONE);  // guard page: an overflow faults
    s.stacks.push_back(static_cast<char*>(p) + page);
  }
  return s.stacks[i];
}

Fiber& Current() { return *static_cast<Fiber*>(g_fiber); }

void Yield() {
  State& s = S();
  SwitchTo(Current().context, s.block->scheduler);
}

void ReleaseIfComplete(Block& b) {
  if (b.arrived > 0 && b.arrived >= b.live) {
    b.arrived = 0;
    ++b.generation;
  }
}
void ReleaseIfComplete(Warp& w) {
  if (w.arrived > 0 && w.arrived >= w.live_count) {
    const unsigned slot = w.generation & 1u;
    w.live_at[slot] = w.live;
    bool uniform = true;
    const unsigned first = w.masks[slot][std::countr_zero(w.live)];
    for (int j = 0; j < kWarpSize; ++j) {
      if ((w.live >> j & 1u) != 0 && w.masks[slot][j] != first) uniform = false;
    }
    w.uniform_at[slot] = uniform;
    w.arrived = 0;
    ++w.generation;
  }
}

// The first frame of every fiber; never returns (a finished fiber switches to the scheduler for
// good).
void FiberEntry() {
  State& s = S();
  (*s.body)();
  Fiber& f = Current();
  Block& b = *s.block;
  f.done = true;
  --b.live;
  ++b.progress;
  Warp& w = b.warps[static_cast<size_t>(f.linear / kWarpSize)];
  w.live &= ~(1u << (f.linear % kWarpSize));
  --w.live_count;
  ReleaseIfComplete(b);
  ReleaseIfComplete(w);
  SwitchTo(f.context, b.scheduler);
  std::abort();  // a finished fiber is never resumed
}

// A context that starts FiberEntry on `stack` (kStackBytes, growing down).
[[gnu::noinline]] void InitContext(Context& c, char* stack) {
#if CMOE_EMU_ASM_SWITCH
  // What cmoe_emu_switch pops, from the lowest address: r15, r14, r13, r12, rbx, rbp, the return
  // address (FiberEntry), then a zero slot so that FiberEntry starts with the stack aligned as
  // after a call.
  auto* top = reinterpret_cast<uint64_t*>(stack + kStackBytes);
  uint64_t* sp = top - 8;
  for (int i = 0; i < 6; ++i) sp[i] = 0;
  sp[6] = reinterpret_cast<uint64_t>(&FiberEntry);
  sp[7] = 0;
  c.sp = sp;
#else
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = kStackBytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, FiberEntry, 0);
#endif
}

std::string Dim(unsigned x, unsigned y, unsigned z) {
  char text[48];
  std::snprintf(text, sizeof text, "(%u,%u,%u)", x, y, z);
  return text;
}
std::string Dim(const dim3& d) { return Dim(d.x, d.y, d.z); }
std::string Dim(const uint3& d) { return Dim(d.x, d.y, d.z); }

// Runs one block to completion, a fault, or a deadlock. Returns false unless it completed.
bool RunBlock(State& s, int threads) {
  Block b;
  b.fibers.resize(static_cast<size_t>(threads));
  b.warps.resize(static_cast<size_t>((threads + kWarpSize - 1) / kWarpSize));
  for (int t = 0; t < threads; ++t) {
    Warp& w = b.warps[static_cast<size_t>(t / kWarpSize)];
    w.live |= 1u << (t % kWarpSize);
    ++w.live_count;
  }
  b.live = threads;
  s.block = &b;
  for (int t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[static_cast<size_t>(t)];
    f.linear = t;
    f.thread_idx = {static_cast<unsigned>(t) % g_block_dim.x,
                    static_cast<unsigned>(t) / g_block_dim.x % g_block_dim.y,
                    static_cast<unsigned>(t) / (g_block_dim.x * g_block_dim.y)};
    InitContext(f.context, Stack(s, static_cast<size_t>(t)));
  }
  bool ok = true;
  for (;;) {
    const uint64_t before = b.progress;
    bool any = false;
    for (Fiber& f : b.fibers) {
      if (f.done) continue;
      any = true;
      g_fiber = &f;
      SwitchTo(b.scheduler, f.context);
      if (b.aborted) break;
    }
    if (b.aborted) {
      ok = false;
      break;
    }
    if (!any) break;
    if (b.progress == before &&
        std::any_of(b.fibers.begin(), b.fibers.end(), [](const Fiber& f) { return !f.done; })) {
      int waiting = 0;
      for (const Fiber& f : b.fibers) waiting += f.done ? 0 : 1;
      s.fault = "deadlock: " + std::to_string(waiting) + " of " + std::to_string(threads) +
                " threads wait at a __syncthreads or warp-level op the others never reach (block " +
                Dim(g_block_idx) + ")";
      ok = false;
      break;
    }
  }
  g_fiber = nullptr;
  s.block = nullptr;
  return ok;
}

// Runs a kernel whose launch passed its checks, with mu held. A fault ends the launch with a
// sticky cudaErrorLaunchFailure and a message naming the launch site; returns false then.
bool RunKernel(State& s, const LaunchConfig& c, const std::function<void()>& body,
               const char* context) {
  const std::source_location& where = c.where;
  const uint64_t threads = uint64_t{c.block.x} * c.block.y * c.block.z;
  // 128-byte aligned, as the base of a block's dynamic shared memory is on a GPU (kernels may
  // declare it __align__(128) and place WMMA tiles, which need 32 bytes, at aligned offsets).
  struct alignas(128) SharedChunk {
    unsigned char bytes[128];
  };
  std::vector<SharedChunk> shared((std::max<size_t>(c.shared_bytes, 16) + 127) / 128);
  s.body = &body;
  g_grid_dim = c.grid;
  g_block_dim = c.block;
  for (unsigned z = 0; z < c.grid.z; ++z) {
    for (unsigned y = 0; y < c.grid.y; ++y) {
      for (unsigned x = 0; x < c.grid.x; ++x) {
        std::memset(shared.data(), 0xcd,
                    shared.size() * sizeof(SharedChunk));  // garbage, as on a GPU
        g_dynamic_shared = shared.data();
        g_block_idx = {x, y, z};
        if (!RunBlock(s, static_cast<int>(threads))) {
          std::fprintf(stderr, "cuda-emu: kernel launched at %s:%u (grid %s, block %s%s): %s\n",
                       where.file_name(), static_cast<unsigned>(where.line()), Dim(c.grid).c_str(),
                       Dim(c.block).c_str(), context, s.fault.c_str());
          s.sticky = cudaErrorLaunchFailure;
          t_last_error = s.sticky;
          g_dynamic_shared = nullptr;
          s.body = nullptr;
          return false;
        }
      }
    }
  }
  g_dynamic_shared = nullptr;
  s.body = nullptr;
  return true;
}

}  // namespace

void Fault(const char* what) {
  State& s = S();
  if (s.block == nullptr) {
    std::fprintf(stderr, "cuda-emu: %s (outside a kernel)\n", what);
    std::abort();
  }
  s.fault = std::string(what) + " (block " + Dim(g_block_idx) + ", thread " +
            Dim(g_fiber->thread_idx) + ")";
  s.block->aborted = true;
  SwitchTo(Current().context, s.block->scheduler);  // never resumed
  std::abort();
}

void SyncThreads() {
  State& s = S();
  Block& b = *s.block;
  const unsigned generation = b.generation;
  ++b.arrived;
  ++b.progress;
  ReleaseIfComplete(b);
  while (b.generation == generation) Yield();
}

WarpView WarpExchange(uint64_t value, unsigned mask) {
  State& s = S();
  Block& b = *s.block;
  const int lane = g_fiber->linear % kWarpSize;
  Warp& w = b.warps[static_cast<size_t>(g_fiber->linear / kWarpSize)];
  const unsigned generation = w.generation;
  const int slot = static_cast<int>(generation & 1u);
  w.values[slot][lane] = value;
  w.masks[slot][lane] = mask;
  ++w.arrived;
  ++b.progress;
  ReleaseIfComplete(w);
  while (w.generation == generation) Yield();
  return {w.values[slot], w.masks[slot], w.live_at[slot], w.uniform_at[slot]};
}

void Launch(const void* kernel, const LaunchConfig& c, std::function<void()> body) {
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.sticky != cudaSuccess) {
    t_last_error = s.sticky;
    return;
  }
  Capture* capture = CaptureOf(s, c.stream);
  const char* what = "a kernel launch on a capturing stream failed";
  const uint64_t threads = uint64_t{c.block.x} * c.block.y * c.block.z;
  if (threads == 0 || threads > kMaxThreadsPerBlock || c.block.z > 64 || c.grid.x == 0 ||
      c.grid.y == 0 || c.grid.z == 0 || c.grid.x > 0x7fffffffu || c.grid.y > 65535 ||
      c.grid.z > 65535) {
    FailCaptured(s, capture, cudaErrorInvalidConfiguration, what);
    return;
  }
  const auto opt_in = s.max_dynamic_shared.find(kernel);
  const size_t shared_limit = opt_in != s.max_dynamic_shared.end()
                                  ? std::max(opt_in->second, kDefaultDynamicShared)
                                  : kDefaultDynamicShared;
  if (c.shared_bytes > shared_limit) {
    FailCaptured(s, capture, cudaErrorInvalidValue, what);
    return;
  }
  if (Enqueue(s, c.stream, "a kernel launch on the legacy stream", &capture) != cudaSuccess) {
    return;
  }
  if (capture != nullptr) {
    CUgraphNode_st node;
    node.type = CUgraphNode_st::Type::kKernel;
    node.kernel = kernel;
    node.config = c;
    node.body = std::move(body);
    capture->nodes.push_back(std::move(node));
    return;
  }
  if (HasDeferred(s, c.stream)) {  // runs when the stream gets there
    s.deferred[c.stream].push_back([&s, c, body = std::move(body)] {
      if (s.sticky == cudaSuccess) RunKernel(s, c, body, ", deferred behind NCCL work");
      return true;
    });
    return;
  }
  RunKernel(s, c, body, "");
}

bool IsDeviceRange(const void* p, size_t bytes) { return InRanges(S().allocations, p, bytes); }

int DeviceOfRange(const void* p, size_t bytes) {
  State& s = S();
  if (!InRanges(s.allocations, p, bytes)) return -1;
  auto it = s.allocation_device.upper_bound(reinterpret_cast<uintptr_t>(p));
  return std::prev(it)->second;
}

int CurrentDevice() { return t_device; }

bool StreamDevice(cudaStream_t stream, int* device) {
  State& s = S();
  if (stream == nullptr) {
    *device = t_device;
    return true;
  }
  const auto it = s.stream_device.find(stream);
  if (it == s.stream_device.end()) return false;
  *device = it->second;
  return true;
}

cudaError_t EnqueueDeferred(cudaStream_t stream, const char* what, std::function<bool()> step) {
  State& s = S();
  Capture* capture = nullptr;
  if (const cudaError_t e = Enqueue(s, stream, what, &capture); e != cudaSuccess) return e;
  if (capture != nullptr) {
    const std::string message =
        std::string(what) + " on a capturing stream: not emulated (tests/cuda_emu)";
    return FailCaptured(s, capture, cudaErrorStreamCaptureUnsupported, message.c_str());
  }
  s.deferred[stream].push_back(std::move(step));
  ProgressLocked(s);
  return cudaSuccess;
}

void Progress() { ProgressLocked(S()); }

std::condition_variable& Changed() { return S().changed; }

void FailDevice(cudaError_t error, const char* what) {
  State& s = S();
  std::fprintf(stderr, "cuda-emu: %s (%s)\n", what, ::cudaGetErrorName(error));
  if (s.sticky == cudaSuccess) s.sticky = error;
  t_last_error = s.sticky;
}

std::mutex& Mutex() { return S().mu; }

cudaError_t StickyError() { return S().sticky; }

cudaError_t EnqueueLibraryCall(cudaStream_t stream, const char* what, bool* capturing) {
  State& s = S();
  Capture* capture = nullptr;
  const cudaError_t e = Enqueue(s, stream, what, &capture);
  *capturing = capture != nullptr;
  if (e == cudaSuccess && capture == nullptr) return RefuseBehindDeferred(s, stream, what);
  return e;
}

cudaError_t FailLibraryCall(cudaStream_t stream, cudaError_t error, const char* what) {
  State& s = S();
  return FailCaptured(s, CaptureOf(s, stream), error, what);
}

void RecordLibraryCall(cudaStream_t stream, std::function<std::string()> run) {
  Capture* capture = CaptureOf(S(), stream);
  if (capture == nullptr) return;
  CUgraphNode_st node;
  node.type = CUgraphNode_st::Type::kKernel;
  node.library = std::move(run);
  capture->nodes.push_back(std::move(node));
}

}  // namespace cmoe::cuda_emu

// --- the runtime API --------------------------------------------------------------------------

namespace emu = cmoe::cuda_emu;

namespace {

// A call stream capture may forbid, with mu held: `unsafe` calls (cudaMalloc, cudaHostAlloc) are
// "potentially unsafe" in CUDA's terms, forbidden to this thread (in the default
// cudaStreamCaptureModeGlobal interaction mode) while a Global capture is active on any thread or
// a ThreadLocal one that this thread began. Synchronous calls (cudaMemcpy, cudaMemset) run on the
// legacy stream and wait for it: forbidden while a blocking stream captures (an implicit
// dependency), and, conservatively, while this thread captures or a capture forbids unsafe calls
// (the copy would run now, not at replay). Returns cudaSuccess or the error (captures
// invalidated).
cudaError_t CheckUnsafeCall(emu::State& s, const char* call) {
  if (!emu::AnyCapture(s, emu::ProhibitsUnsafeCalls)) return cudaSuccess;
  const std::string what = std::string(call) +
                           " while a stream capture in cudaStreamCaptureModeGlobal (any thread) or "
                           "ThreadLocal (this thread) is active";
  return emu::Forbid(s, cudaErrorStreamCaptureUnsupported, what.c_str(), emu::ProhibitsUnsafeCalls);
}

cudaError_t CheckSyncCall(emu::State& s, const char* call) {
  const auto blocking = [](const emu::Capture& c) { return c.blocking; };
  if (emu::AnyCapture(s, blocking)) {
    const std::string what =
        std::string(call) + " (legacy stream) while a blocking stream (cudaStreamDefault) captures";
    return emu::Forbid(s, cudaErrorStreamCaptureImplicit, what.c_str(), blocking);
  }
  const auto conflicts = [](const emu::Capture& c) {
    return emu::ProhibitsUnsafeCalls(c) || emu::IsThisThread(c);
  };
  if (!emu::AnyCapture(s, conflicts)) return cudaSuccess;
  const std::string what = std::string(call) +
                           " (synchronous: it would run now, not when the graph is launched) "
                           "during a stream capture of this thread or in Global mode";
  return emu::Forbid(s, cudaErrorStreamCaptureUnsupported, what.c_str(), conflicts);
}

// Calls that synchronize the whole device (cudaDeviceSynchronize, cudaFree, cudaFreeHost) may not
// run while any stream captures.
cudaError_t CheckDeviceSync(emu::State& s, const char* call) {
  const auto any = [](const emu::Capture&) { return true; };
  if (!emu::AnyCapture(s, any)) return cudaSuccess;
  const std::string what =
      std::string(call) + " synchronizes the device, which may not happen while a stream captures";
  return emu::Forbid(s, cudaErrorStreamCaptureUnsupported, what.c_str(), any);
}

// cudaMalloc'd memory is uninitialized on a device: fill it with 0xff (NaN as floats). `unsafe`:
// the call's name when capture rules apply to it (cudaMalloc; not cudaMallocAsync).
cudaError_t AllocateLocked(emu::State& s, void** ptr, size_t bytes, const char* unsafe) {
  if (ptr == nullptr) return emu::Result(s, cudaErrorInvalidValue);
  *ptr = nullptr;
  if (s.sticky != cudaSuccess) return emu::Result(s, s.sticky);
  if (unsafe != nullptr) {
    if (const cudaError_t e = CheckUnsafeCall(s, unsafe); e != cudaSuccess) return e;
  }
  if (bytes == 0) return cudaSuccess;
  if (bytes > emu::MemoryLimit() || s.allocated + bytes > emu::MemoryLimit()) {
    return emu::Result(s, cudaErrorMemoryAllocation);
  }
  // 256-byte aligned like cudaMalloc, and exactly `bytes` long so that AddressSanitizer (the
  // asan preset) reports a kernel that reads or writes one byte past an allocation.
  void* p = nullptr;
  if (posix_memalign(&p, 256, bytes) != 0) return emu::Result(s, cudaErrorMemoryAllocation);
  std::memset(p, 0xff, bytes);
  s.allocations[reinterpret_cast<uintptr_t>(p)] = bytes;
  s.allocation_device[reinterpret_cast<uintptr_t>(p)] = emu::t_device;
  s.allocated += bytes;
  *ptr = p;
  return cudaSuccess;
}

// `sync`: the call's name when it synchronizes the device (cudaFree; not cudaFreeAsync).
cudaError_t ReleaseLocked(emu::State& s, void* ptr, const char* sync) {
  if (ptr == nullptr) return emu::Result(s, cudaSuccess);
  if (sync != nullptr) {
    if (const cudaError_t e = CheckDeviceSync(s, sync); e != cudaSuccess) return e;
  }
  const auto it = s.allocations.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == s.allocations.end()) return emu::Result(s, cudaErrorInvalidValue);
  s.allocated -= it->second;
  s.allocations.erase(it);
  s.allocation_device.erase(reinterpret_cast<uintptr_t>(ptr));
  std::free(ptr);
  return emu::Result(s, cudaSuccess);
}

bool KnownStream(emu::State& s, cudaStream_t stream) {
  return stream == nullptr || s.streams.count(stream) != 0;
}

// The calls graph memory nodes would serve: not emulated, so refused on a capturing stream.
cudaError_t StreamOrderedMemory(emu::State& s, cudaStream_t stream, const char* call) {
  emu::Capture* capture = nullptr;
  const std::string legacy = std::string(call) + " on the legacy stream";
  if (const cudaError_t e = emu::Enqueue(s, stream, legacy.c_str(), &capture); e != cudaSuccess) {
    return e;
  }
  if (capture == nullptr) return emu::RefuseBehindDeferred(s, stream, call);
  const std::string what = std::string(call) +
                           " on a capturing stream: graph memory nodes are not emulated "
                           "(tests/cuda_emu); allocate before the capture";
  return emu::FailCaptured(s, capture, cudaErrorStreamCaptureUnsupported, what.c_str());
}

// Which sides of a copy are device memory; cudaMemcpyDefault tells by the pointers (unified
// addressing).
void CopySides(cudaMemcpyKind kind, void* dst, const void* src, bool* dst_device,
               bool* src_device) {
  if (kind == cudaMemcpyDefault) {
    *dst_device = emu::IsDeviceRange(dst, 1);
    *src_device = emu::IsDeviceRange(src, 1);
    return;
  }
  *dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  *src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
}

// The device side of a copy must lie inside one allocation. Host pointers are not checked, except
// on a capturing stream, where they must lie in pinned memory (cudaHostAlloc, cudaMallocHost).
cudaError_t Copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream,
                 bool sync) {
  emu::State& s = emu::S();
  std::unique_lock<std::mutex> lock(s.mu);
  emu::Capture* capture = nullptr;
  if (sync) {
    if (s.sticky != cudaSuccess) return emu::Result(s, s.sticky);
    if (const cudaError_t e = CheckSyncCall(s, "cudaMemcpy"); e != cudaSuccess) return e;
  } else if (const cudaError_t e =
                 emu::Enqueue(s, stream, "cudaMemcpyAsync on the legacy stream", &capture);
             e != cudaSuccess) {
    return e;
  }
  if (bytes == 0) return cudaSuccess;
  const char* what = "cudaMemcpyAsync on a capturing stream failed its checks";
  if (dst == nullptr || src == nullptr) {
    return emu::FailCaptured(s, capture, cudaErrorInvalidValue, what);
  }
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) {
    return emu::FailCaptured(s, capture, cudaErrorInvalidMemcpyDirection, what);
  }
  bool dst_device = false, src_device = false;
  CopySides(kind, dst, src, &dst_device, &src_device);
  if ((dst_device && !emu::IsDeviceRange(dst, bytes)) ||
      (src_device && !emu::IsDeviceRange(src, bytes))) {
    return emu::FailCaptured(s, capture, cudaErrorInvalidValue, what);
  }
  if (capture == nullptr) {
    // Behind deferred work (NCCL): a copy to pageable host memory returns once done, as in CUDA
    // (so it waits for the stream, or for the legacy one when synchronous); any other copy is
    // queued, a pageable source staged now.
    if (emu::HasDeferred(s, stream)) {
      if (sync || (!dst_device && !emu::IsPinnedRange(s, dst, bytes))) {
        emu::AwaitDrained(s, lock, stream);
        if (s.sticky != cudaSuccess) return emu::Result(s, s.sticky);
        if ((dst_device && !emu::IsDeviceRange(dst, bytes)) ||
            (src_device && !emu::IsDeviceRange(src, bytes))) {
          return emu::Result(s, cudaErrorInvalidValue);  // freed while the copy waited
        }
      } else {
        std::vector<char> staged;
        if (!src_device && !emu::IsPinnedRange(s, src, bytes)) {
          staged.assign(static_cast<const char*>(src), static_cast<const char*>(src) + bytes);
        }
        s.deferred[stream].push_back([&s, dst, src, bytes, staged = std::move(staged)] {
          if (s.sticky == cudaSuccess) {
            std::memmove(dst, staged.empty() ? src : staged.data(), bytes);
          }
          return true;
        });
        return cudaSuccess;
      }
    }
    std::memmove(dst, src, bytes);
    return cudaSuccess;
  }
  if ((!dst_device && !emu::IsPinnedRange(s, dst, bytes)) ||
      (!src_device && !emu::IsPinnedRange(s, src, bytes))) {
    return emu::FailCaptured(s, capture, cudaErrorStreamCaptureUnsupported,
                             "cudaMemcpyAsync on a capturing stream with pageable host memory "
                             "(only cudaHostAlloc / cudaMallocHost memory can be captured)");
  }
  CUgraphNode_st node;
  node.type = CUgraphNode_st::Type::kMemcpy;
  node.dst = dst;
  node.src = src;
  node.bytes = bytes;
  node.dst_device = dst_device;
  node.src_device = src_device;
  capture->nodes.push_back(std::move(node));
  return cudaSuccess;
}

cudaError_t Set(void* ptr, int value, size_t bytes, cudaStream_t stream, bool sync) {
  emu::State& s = emu::S();
  std::unique_lock<std::mutex> lock(s.mu);
  emu::Capture* capture = nullptr;
  if (sync) {
    if (s.sticky != cudaSuccess) return emu::Result(s, s.sticky);
    if (const cudaError_t e = CheckSyncCall(s, "cudaMemset"); e != cudaSuccess) return e;
  } else if (const cudaError_t e =
                 emu::Enqueue(s, stream, "cudaMemsetAsync on the legacy stream", &capture);
             e != cudaSuccess) {
    return e;
  }
  if (bytes == 0) return cudaSuccess;
  if (!emu::IsDeviceRange(ptr, bytes)) {
    return emu::FailCaptured(s, capture, cudaErrorInvalidValue,
                             "cudaMemsetAsync on a capturing stream failed its checks");
  }
  if (capture == nullptr) {
    // Behind deferred work (NCCL): queued, or waited for when synchronous.
    if (emu::HasDeferred(s, stream)) {
      if (!sync) {
        s.deferred[stream].push_back([&s, ptr, value, bytes] {
          if (s.sticky == cudaSuccess) std::memset(ptr, value, bytes);
          return true;
        });
        return cudaSuccess;
      }
      emu::AwaitDrained(s, lock, stream);
      if (s.sticky != cudaSuccess) return emu::Result(s, s.sticky);
      if (!emu::IsDeviceRange(ptr, bytes)) return emu::Result(s, cudaErrorInvalidValue);
    }
    std::memset(ptr, value, bytes);
    return cudaSuccess;
  }
  CUgraphNode_st node;
  node.type = CUgraphNode_st::Type::kMemset;
  node.dst = ptr;
  node.bytes = bytes;
  node.dst_device = true;
  node.value = value;
  capture->nodes.push_back(std::move(node));
  return cudaSuccess;
}

// cudaStreamSynchronize (wait) and cudaStreamQuery: not on a capturing stream (its work has not
// run), nor on the legacy stream while a blocking stream captures. Work behind deferred work
// (NCCL) is waited for, or makes the query cudaErrorNotReady (not recorded as the last error).
cudaError_t WaitForStream(cudaStream_t stream, const char* call, bool wait) {
  emu::State& s = emu::S();
  std::unique_lock<std::mutex> lock(s.mu);
  if (!KnownStream(s, stream)) return emu::Result(s, cudaErrorInvalidResourceHandle);
  if (s.sticky != cudaSuccess) return emu::Result(s, s.sticky);
  if (emu::Capture* capture = emu::CaptureOf(s, stream); capture != nullptr) {
    const std::string what = std::string(call) + " on a capturing stream";
    return emu::Forbid(s, cudaErrorStreamCaptureUnsupported, what.c_str(),
                       [capture](const emu::Capture& c) { return &c == capture; });
  }
  if (stream == nullptr) {
    const std::string what = std::string(call) + " on the legacy stream";
    if (const cudaError_t e = emu::CheckLegacyStream(s, what.c_str()); e != cudaSuccess) return e;
  }
  emu::ProgressLocked(s);
  if (!emu::HasDeferred(s, stream)) return emu::Result(s, cudaSuccess);
  if (!wait) return s.sticky != cudaSuccess ? emu::Result(s, s.sticky) : cudaErrorNotReady;
  emu::AwaitDrained(s, lock, stream);
  return emu::Result(s, cudaSuccess);
}

const char* Side(bool device) { return device ? "device" : "pinned host"; }

// Runs node i of a graph launch with mu held. A node whose memory is gone (freed since the
// capture) fails the launch with a sticky cudaErrorIllegalAddress; a kernel fault with the sticky
// cudaErrorLaunchFailure of a direct launch. Returns false then.
bool RunNode(emu::State& s, const CUgraphNode_st& n, size_t i, size_t count) {
  std::string why;
  const auto live = [&s](bool device, const void* p, size_t bytes) {
    return device ? emu::IsDeviceRange(p, bytes) : emu::IsPinnedRange(s, p, bytes);
  };
  char text[256];
  switch (n.type) {
    case CUgraphNode_st::Type::kKernel:
      if (n.library) {
        why = n.library();
        break;
      }
      return emu::RunKernel(s, n.config, n.body, ", replayed by cudaGraphLaunch");
    case CUgraphNode_st::Type::kMemcpy:
      if (!live(n.dst_device, n.dst, n.bytes) || !live(n.src_device, n.src, n.bytes)) {
        std::snprintf(text, sizeof text,
                      "a captured cudaMemcpyAsync of %zu bytes from %s memory %p to %s memory %p: "
                      "an operand is no longer allocated (freed since the capture?)",
                      n.bytes, Side(n.src_device), n.src, Side(n.dst_device), n.dst);
        why = text;
        break;
      }
      std::memmove(n.dst, n.src, n.bytes);
      break;
    case CUgraphNode_st::Type::kMemset:
      if (!live(true, n.dst, n.bytes)) {
        std::snprintf(text, sizeof text,
                      "a captured cudaMemsetAsync of %zu bytes at %p: the memory is no longer "
                      "allocated (freed since the capture?)",
                      n.bytes, n.dst);
        why = text;
        break;
      }
      std::memset(n.dst, n.value, n.bytes);
      break;
  }
  if (why.empty()) return true;
  std::fprintf(stderr, "cuda-emu: cudaGraphLaunch, node %zu of %zu: %s\n", i, count, why.c_str());
  s.sticky = cudaErrorIllegalAddress;
  emu::t_last_error = s.sticky;
  return false;
}

}  // namespace

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return cudaErrorInvalidValue;
  *count = emu::DeviceCount();
  if (*count == 0) {
    emu::t_last_error = cudaErrorNoDevice;
    return cudaErrorNoDevice;
  }
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (device < 0 || device >= emu::DeviceCount()) return emu::Result(s, cudaErrorInvalidDevice);
  emu::t_device = device;
  return emu::Result(s, cudaSuccess);
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return cudaErrorInvalidValue;
  *device = emu::t_device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (prop == nullptr) return cudaErrorInvalidValue;
  if (device < 0 || device >= emu::DeviceCount()) {
    emu::t_last_error = cudaErrorInvalidDevice;
    return cudaErrorInvalidDevice;
  }
  *prop = {};
  std::snprintf(prop->name, sizeof prop->name, "cmoe CUDA emulator (CPU)");
  prop->totalGlobalMem = emu::MemoryLimit();
  prop->sharedMemPerBlock = emu::kDefaultDynamicShared;
  prop->sharedMemPerBlockOptin = emu::kMaxDynamicShared;
  prop->sharedMemPerMultiprocessor = emu::kSharedPerSm;
  prop->warpSize = emu::kWarpSize;
  prop->maxThreadsPerBlock = emu::kMaxThreadsPerBlock;
  prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = emu::kSms;
  prop->memoryBusWidth = 5120;
  prop->l2CacheSize = 50 << 20;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (value == nullptr) return cudaErrorInvalidValue;
  if (device < 0 || device >= emu::DeviceCount()) {
    emu::t_last_error = cudaErrorInvalidDevice;
    return cudaErrorInvalidDevice;
  }
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock:
      *value = emu::kMaxThreadsPerBlock;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = static_cast<int>(emu::kDefaultDynamicShared);
      return cudaSuccess;
    case cudaDevAttrWarpSize:
      *value = emu::kWarpSize;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = emu::kSms;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:
      *value = 9;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
      *value = static_cast<int>(emu::kSharedPerSm);
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = static_cast<int>(emu::kMaxDynamicShared);
      return cudaSuccess;
  }
  emu::t_last_error = cudaErrorInvalidValue;
  return cudaErrorInvalidValue;
}

// Waits for the deferred work (NCCL) of this device's streams and of the legacy stream.
cudaError_t cudaDeviceSynchronize() {
  emu::State& s = emu::S();
  std::unique_lock<std::mutex> lock(s.mu);
  if (s.sticky != cudaSuccess) return emu::Result(s, s.sticky);
  if (const cudaError_t e = CheckDeviceSync(s, "cudaDeviceSynchronize"); e != cudaSuccess) return e;
  const int device = emu::t_device;
  const auto drained = [&s, device] {
    for (const auto& [stream, steps] : s.deferred) {
      if (steps.empty()) continue;
      const auto it = s.stream_device.find(stream);
      if (stream == nullptr || (it != s.stream_device.end() && it->second == device)) return false;
    }
    return true;
  };
  emu::ProgressLocked(s);
  s.changed.wait(lock, drained);
  return emu::Result(s, cudaSuccess);
}

cudaError_t cudaDeviceReset() {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  for (const auto& [address, bytes] : s.allocations) std::free(reinterpret_cast<void*>(address));
  s.allocations.clear();
  s.allocation_device.clear();
  s.allocated = 0;
  for (const auto& [address, bytes] : s.pinned) std::free(reinterpret_cast<void*>(address));
  s.pinned.clear();
  // Captures end; graphs and executable graphs die with the context (their handles are then
  // invalid: destroying one returns cudaErrorInvalidValue).
  s.captures.clear();
  for (cudaGraph_t graph : s.graphs) delete graph;
  s.graphs.clear();
  for (cudaGraphExec_t exec : s.execs) delete exec;
  s.execs.clear();
  for (const auto& [stream, flags] : s.streams) delete reinterpret_cast<char*>(stream);
  s.streams.clear();
  s.stream_device.clear();
  s.deferred.clear();  // abandoned, as a reset device's queues are
  s.changed.notify_all();
  for (cudaEvent_t event : s.events) delete reinterpret_cast<emu::Event*>(event);
  s.events.clear();
  s.max_dynamic_shared.clear();
  s.sticky = cudaSuccess;
  emu::t_last_error = cudaSuccess;
  return cudaSuccess;
}

cudaError_t cudaGetLastError() {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.sticky != cudaSuccess) return s.sticky;
  const cudaError_t e = emu::t_last_error;
  emu::t_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.sticky != cudaSuccess ? s.sticky : emu::t_last_error;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
#define CMOE_EMU_ERROR_NAME(e) \
  case e:                      \
    return #e;
    CMOE_EMU_ERROR_NAME(cudaSuccess)
    CMOE_EMU_ERROR_NAME(cudaErrorInvalidValue)
    CMOE_EMU_ERROR_NAME(cudaErrorMemoryAllocation)
    CMOE_EMU_ERROR_NAME(cudaErrorInitializationError)
    CMOE_EMU_ERROR_NAME(cudaErrorInvalidConfiguration)
    CMOE_EMU_ERROR_NAME(cudaErrorInvalidPitchValue)
    CMOE_EMU_ERROR_NAME(cudaErrorInvalidDevicePointer)
    CMOE_EMU_ERROR_NAME(cudaErrorInvalidMemcpyDirection)
    CMOE_EMU_ERROR_NAME(cudaErrorInsufficientDriver)
    CMOE_EMU_ERROR_NAME(cudaErrorDevicesUnavailable)
    CMOE_EMU_ERROR_NAME(cudaErrorNoDevice)
    CMOE_EMU_ERROR_NAME(cudaErrorInvalidDevice)
    CMOE_EMU_ERROR_NAME(cudaErrorNoKernelImageForDevice)
    CMOE_EMU_ERROR_NAME(cudaErrorECCUncorrectable)
    CMOE_EMU_ERROR_NAME(cudaErrorUnsupportedPtxVersion)
    CMOE_EMU_ERROR_NAME(cudaErrorInvalidResourceHandle)
    CMOE_EMU_ERROR_NAME(cudaErrorIllegalState)
    CMOE_EMU_ERROR_NAME(cudaErrorNotReady)
    CMOE_EMU_ERROR_NAME(cudaErrorIllegalAddress)
    CMOE_EMU_ERROR_NAME(cudaErrorLaunchOutOfResources)
    CMOE_EMU_ERROR_NAME(cudaErrorLaunchTimeout)
    CMOE_EMU_ERROR_NAME(cudaErrorContextIsDestroyed)
    CMOE_EMU_ERROR_NAME(cudaErrorAssert)
    CMOE_EMU_ERROR_NAME(cudaErrorHardwareStackError)
    CMOE_EMU_ERROR_NAME(cudaErrorIllegalInstruction)
    CMOE_EMU_ERROR_NAME(cudaErrorMisalignedAddress)
    CMOE_EMU_ERROR_NAME(cudaErrorInvalidAddressSpace)
    CMOE_EMU_ERROR_NAME(cudaErrorInvalidPc)
    CMOE_EMU_ERROR_NAME(cudaErrorLaunchFailure)
    CMOE_EMU_ERROR_NAME(cudaErrorSystemDriverMismatch)
    CMOE_EMU_ERROR_NAME(cudaErrorCompatNotSupportedOnDevice)
    CMOE_EMU_ERROR_NAME(cudaErrorStreamCaptureUnsupported)
    CMOE_EMU_ERROR_NAME(cudaErrorStreamCaptureInvalidated)
    CMOE_EMU_ERROR_NAME(cudaErrorStreamCaptureImplicit)
    CMOE_EMU_ERROR_NAME(cudaErrorStreamCaptureWrongThread)
    CMOE_EMU_ERROR_NAME(cudaErrorGraphExecUpdateFailure)
#undef CMOE_EMU_ERROR_NAME
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorNoDevice:
      return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
    case cudaErrorIllegalAddress:
      return "an illegal memory access was encountered";
    case cudaErrorIllegalState:
      return "the operation cannot be performed in the present state";
    case cudaErrorStreamCaptureUnsupported:
      return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
      return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit:
      return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorStreamCaptureWrongThread:
      return "attempt to terminate a thread-local capture sequence from another thread";
    case cudaErrorGraphExecUpdateFailure:
      return "the graph update was not performed because it included changes which violated "
             "constraints specific to instantiated graph update";
    default:
      return cudaGetErrorName(error);
  }
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  return AllocateLocked(s, ptr, bytes, "cudaMalloc");
}
cudaError_t cudaFree(void* ptr) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  return ReleaseLocked(s, ptr, "cudaFree");
}
cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t stream) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (ptr != nullptr) *ptr = nullptr;
  if (const cudaError_t e = StreamOrderedMemory(s, stream, "cudaMallocAsync"); e != cudaSuccess) {
    return e;
  }
  return AllocateLocked(s, ptr, bytes, nullptr);
}
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (const cudaError_t e = StreamOrderedMemory(s, stream, "cudaFreeAsync"); e != cudaSuccess) {
    return e;
  }
  return ReleaseLocked(s, ptr, nullptr);
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return Copy(dst, src, bytes, kind, nullptr, true);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  return Copy(dst, src, bytes, kind, stream, false);
}
cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
  return Set(ptr, value, bytes, nullptr, true);
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream) {
  return Set(ptr, value, bytes, stream, false);
}

// Pinned memory is host memory: filled with 0xff like fresh device memory, so that reading what
// was never written shows.
cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned flags) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (ptr == nullptr) return emu::Result(s, cudaErrorInvalidValue);
  *ptr = nullptr;
  if ((flags &
       ~unsigned{cudaHostAllocPortable | cudaHostAllocMapped | cudaHostAllocWriteCombined}) != 0) {
    return emu::Result(s, cudaErrorInvalidValue);
  }
  if (s.sticky != cudaSuccess) return emu::Result(s, s.sticky);
  if (const cudaError_t e = CheckUnsafeCall(s, "cudaHostAlloc"); e != cudaSuccess) return e;
  if (bytes == 0) return cudaSuccess;
  void* p = nullptr;
  if (posix_memalign(&p, 4096, bytes) != 0) return emu::Result(s, cudaErrorMemoryAllocation);
  std::memset(p, 0xff, bytes);
  s.pinned[reinterpret_cast<uintptr_t>(p)] = bytes;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t bytes) {
  return cudaHostAlloc(ptr, bytes, cudaHostAllocDefault);
}

cudaError_t cudaFreeHost(void* ptr) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (ptr == nullptr) return emu::Result(s, cudaSuccess);
  if (const cudaError_t e = CheckDeviceSync(s, "cudaFreeHost"); e != cudaSuccess) return e;
  const auto it = s.pinned.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == s.pinned.end()) return emu::Result(s, cudaErrorInvalidValue);
  s.pinned.erase(it);
  std::free(ptr);
  return emu::Result(s, cudaSuccess);
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* ptr) {
  if (attr == nullptr) return cudaErrorInvalidValue;
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  *attr = {};
  if (emu::IsDeviceRange(ptr, 1)) {
    attr->type = cudaMemoryTypeDevice;
    attr->device = emu::DeviceOfRange(ptr, 1);
    attr->devicePointer = const_cast<void*>(ptr);
  } else if (emu::IsPinnedRange(s, ptr, 1)) {  // mapped at the same address (unified addressing)
    attr->type = cudaMemoryTypeHost;
    attr->device = emu::t_device;
    attr->devicePointer = const_cast<void*>(ptr);
    attr->hostPointer = const_cast<void*>(ptr);
  }
  return emu::Result(s, cudaSuccess);
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (stream == nullptr || flags > cudaStreamNonBlocking) {
    return emu::Result(s, cudaErrorInvalidValue);
  }
  *stream = reinterpret_cast<cudaStream_t>(new char);  // a unique handle
  s.streams[*stream] = flags;
  s.stream_device[*stream] = emu::t_device;
  return emu::Result(s, cudaSuccess);
}

// Waits for the stream's deferred work (NCCL) first: CUDA returns at once and lets it finish.
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  emu::State& s = emu::S();
  std::unique_lock<std::mutex> lock(s.mu);
  if (stream == nullptr || s.streams.count(stream) == 0) {
    return emu::Result(s, cudaErrorInvalidResourceHandle);
  }
  emu::AwaitDrained(s, lock, stream);
  if (s.streams.erase(stream) == 0) return emu::Result(s, cudaErrorInvalidResourceHandle);
  s.stream_device.erase(stream);
  s.captures.erase(stream);  // a capture in progress ends with its stream, discarded
  delete reinterpret_cast<char*>(stream);
  return emu::Result(s, cudaSuccess);
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  return WaitForStream(stream, "cudaStreamSynchronize", true);
}
cudaError_t cudaStreamQuery(cudaStream_t stream) {
  return WaitForStream(stream, "cudaStreamQuery", false);
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  return cudaEventCreateWithFlags(event, cudaEventDefault);
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  const unsigned known = cudaEventBlockingSync | cudaEventDisableTiming | cudaEventInterprocess;
  if (event == nullptr || (flags & ~known) != 0 ||
      ((flags & cudaEventInterprocess) != 0 && (flags & cudaEventDisableTiming) == 0)) {
    return emu::Result(s, cudaErrorInvalidValue);
  }
  auto* e = new emu::Event();
  e->timing = (flags & cudaEventDisableTiming) == 0;
  *event = reinterpret_cast<cudaEvent_t>(e);
  s.events.insert(*event);
  return emu::Result(s, cudaSuccess);
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.events.erase(event) == 0) return emu::Result(s, cudaErrorInvalidResourceHandle);
  delete reinterpret_cast<emu::Event*>(event);
  return emu::Result(s, cudaSuccess);
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.events.count(event) == 0 || !KnownStream(s, stream)) {
    return emu::Result(s, cudaErrorInvalidResourceHandle);
  }
  emu::Capture* capture = nullptr;
  if (const cudaError_t e =
          emu::Enqueue(s, stream, "cudaEventRecord on the legacy stream", &capture);
      e != cudaSuccess) {
    return e;
  }
  if (capture != nullptr) {
    return emu::FailCaptured(s, capture, cudaErrorStreamCaptureUnsupported,
                             "cudaEventRecord on a capturing stream: event nodes (cross-stream "
                             "capture, timing inside a graph) are not emulated (tests/cuda_emu)");
  }
  if (const cudaError_t e = emu::RefuseBehindDeferred(s, stream, "cudaEventRecord");
      e != cudaSuccess) {
    return e;
  }
  auto* e = reinterpret_cast<emu::Event*>(event);
  e->time = std::chrono::steady_clock::now();
  e->recorded = true;
  return emu::Result(s, cudaSuccess);
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.events.count(event) == 0) return emu::Result(s, cudaErrorInvalidResourceHandle);
  return emu::Result(s, cudaSuccess);
}

// Everything runs when enqueued: a recorded event has always completed.
cudaError_t cudaEventQuery(cudaEvent_t event) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.events.count(event) == 0) return emu::Result(s, cudaErrorInvalidResourceHandle);
  return emu::Result(s, cudaSuccess);
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (ms == nullptr) return emu::Result(s, cudaErrorInvalidValue);
  if (s.events.count(start) == 0 || s.events.count(end) == 0) {
    return emu::Result(s, cudaErrorInvalidResourceHandle);
  }
  const auto* a = reinterpret_cast<emu::Event*>(start);
  const auto* b = reinterpret_cast<emu::Event*>(end);
  if (!a->recorded || !b->recorded || !a->timing || !b->timing) {
    return emu::Result(s, cudaErrorInvalidResourceHandle);
  }
  *ms = std::chrono::duration<float, std::milli>(b->time - a->time).count();
  return emu::Result(s, cudaSuccess);
}

cudaError_t cudaFuncSetAttributeImpl(const void* func, cudaFuncAttribute attr, int value) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (func == nullptr || attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) > emu::kMaxDynamicShared) {
    return emu::Result(s, cudaErrorInvalidValue);
  }
  s.max_dynamic_shared[func] = static_cast<size_t>(value);
  return emu::Result(s, cudaSuccess);
}

// Resident blocks per SM of an sm_90 device: by threads and by shared memory (1 KiB reserved per
// block); registers are not modelled.
cudaError_t cudaOccupancyImpl(int* blocks, const void* func, int block_size, size_t smem) {
  if (blocks == nullptr || func == nullptr || block_size <= 0 ||
      block_size > emu::kMaxThreadsPerBlock) {
    return cudaErrorInvalidValue;
  }
  int n = std::min(32, emu::kMaxThreadsPerSm / block_size);
  n = std::min<int>(n, static_cast<int>(emu::kSharedPerSm / (smem + 1024)));
  *blocks = n;
  return cudaSuccess;
}

// --- stream capture and graphs ------------------------------------------------------------------

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.sticky != cudaSuccess) return emu::Result(s, s.sticky);
  if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
      mode != cudaStreamCaptureModeRelaxed) {
    return emu::Result(s, cudaErrorInvalidValue);
  }
  if (stream == nullptr) {
    std::fprintf(stderr,
                 "cuda-emu: cudaStreamBeginCapture on the legacy stream: capture needs a "
                 "stream of cudaStreamCreate*\n");
    return emu::Result(s, cudaErrorStreamCaptureUnsupported);
  }
  const auto it = s.streams.find(stream);
  if (it == s.streams.end()) return emu::Result(s, cudaErrorInvalidResourceHandle);
  if (emu::Capture* capture = emu::CaptureOf(s, stream); capture != nullptr) {
    return emu::Forbid(s, cudaErrorIllegalState, "cudaStreamBeginCapture on a capturing stream",
                       [capture](const emu::Capture& c) { return &c == capture; });
  }
  if (const cudaError_t e = emu::RefuseBehindDeferred(s, stream, "cudaStreamBeginCapture");
      e != cudaSuccess) {
    return e;
  }
  emu::Capture& c = s.captures[stream];
  c.stream = stream;
  c.mode = mode;
  c.owner = std::this_thread::get_id();
  c.blocking = (it->second & cudaStreamNonBlocking) == 0;
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (graph == nullptr) return emu::Result(s, cudaErrorInvalidValue);
  *graph = nullptr;
  if (!KnownStream(s, stream)) return emu::Result(s, cudaErrorInvalidResourceHandle);
  emu::Capture* capture = emu::CaptureOf(s, stream);
  if (capture == nullptr) return emu::Result(s, cudaErrorIllegalState);
  if (capture->mode != cudaStreamCaptureModeRelaxed && !emu::IsThisThread(*capture)) {
    return emu::Result(s, cudaErrorStreamCaptureWrongThread);
  }
  const bool invalidated = capture->invalidated;
  std::vector<CUgraphNode_st> nodes = std::move(capture->nodes);
  s.captures.erase(stream);
  if (s.sticky != cudaSuccess) return emu::Result(s, s.sticky);
  if (invalidated) return emu::Result(s, cudaErrorStreamCaptureInvalidated);
  *graph = new CUgraph_st{std::move(nodes)};
  s.graphs.insert(*graph);
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (status == nullptr) return emu::Result(s, cudaErrorInvalidValue);
  if (!KnownStream(s, stream)) return emu::Result(s, cudaErrorInvalidResourceHandle);
  if (stream == nullptr && emu::AnyCapture(s, [](const emu::Capture& c) { return c.blocking; })) {
    return emu::Result(s, cudaErrorStreamCaptureImplicit);
  }
  const emu::Capture* capture = emu::CaptureOf(s, stream);
  *status = capture == nullptr     ? cudaStreamCaptureStatusNone
            : capture->invalidated ? cudaStreamCaptureStatusInvalidated
                                   : cudaStreamCaptureStatusActive;
  return emu::Result(s, cudaSuccess);
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph,
                                 unsigned long long flags) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (exec == nullptr) return emu::Result(s, cudaErrorInvalidValue);
  *exec = nullptr;
  // cudaGraphInstantiateFlag{AutoFreeOnLaunch, Upload, DeviceLaunch, UseNodePriority}.
  if (s.graphs.count(graph) == 0 || (flags & ~0xfull) != 0) {
    return emu::Result(s, cudaErrorInvalidValue);
  }
  if (s.sticky != cudaSuccess) return emu::Result(s, s.sticky);
  *exec = new CUgraphExec_st{graph->nodes};  // a copy: the graph may be destroyed now
  s.execs.insert(*exec);
  return cudaSuccess;
}

// Succeeds when `graph` has the nodes of `exec` (count, and type in order; a memcpy node keeps
// which sides are device memory); then every node takes the parameters of its counterpart,
// kernels and grids included.
cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph,
                                cudaGraphExecUpdateResultInfo* info) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  const auto fail = [&](cudaGraphExecUpdateResult result, cudaGraphNode_t node, cudaError_t error) {
    if (info != nullptr) *info = {result, node, nullptr};
    return emu::Result(s, error);
  };
  if (s.execs.count(exec) == 0 || s.graphs.count(graph) == 0) {
    return fail(cudaGraphExecUpdateError, nullptr, cudaErrorInvalidValue);
  }
  if (s.sticky != cudaSuccess) return fail(cudaGraphExecUpdateError, nullptr, s.sticky);
  if (graph->nodes.size() != exec->nodes.size()) {
    return fail(cudaGraphExecUpdateErrorTopologyChanged, nullptr, cudaErrorGraphExecUpdateFailure);
  }
  for (size_t i = 0; i < graph->nodes.size(); ++i) {
    const CUgraphNode_st& to = graph->nodes[i];
    const CUgraphNode_st& from = exec->nodes[i];
    if (to.type != from.type) {
      return fail(cudaGraphExecUpdateErrorNodeTypeChanged, &graph->nodes[i],
                  cudaErrorGraphExecUpdateFailure);
    }
    if (to.type == CUgraphNode_st::Type::kMemcpy &&
        (to.dst_device != from.dst_device || to.src_device != from.src_device)) {
      return fail(cudaGraphExecUpdateErrorParametersChanged, &graph->nodes[i],
                  cudaErrorGraphExecUpdateFailure);
    }
  }
  exec->nodes = graph->nodes;
  if (info != nullptr) *info = {cudaGraphExecUpdateSuccess, nullptr, nullptr};
  return cudaSuccess;
}

// Runs the nodes in order on the calling thread, with the checks of direct execution.
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.execs.count(exec) == 0) return emu::Result(s, cudaErrorInvalidValue);
  if (!KnownStream(s, stream)) return emu::Result(s, cudaErrorInvalidResourceHandle);
  if (s.sticky != cudaSuccess) return emu::Result(s, s.sticky);
  if (emu::Capture* capture = emu::CaptureOf(s, stream); capture != nullptr) {
    return emu::FailCaptured(s, capture, cudaErrorStreamCaptureUnsupported,
                             "cudaGraphLaunch into a capturing stream (child graph nodes are not "
                             "emulated)");
  }
  if (stream == nullptr) {
    const cudaError_t e = emu::CheckLegacyStream(s, "cudaGraphLaunch on the legacy stream");
    if (e != cudaSuccess) return e;
  }
  if (const cudaError_t e = emu::RefuseBehindDeferred(s, stream, "cudaGraphLaunch");
      e != cudaSuccess) {
    return e;
  }
  const size_t count = exec->nodes.size();
  for (size_t i = 0; i < count; ++i) {
    if (!RunNode(s, exec->nodes[i], i, count)) return emu::Result(s, s.sticky);
  }
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.execs.erase(exec) == 0) return emu::Result(s, cudaErrorInvalidValue);
  delete exec;
  return emu::Result(s, cudaSuccess);
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.graphs.erase(graph) == 0) return emu::Result(s, cudaErrorInvalidValue);
  delete graph;
  return emu::Result(s, cudaSuccess);
}

cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, size_t* count) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (count == nullptr || s.graphs.count(graph) == 0) {
    return emu::Result(s, cudaErrorInvalidValue);
  }
  const size_t n = graph->nodes.size();
  if (nodes != nullptr) {
    for (size_t i = 0; i < *count; ++i) nodes[i] = i < n ? &graph->nodes[i] : nullptr;
    *count = std::min(*count, n);
  } else {
    *count = n;
  }
  return emu::Result(s, cudaSuccess);
}
