// A CPU emulation of the part of the CUDA runtime and device language our kernels use, so that
// kernels/cuda/*.cu and the CUDA backend run, unchanged, on machines without a GPU: the `gpu`
// parity tests then also run in CI (label cuda-emu) against the reference backend.
//
// How: tests/cuda_emu/translate.cmake rewrites each .cu file into C++ (a launch
// `k<<<grid, block, smem, stream>>>(args)` becomes `k | LaunchConfig(...) | KernelArgs(args)`;
// `extern __shared__ T s[];` becomes a pointer to the block's dynamic shared memory), and the
// headers in tests/cuda_emu/include stand in for <cuda_runtime.h>, <cuda_bf16.h>, <mma.h> and
// <cublas_v2.h>. A launch runs its blocks one after another on the calling thread; inside a block
// every CUDA thread is a fiber with its own stack, switched at __syncthreads and at every
// warp-level intrinsic, so barriers, shuffles, votes and shared memory behave as on the device.
//
// What it checks beyond running the code (each fails the launch with a sticky
// cudaErrorLaunchFailure and a message on stderr, so a test cannot pass over it):
// - launch configurations: grid and block limits, dynamic shared memory over 48 KiB without the
//   cudaFuncAttributeMaxDynamicSharedMemorySize opt-in, or over the device's 227 KiB;
// - deadlocks: a barrier or warp-level op some live threads never reach;
// - warp-level ops whose mask names an exited lane or that lanes call with different masks;
// - misaligned vector loads through __ldg / __ldcs and misaligned WMMA pointers;
// - device memory freshly allocated holds 0xff bytes (NaN as floats), as does pinned host memory
//   (cudaHostAlloc), and dynamic shared memory 0xcd, so reading what was never written shows.
// Out-of-bounds accesses are not checked here; build with -fsanitize=address for that.
//
// Stream capture and CUDA graphs (runtime.cc): while a stream created by cudaStreamCreate* captures
// (cudaStreamBeginCapture, any mode), kernel launches, cudaMemcpyAsync, cudaMemsetAsync and
// cublasGemmEx on it are recorded as nodes of a chain, not run: a kernel node keeps its launch
// configuration and its parameters by value, a cuBLAS node (a kernel node for cudaGraphExecUpdate)
// its arguments and alpha / beta values, a memcpy node its pointers (the host side is read when
// the graph runs). cudaGraphInstantiate copies the nodes; cudaGraphExecUpdate takes a graph of the
// same node count and types in order (else cudaErrorGraphExecUpdateFailure, the exec unchanged);
// cudaGraphLaunch runs the nodes in order on the calling thread, kernels as direct launches do.
// Checked, as CUDA does, each with CUDA's error code, and invalidating the capture concerned
// (cudaStreamEndCapture then returns cudaErrorStreamCaptureInvalidated and no graph):
// - a captured cudaMemcpyAsync whose host side is pageable (not cudaHostAlloc / cudaMallocHost);
// - cudaStreamSynchronize / cudaStreamQuery on a capturing stream, cudaDeviceSynchronize,
//   cudaFree or cudaFreeHost while any stream captures;
// - cudaMalloc / cudaHostAlloc while a Global-mode capture (any thread) or a ThreadLocal one of
//   this thread is active; synchronous cudaMemcpy / cudaMemset while such a capture or any
//   capture of this thread is active (stricter than CUDA in Relaxed mode: the copy would run now,
//   not at replay);
// - work on the legacy stream while a blocking (cudaStreamDefault) stream captures
//   (cudaErrorStreamCaptureImplicit); a failing launch or copy on a capturing stream;
// - not emulated, so refused on a capturing stream with a message: cudaMallocAsync / cudaFreeAsync
//   (graph memory nodes), cudaEventRecord (event nodes, cross-stream capture), cudaGraphLaunch
//   (child graphs).
// At replay, copy, memset and cuBLAS nodes check that their memory is still allocated (device
// memory, pinned memory, a cuBLAS workspace or the handle owning the default one): a node whose
// memory was freed since the capture fails the launch with a sticky cudaErrorIllegalAddress and a
// message; a kernel fault names the original launch site. cudaDeviceReset ends every capture and
// destroys every graph.
//
// What it does not model: concurrency between blocks or streams (everything is ordered), the
// memory model (no data race can show), performance, warp-level ops reached by only some lanes of
// a warp (every live lane of a warp must reach each one, as all our kernels do), graphs other than
// single-stream chains, and cudaThreadExchangeStreamCaptureMode (every thread is in the default
// Global interaction mode).
#ifndef CMOE_TESTS_CUDA_EMU_CUDA_EMU_H_
#define CMOE_TESTS_CUDA_EMU_CUDA_EMU_H_

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <source_location>
#include <tuple>
#include <type_traits>
#include <utility>

#define CMOE_CUDA_EMULATION 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

// --- vector types ----------------------------------------------------------------------------
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline int2 make_int2(int a, int b) { return {a, b}; }
inline int4 make_int4(int a, int b, int c, int d) { return {a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }

// --- runtime types ---------------------------------------------------------------------------
// The numbers are CUDA's, so that messages and logs read the same.
enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidPitchValue = 12,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInsufficientDriver = 35,
  cudaErrorDevicesUnavailable = 46,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorECCUncorrectable = 214,
  cudaErrorUnsupportedPtxVersion = 222,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorIllegalState = 401,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchTimeout = 702,
  cudaErrorContextIsDestroyed = 709,
  cudaErrorAssert = 710,
  cudaErrorHardwareStackError = 714,
  cudaErrorIllegalInstruction = 715,
  cudaErrorMisalignedAddress = 716,
  cudaErrorInvalidAddressSpace = 717,
  cudaErrorInvalidPc = 718,
  cudaErrorLaunchFailure = 719,
  cudaErrorSystemDriverMismatch = 803,
  cudaErrorCompatNotSupportedOnDevice = 805,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
  cudaErrorStreamCaptureImplicit = 906,
  cudaErrorStreamCaptureWrongThread = 908,
  cudaErrorGraphExecUpdateFailure = 910,
};
using cudaError_t = cudaError;

struct CUstream_st;
struct CUevent_st;
using cudaStream_t = CUstream_st*;
using cudaEvent_t = CUevent_st*;
inline constexpr unsigned cudaStreamDefault = 0;
inline constexpr unsigned cudaStreamNonBlocking = 1;
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02
#define cudaEventInterprocess 0x04
#define cudaHostAllocDefault 0x00
#define cudaHostAllocPortable 0x01
#define cudaHostAllocMapped 0x02
#define cudaHostAllocWriteCombined 0x04

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaMemoryType {
  cudaMemoryTypeUnregistered = 0,
  cudaMemoryTypeHost = 1,
  cudaMemoryTypeDevice = 2,
  cudaMemoryTypeManaged = 3,
};
struct cudaPointerAttributes {
  cudaMemoryType type = cudaMemoryTypeUnregistered;
  int device = 0;
  void* devicePointer = nullptr;
  void* hostPointer = nullptr;
};
enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};
struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  size_t sharedMemPerMultiprocessor;
  int warpSize;
  int maxThreadsPerBlock;
  int maxThreadsDim[3];
  int maxGridSize[3];
  int major;
  int minor;
  int multiProcessorCount;
  int memoryBusWidth;
  int l2CacheSize;
};

// Stream capture and CUDA graphs.
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2,
};
enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2,
};
struct CUgraph_st;
struct CUgraphNode_st;
struct CUgraphExec_st;
using cudaGraph_t = CUgraph_st*;
using cudaGraphNode_t = CUgraphNode_st*;
using cudaGraphExec_t = CUgraphExec_st*;
enum cudaGraphExecUpdateResult {
  cudaGraphExecUpdateSuccess = 0x0,
  cudaGraphExecUpdateError = 0x1,
  cudaGraphExecUpdateErrorTopologyChanged = 0x2,
  cudaGraphExecUpdateErrorNodeTypeChanged = 0x3,
  cudaGraphExecUpdateErrorFunctionChanged = 0x4,
  cudaGraphExecUpdateErrorParametersChanged = 0x5,
  cudaGraphExecUpdateErrorNotSupported = 0x6,
  cudaGraphExecUpdateErrorUnsupportedFunctionChange = 0x7,
  cudaGraphExecUpdateErrorAttributesChanged = 0x8,
};
struct cudaGraphExecUpdateResultInfo {
  cudaGraphExecUpdateResult result;
  cudaGraphNode_t errorNode;
  cudaGraphNode_t errorFromNode;
};

// --- the emulator's internals that the device-side functions below need ----------------------
namespace cmoe::cuda_emu {

inline constexpr int kWarpSize = 32;

struct FiberState {
  uint3 thread_idx;
  int linear = 0;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
};

// Current fiber, block and grid (valid inside a kernel; launches are serialized).
extern FiberState* g_fiber;
extern uint3 g_block_idx;
extern dim3 g_block_dim;
extern dim3 g_grid_dim;
extern void* g_dynamic_shared;

// Records a fault of the running kernel (message on stderr with the block and thread); the
// launch then ends with a sticky cudaErrorLaunchFailure.
void Fault(const char* what);

void SyncThreads();
// Every live lane of the calling warp posts `value` and `mask`; returns when all have. The
// views stay valid until the warp's next-but-one exchange. live: the warp's non-exited lanes.
struct WarpView {
  const uint64_t* values;
  const unsigned* masks;
  unsigned live;
  bool uniform;  // every live lane passed the same mask
};
WarpView WarpExchange(uint64_t value, unsigned mask);

inline int LaneId() { return g_fiber->linear % kWarpSize; }

// Checks a warp op's mask against the lanes that posted (see Fault); returns false on a fault.
inline bool CheckMask(const WarpView& v, unsigned mask, const char* op) {
  const int lane = LaneId();
  if ((mask >> lane & 1u) == 0) {
    Fault(op);
    return false;
  }
  if ((mask & ~v.live) != 0) {
    Fault("warp-level op: the mask names an exited lane");
    return false;
  }
  if (v.uniform) return true;
  for (int j = 0; j < kWarpSize; ++j) {
    if ((mask >> j & 1u) != 0 && v.masks[j] != mask) {
      Fault("warp-level op: lanes in the mask passed different masks");
      return false;
    }
  }
  return true;
}

template <class T>
uint64_t ToBits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <class T>
T FromBits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

template <class T>
T Shuffle(unsigned mask, T v, int src_lane_in_segment, int width, bool keep_own) {
  const WarpView view = WarpExchange(ToBits(v), mask);
  if (!CheckMask(view, mask, "shfl: the calling lane is not in the mask")) return v;
  if (keep_own) return v;
  const int lane = LaneId();
  const int src = (lane & ~(width - 1)) + src_lane_in_segment;
  if ((mask >> src & 1u) == 0) {
    Fault("shfl: the source lane is not in the mask");
    return v;
  }
  return FromBits<T>(view.values[src]);
}

template <class T>
void CheckAligned(const T* p, const char* op) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0) Fault(op);
}

// Launch syntax after translation: kernel | LaunchConfig(grid, block, smem, stream) | KernelArgs(
// args...). Runs the kernel to completion before returning, or records it as a graph node when
// the stream captures; errors as cudaGetLastError reports.
struct LaunchConfig {
  LaunchConfig(dim3 grid_in, dim3 block_in, size_t smem = 0, cudaStream_t s = nullptr,
               std::source_location loc = std::source_location::current())
      : grid(grid_in), block(block_in), shared_bytes(smem), stream(s), where(loc) {}
  dim3 grid;
  dim3 block;
  size_t shared_bytes;
  cudaStream_t stream;
  std::source_location where;  // the launch, for fault messages
};
// body runs the kernel with the launch's parameters; it owns them (a captured launch keeps its
// parameters by value, as CUDA does).
void Launch(const void* kernel, const LaunchConfig& config, std::function<void()> body);

template <class... P>
struct PendingLaunch {
  void (*kernel)(P...);
  LaunchConfig config;
};
template <class... P>
PendingLaunch<P...> operator|(void (*kernel)(P...), const LaunchConfig& config) {
  return {kernel, config};
}
template <class... A>
struct KernelArgs {
  explicit KernelArgs(A... a) : args(std::move(a)...) {}
  std::tuple<A...> args;
};
template <class... P, class... A>
void operator|(const PendingLaunch<P...>& launch, KernelArgs<A...>&& a) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of args");
  // Converted once, as the launch does, and kept by value (a graph node replays them); each thread
  // then gets its own copy of the parameters.
  std::tuple<std::decay_t<P>...> params = std::apply(
      [](auto&&... x) { return std::tuple<std::decay_t<P>...>(x...); }, std::move(a.args));
  Launch(reinterpret_cast<const void*>(launch.kernel), launch.config,
         [kernel = launch.kernel, params = std::move(params)] { std::apply(kernel, params); });
}

template <class T>
T* DynamicShared() {
  return static_cast<T*>(g_dynamic_shared);
}

inline void PrefetchL2(const void*) {}

}  // namespace cmoe::cuda_emu

#define threadIdx (::cmoe::cuda_emu::g_fiber->thread_idx)
#define blockIdx (::cmoe::cuda_emu::g_block_idx)
#define blockDim (::cmoe::cuda_emu::g_block_dim)
#define gridDim (::cmoe::cuda_emu::g_grid_dim)
inline constexpr int warpSize = 32;

// --- runtime API (tests/cuda_emu/runtime.cc) --------------------------------------------------
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceSynchronize();
// Frees every allocation, stream and event and clears a sticky error (a fresh device).
cudaError_t cudaDeviceReset();
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
const char* cudaGetErrorName(cudaError_t error);

cudaError_t cudaMalloc(void** ptr, size_t bytes);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t stream);
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream);
template <class T>
cudaError_t cudaMalloc(T** ptr, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(ptr), bytes);
}
template <class T>
cudaError_t cudaMallocAsync(T** ptr, size_t bytes, cudaStream_t stream) {
  return cudaMallocAsync(reinterpret_cast<void**>(ptr), bytes, stream);
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* ptr);

cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);

// Page-locked (pinned) host memory: the only host memory a captured cudaMemcpyAsync may use.
cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned flags);
cudaError_t cudaMallocHost(void** ptr, size_t bytes);
cudaError_t cudaFreeHost(void* ptr);
inline cudaError_t cudaMallocHost(void** ptr, size_t bytes, unsigned flags) {
  return cudaHostAlloc(ptr, bytes, flags);
}
template <class T>
cudaError_t cudaHostAlloc(T** ptr, size_t bytes, unsigned flags) {
  return cudaHostAlloc(reinterpret_cast<void**>(ptr), bytes, flags);
}
template <class T>
cudaError_t cudaMallocHost(T** ptr, size_t bytes, unsigned flags = 0) {
  return cudaHostAlloc(reinterpret_cast<void**>(ptr), bytes, flags);
}

// Stream capture into graphs, and their instantiation, update and launch.
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph);
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph,
                                 unsigned long long flags = 0);
cudaError_t cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph,
                                cudaGraphExecUpdateResultInfo* info);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, size_t* count);

cudaError_t cudaFuncSetAttributeImpl(const void* func, cudaFuncAttribute attr, int value);
template <class F>
cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttributeImpl(reinterpret_cast<const void*>(func), attr, value);
}
cudaError_t cudaOccupancyImpl(int* blocks, const void* func, int block_size, size_t smem);
template <class F>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, F* func, int block_size,
                                                          size_t dynamic_smem) {
  return cudaOccupancyImpl(blocks, reinterpret_cast<const void*>(func), block_size, dynamic_smem);
}

// --- device functions ------------------------------------------------------------------------
inline void __syncthreads() { ::cmoe::cuda_emu::SyncThreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  const auto view = ::cmoe::cuda_emu::WarpExchange(0, mask);
  ::cmoe::cuda_emu::CheckMask(view, mask, "__syncwarp: the calling lane is not in the mask");
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return ::cmoe::cuda_emu::Shuffle(mask, v, src & (width - 1), width, false);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = ::cmoe::cuda_emu::LaneId() & (width - 1);
  const int src = lane ^ lane_mask;
  return ::cmoe::cuda_emu::Shuffle(mask, v, src & (width - 1), width, src >= width);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::cmoe::cuda_emu::LaneId() & (width - 1);
  const int src = lane - static_cast<int>(delta);
  return ::cmoe::cuda_emu::Shuffle(mask, v, src < 0 ? lane : src, width, src < 0);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::cmoe::cuda_emu::LaneId() & (width - 1);
  const int src = lane + static_cast<int>(delta);
  return ::cmoe::cuda_emu::Shuffle(mask, v, src >= width ? lane : src, width, src >= width);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const auto view = ::cmoe::cuda_emu::WarpExchange(predicate != 0 ? 1 : 0, mask);
  if (!::cmoe::cuda_emu::CheckMask(view, mask, "ballot: the calling lane is not in the mask")) {
    return 0;
  }
  unsigned r = 0;
  for (int j = 0; j < 32; ++j) {
    if ((mask >> j & 1u) != 0 && view.values[j] != 0) r |= 1u << j;
  }
  return r;
}
inline int __all_sync(unsigned mask, int predicate) {
  return __ballot_sync(mask, predicate) == mask;
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
template <class T>
unsigned __match_any_sync(unsigned mask, T v) {
  const auto view = ::cmoe::cuda_emu::WarpExchange(::cmoe::cuda_emu::ToBits(v), mask);
  if (!::cmoe::cuda_emu::CheckMask(view, mask, "match_any: the calling lane is not in the mask")) {
    return 0;
  }
  const uint64_t mine = ::cmoe::cuda_emu::ToBits(v);
  unsigned r = 0;
  for (int j = 0; j < 32; ++j) {
    if ((mask >> j & 1u) != 0 && view.values[j] == mine) r |= 1u << j;
  }
  return r;
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) {
  const auto view = ::cmoe::cuda_emu::WarpExchange(v, mask);
  if (!::cmoe::cuda_emu::CheckMask(view, mask, "reduce_add: the calling lane is not in the mask")) {
    return 0;
  }
  unsigned r = 0;
  for (int j = 0; j < 32; ++j) {
    if ((mask >> j & 1u) != 0) r += static_cast<unsigned>(view.values[j]);
  }
  return r;
}

inline int __popc(unsigned v) { return std::popcount(v); }
inline int __popcll(unsigned long long v) { return std::popcount(v); }
inline int __ffs(int v) { return v == 0 ? 0 : std::countr_zero(static_cast<unsigned>(v)) + 1; }
inline int __ffsll(long long v) {
  return v == 0 ? 0 : std::countr_zero(static_cast<unsigned long long>(v)) + 1;
}
inline int __clz(int v) { return std::countl_zero(static_cast<unsigned>(v)); }
inline int __clzll(long long v) { return std::countl_zero(static_cast<unsigned long long>(v)); }
inline float __uint_as_float(unsigned v) { return std::bit_cast<float>(v); }
inline unsigned __float_as_uint(float v) { return std::bit_cast<unsigned>(v); }
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline int __float_as_int(float v) { return std::bit_cast<int>(v); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float v) { return std::exp(v); }
inline float __logf(float v) { return std::log(v); }
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
using std::isfinite;  // device code calls them unqualified
using std::isinf;
using std::isnan;

template <class T>
T __ldg(const T* p) {
  ::cmoe::cuda_emu::CheckAligned(p, "__ldg: misaligned address");
  return *p;
}
template <class T>
T __ldcs(const T* p) {
  ::cmoe::cuda_emu::CheckAligned(p, "__ldcs: misaligned address");
  return *p;
}
template <class T>
T __ldcg(const T* p) {
  ::cmoe::cuda_emu::CheckAligned(p, "__ldcg: misaligned address");
  return *p;
}
template <class T>
void __stcs(T* p, T v) {
  ::cmoe::cuda_emu::CheckAligned(p, "__stcs: misaligned address");
  *p = v;
}

// Atomics: fibers switch only at barriers and warp-level ops, so a read-modify-write is atomic.
template <class T>
T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  *p = old + v;
  return old;
}
template <class T>
T atomicMax(T* p, T v) {
  const T old = *p;
  *p = old < v ? v : old;
  return old;
}
template <class T>
T atomicMin(T* p, T v) {
  const T old = *p;
  *p = v < old ? v : old;
  return old;
}
template <class T>
T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}
template <class T>
T atomicCAS(T* p, T compare, T v) {
  const T old = *p;
  if (old == compare) *p = v;
  return old;
}
template <class T>
T atomicOr(T* p, T v) {
  const T old = *p;
  *p = old | v;
  return old;
}
inline void __threadfence() {}
inline void __threadfence_block() {}

// CUDA's min/max overloads for mixed integer and float arguments.
template <class A, class B>
auto min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(a) : static_cast<C>(b);
}
template <class A, class B>
auto max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}

#endif  // CMOE_TESTS_CUDA_EMU_CUDA_EMU_H_
