// cuBLAS for the CPU emulation of CUDA (tests/cuda_emu/cublas.h).
#include "tests/cuda_emu/cublas.h"

#include <algorithm>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "tests/cuda_emu/half_types.h"
#include "tests/cuda_emu/runtime_internal.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
  void* workspace = nullptr;  // cublasSetWorkspace; null: cuBLAS's own, owned by the handle
  size_t workspace_bytes = 0;
  // False once the handle is destroyed: its own workspace is gone, and a graph that captured a
  // call using it would read freed memory (guarded by cmoe::cuda_emu::Mutex()).
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);
};

namespace {

size_t TypeSize(cudaDataType_t t) {
  switch (t) {
    case CUDA_R_32F:
      return 4;
    case CUDA_R_16F:
    case CUDA_R_16BF:
      return 2;
    default:
      return 0;
  }
}

float Load(const void* p, cudaDataType_t t, size_t i) {
  switch (t) {
    case CUDA_R_16F:
      return __half2float(static_cast<const __half*>(p)[i]);
    case CUDA_R_16BF:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

void Store(void* p, cudaDataType_t t, size_t i, float v) {
  switch (t) {
    case CUDA_R_16F:
      static_cast<__half*>(p)[i] = __float2half_rn(v);
      break;
    case CUDA_R_16BF:
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
      break;
    default:
      static_cast<float*>(p)[i] = v;
  }
}

// Elements a column-major (rows, cols) operand with leading dimension ld spans.
size_t Extent(int rows, int cols, int ld) {
  if (rows == 0 || cols == 0) return 0;
  return static_cast<size_t>(ld) * static_cast<size_t>(cols - 1) + static_cast<size_t>(rows);
}

// One cublasGemmEx, its arguments checked, by value (alpha and beta are host values: the host
// pointer mode), as a captured call keeps it.
struct Gemm {
  cublasOperation_t transa, transb;
  int m, n, k;
  float alpha, beta;
  const void* a;
  cudaDataType_t a_type;
  int lda;
  const void* b;
  cudaDataType_t b_type;
  int ldb;
  void* c;
  cudaDataType_t c_type;
  int ldc;
  void* workspace;
  size_t workspace_bytes;
  std::shared_ptr<bool> handle_alive;  // the handle, whose own workspace the call uses
};

// With the mutex held: "" when every operand lies in live device memory, else what does not.
std::string CheckOperands(const Gemm& g) {
  const int a_rows = g.transa == CUBLAS_OP_N ? g.m : g.k;
  const int a_cols = g.transa == CUBLAS_OP_N ? g.k : g.m;
  const int b_rows = g.transb == CUBLAS_OP_N ? g.k : g.n;
  const int b_cols = g.transb == CUBLAS_OP_N ? g.n : g.k;
  const size_t a_extent = Extent(a_rows, a_cols, g.lda), b_extent = Extent(b_rows, b_cols, g.ldb);
  char text[256];
  const char* bad = nullptr;
  if (a_extent > 0 && !cmoe::cuda_emu::IsDeviceRange(g.a, a_extent * TypeSize(g.a_type))) {
    bad = "A";
  } else if (b_extent > 0 && !cmoe::cuda_emu::IsDeviceRange(g.b, b_extent * TypeSize(g.b_type))) {
    bad = "B";
  } else if (!cmoe::cuda_emu::IsDeviceRange(g.c, Extent(g.m, g.n, g.ldc) * TypeSize(g.c_type))) {
    bad = "C";
  } else if (g.workspace != nullptr &&
             !cmoe::cuda_emu::IsDeviceRange(g.workspace, std::max<size_t>(g.workspace_bytes, 1))) {
    bad = "the workspace (cublasSetWorkspace)";
  }
  if (bad != nullptr) {
    std::snprintf(text, sizeof text,
                  "cublasGemmEx (m %d, n %d, k %d): %s does not lie in live device memory", g.m,
                  g.n, g.k, bad);
    return text;
  }
  if (g.workspace == nullptr && !*g.handle_alive) {
    std::snprintf(text, sizeof text,
                  "cublasGemmEx (m %d, n %d, k %d): its cuBLAS handle, which owned the workspace "
                  "it used, was destroyed (give graphs a workspace with cublasSetWorkspace)",
                  g.m, g.n, g.k);
    return text;
  }
  return "";
}

// C (m, n) = alpha op(A) op(B) + beta C, with the mutex held.
void Compute(const Gemm& g) {
  const int m = g.m, n = g.n, k = g.k;
  // op(A) as (m, k) rows and op(B)^T as (n, k) rows, so each output is one contiguous dot.
  const size_t kk = static_cast<size_t>(k);
  std::vector<float> op_a(static_cast<size_t>(m) * kk), op_bt(static_cast<size_t>(n) * kk);
  for (int i = 0; i < m; ++i) {
    for (int l = 0; l < k; ++l) {
      const size_t at = g.transa == CUBLAS_OP_N
                            ? static_cast<size_t>(i) + static_cast<size_t>(l) * g.lda
                            : static_cast<size_t>(l) + static_cast<size_t>(i) * g.lda;
      op_a[static_cast<size_t>(i) * kk + static_cast<size_t>(l)] = Load(g.a, g.a_type, at);
    }
  }
  for (int j = 0; j < n; ++j) {
    for (int l = 0; l < k; ++l) {
      const size_t at = g.transb == CUBLAS_OP_N
                            ? static_cast<size_t>(l) + static_cast<size_t>(j) * g.ldb
                            : static_cast<size_t>(j) + static_cast<size_t>(l) * g.ldb;
      op_bt[static_cast<size_t>(j) * kk + static_cast<size_t>(l)] = Load(g.b, g.b_type, at);
    }
  }
  for (int j = 0; j < n; ++j) {
    const float* bj = op_bt.data() + static_cast<size_t>(j) * kk;
    for (int i = 0; i < m; ++i) {
      const float* ai = op_a.data() + static_cast<size_t>(i) * kk;
      float part[8] = {};
      size_t l = 0;
      for (; l + 8 <= kk; l += 8) {
        for (int u = 0; u < 8; ++u) part[u] += ai[l + u] * bj[l + u];
      }
      for (; l < kk; ++l) part[0] += ai[l] * bj[l];
      const float dot =
          ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
      const size_t at = static_cast<size_t>(i) + static_cast<size_t>(j) * g.ldc;
      const float prior = g.beta != 0.0f ? g.beta * Load(g.c, g.c_type, at) : 0.0f;
      Store(g.c, g.c_type, at, g.alpha * dot + prior);
    }
  }
}

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  {
    std::lock_guard<std::mutex> lock(cmoe::cuda_emu::Mutex());
    *handle->alive = false;
  }
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

// As cuBLAS: the workspace lies in device memory, aligned to 256 bytes; null with 0 bytes goes
// back to cuBLAS's own.
cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void* workspace, size_t bytes) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (workspace == nullptr) {
    if (bytes != 0) return CUBLAS_STATUS_INVALID_VALUE;
  } else {
    if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0) return CUBLAS_STATUS_INVALID_VALUE;
    std::lock_guard<std::mutex> lock(cmoe::cuda_emu::Mutex());
    if (!cmoe::cuda_emu::IsDeviceRange(workspace, std::max<size_t>(bytes, 1))) {
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  }
  handle->workspace = workspace;
  handle->workspace_bytes = bytes;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "success";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "an invalid value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "the functionality requested is not supported";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "the GPU program failed to execute";
    default:
      return cublasGetStatusName(status);
  }
}

// C (m, n) = alpha op(A) op(B) + beta C, column-major, accumulated in f32; with beta == 0 C is
// not read (it may hold NaN). The operands must lie in device allocations, as on a GPU.
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                            cublasOperation_t transb, int m, int n, int k, const void* alpha,
                            const void* a, cudaDataType_t a_type, int lda, const void* b,
                            cudaDataType_t b_type, int ldb, const void* beta, void* c,
                            cudaDataType_t c_type, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t /*algo*/) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  const auto valid_op = [](cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T; };
  if (!valid_op(transa) || !valid_op(transb) || m < 0 || n < 0 || k < 0 || alpha == nullptr ||
      beta == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const int a_rows = transa == CUBLAS_OP_N ? m : k;
  const int b_rows = transb == CUBLAS_OP_N ? k : n;
  if (lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) || ldc < std::max(1, m)) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (TypeSize(a_type) == 0 || a_type != b_type || TypeSize(c_type) == 0 ||
      (c_type != CUDA_R_32F && c_type != a_type) ||
      (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_FAST_16F &&
       compute != CUBLAS_COMPUTE_32F_FAST_16BF && compute != CUBLAS_COMPUTE_32F_FAST_TF32)) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  std::lock_guard<std::mutex> lock(cmoe::cuda_emu::Mutex());
  bool capturing = false;
  if (cmoe::cuda_emu::EnqueueLibraryCall(handle->stream, "cublasGemmEx on the legacy stream",
                                         &capturing) != cudaSuccess) {
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  // Host pointer mode: alpha and beta are read now, as cuBLAS does.
  Gemm g;
  g.transa = transa;
  g.transb = transb;
  g.m = m;
  g.n = n;
  g.k = k;
  g.alpha = *static_cast<const float*>(alpha);
  g.beta = *static_cast<const float*>(beta);
  g.a = a;
  g.a_type = a_type;
  g.lda = lda;
  g.b = b;
  g.b_type = b_type;
  g.ldb = ldb;
  g.c = c;
  g.c_type = c_type;
  g.ldc = ldc;
  g.workspace = handle->workspace;
  g.workspace_bytes = handle->workspace_bytes;
  g.handle_alive = handle->alive;
  if (const std::string why = CheckOperands(g); !why.empty()) {  // an illegal address on a GPU
    if (capturing) {
      cmoe::cuda_emu::FailLibraryCall(handle->stream, cudaErrorIllegalAddress, why.c_str());
    }
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  if (capturing) {
    cmoe::cuda_emu::RecordLibraryCall(handle->stream, [g = std::move(g)] {
      std::string why = CheckOperands(g);
      if (why.empty()) Compute(g);
      return why;
    });
    return CUBLAS_STATUS_SUCCESS;
  }
  Compute(g);
  return CUBLAS_STATUS_SUCCESS;
}
