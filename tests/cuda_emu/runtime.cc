// The CPU emulation of the CUDA runtime (tests/cuda_emu/cuda_emu.h): devices, memory, streams,
// events, errors, and kernel launches run as one fiber per CUDA thread.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <source_location>
#include <string>
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
};

// Everything the emulation keeps; guarded by mu. Kernel launches hold mu for their duration.
struct State {
  std::mutex mu;
  std::map<uintptr_t, size_t> allocations;  // device pointer -> bytes
  size_t allocated = 0;
  std::set<cudaStream_t> streams;
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

void Launch(const void* kernel, const LaunchConfig& c, const std::function<void()>& body) {
  const std::source_location& where = c.where;
  State& s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.sticky != cudaSuccess) {
    t_last_error = s.sticky;
    return;
  }
  const uint64_t threads = uint64_t{c.block.x} * c.block.y * c.block.z;
  if (threads == 0 || threads > kMaxThreadsPerBlock || c.block.z > 64 || c.grid.x == 0 ||
      c.grid.y == 0 || c.grid.z == 0 || c.grid.x > 0x7fffffffu || c.grid.y > 65535 ||
      c.grid.z > 65535) {
    t_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  const auto opt_in = s.max_dynamic_shared.find(kernel);
  const size_t shared_limit = opt_in != s.max_dynamic_shared.end()
                                  ? std::max(opt_in->second, kDefaultDynamicShared)
                                  : kDefaultDynamicShared;
  if (c.shared_bytes > shared_limit) {
    t_last_error = cudaErrorInvalidValue;
    return;
  }
  if (c.stream != nullptr && s.streams.count(c.stream) == 0) {
    t_last_error = cudaErrorInvalidResourceHandle;
    return;
  }
  std::vector<float4> shared((std::max<size_t>(c.shared_bytes, 16) + 15) / 16);
  s.body = &body;
  g_grid_dim = c.grid;
  g_block_dim = c.block;
  for (unsigned z = 0; z < c.grid.z; ++z) {
    for (unsigned y = 0; y < c.grid.y; ++y) {
      for (unsigned x = 0; x < c.grid.x; ++x) {
        std::memset(shared.data(), 0xcd, shared.size() * sizeof(float4));  // garbage, as on a GPU
        g_dynamic_shared = shared.data();
        g_block_idx = {x, y, z};
        if (!RunBlock(s, static_cast<int>(threads))) {
          std::fprintf(stderr, "cuda-emu: kernel launched at %s:%u (grid %s, block %s): %s\n",
                       where.file_name(), static_cast<unsigned>(where.line()), Dim(c.grid).c_str(),
                       Dim(c.block).c_str(), s.fault.c_str());
          s.sticky = cudaErrorLaunchFailure;
          t_last_error = s.sticky;
          g_dynamic_shared = nullptr;
          s.body = nullptr;
          return;
        }
      }
    }
  }
  g_dynamic_shared = nullptr;
  s.body = nullptr;
}

bool IsDeviceRange(const void* p, size_t bytes) {
  State& s = S();
  const auto address = reinterpret_cast<uintptr_t>(p);
  auto it = s.allocations.upper_bound(address);
  if (it == s.allocations.begin()) return false;
  --it;
  return address + bytes <= it->first + it->second;
}

std::mutex& Mutex() { return S().mu; }

cudaError_t StickyError() { return S().sticky; }

}  // namespace cmoe::cuda_emu

// --- the runtime API --------------------------------------------------------------------------

namespace emu = cmoe::cuda_emu;

namespace {

// cudaMalloc'd memory is uninitialized on a device: fill it with 0xff (NaN as floats).
cudaError_t Allocate(void** ptr, size_t bytes) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (ptr == nullptr) return emu::Result(s, cudaErrorInvalidValue);
  *ptr = nullptr;
  if (s.sticky != cudaSuccess) return emu::Result(s, s.sticky);
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
  s.allocated += bytes;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t Release(void* ptr) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (ptr == nullptr) return emu::Result(s, cudaSuccess);
  const auto it = s.allocations.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == s.allocations.end()) return emu::Result(s, cudaErrorInvalidValue);
  s.allocated -= it->second;
  s.allocations.erase(it);
  std::free(ptr);
  return emu::Result(s, cudaSuccess);
}

bool KnownStream(emu::State& s, cudaStream_t stream) {
  return stream == nullptr || s.streams.count(stream) != 0;
}

// The device side of a copy must lie inside one allocation; host pointers are not checked.
cudaError_t Copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                 cudaStream_t stream) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (!KnownStream(s, stream)) return emu::Result(s, cudaErrorInvalidResourceHandle);
  if (s.sticky != cudaSuccess) return emu::Result(s, s.sticky);
  if (bytes == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) return emu::Result(s, cudaErrorInvalidValue);
  const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) {
    return emu::Result(s, cudaErrorInvalidMemcpyDirection);
  }
  if ((dst_device && !emu::IsDeviceRange(dst, bytes)) ||
      (src_device && !emu::IsDeviceRange(src, bytes))) {
    return emu::Result(s, cudaErrorInvalidValue);
  }
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t Set(void* ptr, int value, size_t bytes, cudaStream_t stream) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (!KnownStream(s, stream)) return emu::Result(s, cudaErrorInvalidResourceHandle);
  if (s.sticky != cudaSuccess) return emu::Result(s, s.sticky);
  if (bytes == 0) return cudaSuccess;
  if (!emu::IsDeviceRange(ptr, bytes)) return emu::Result(s, cudaErrorInvalidValue);
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

// The calls that only check their stream and the device's health.
cudaError_t StreamOp(cudaStream_t stream) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (!KnownStream(s, stream)) return emu::Result(s, cudaErrorInvalidResourceHandle);
  return emu::Result(s, cudaSuccess);
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

cudaError_t cudaDeviceSynchronize() { return StreamOp(nullptr); }

cudaError_t cudaDeviceReset() {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  for (const auto& [address, bytes] : s.allocations) std::free(reinterpret_cast<void*>(address));
  s.allocations.clear();
  s.allocated = 0;
  for (cudaStream_t stream : s.streams) delete reinterpret_cast<char*>(stream);
  s.streams.clear();
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
    default:
      return cudaGetErrorName(error);
  }
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) { return Allocate(ptr, bytes); }
cudaError_t cudaFree(void* ptr) { return Release(ptr); }
cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t stream) {
  if (const cudaError_t e = StreamOp(stream); e != cudaSuccess) return e;
  return Allocate(ptr, bytes);
}
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream) {
  if (const cudaError_t e = StreamOp(stream); e != cudaSuccess) return e;
  return Release(ptr);
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return Copy(dst, src, bytes, kind, nullptr);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  return Copy(dst, src, bytes, kind, stream);
}
cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
  return Set(ptr, value, bytes, nullptr);
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream) {
  return Set(ptr, value, bytes, stream);
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* ptr) {
  if (attr == nullptr) return cudaErrorInvalidValue;
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  *attr = {};
  if (emu::IsDeviceRange(ptr, 1)) {
    attr->type = cudaMemoryTypeDevice;
    attr->device = emu::t_device;
    attr->devicePointer = const_cast<void*>(ptr);
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
  s.streams.insert(*stream);
  return emu::Result(s, cudaSuccess);
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (stream == nullptr || s.streams.erase(stream) == 0) {
    return emu::Result(s, cudaErrorInvalidResourceHandle);
  }
  delete reinterpret_cast<char*>(stream);
  return emu::Result(s, cudaSuccess);
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) { return StreamOp(stream); }
cudaError_t cudaStreamQuery(cudaStream_t stream) { return StreamOp(stream); }

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (event == nullptr) return emu::Result(s, cudaErrorInvalidValue);
  *event = reinterpret_cast<cudaEvent_t>(new emu::Event());
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

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  emu::State& s = emu::S();
  std::lock_guard<std::mutex> lock(s.mu);
  if (ms == nullptr) return emu::Result(s, cudaErrorInvalidValue);
  if (s.events.count(start) == 0 || s.events.count(end) == 0) {
    return emu::Result(s, cudaErrorInvalidResourceHandle);
  }
  const auto* a = reinterpret_cast<emu::Event*>(start);
  const auto* b = reinterpret_cast<emu::Event*>(end);
  if (!a->recorded || !b->recorded) return emu::Result(s, cudaErrorInvalidResourceHandle);
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
