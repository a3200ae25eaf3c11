// cuBLAS for the CPU emulation of CUDA (tests/cuda_emu/cublas.h).
#include "tests/cuda_emu/cublas.h"

#include <algorithm>
#include <mutex>
#include <vector>

#include "tests/cuda_emu/half_types.h"
#include "tests/cuda_emu/runtime_internal.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
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

}  // namespace

cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
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
  const int a_rows = transa == CUBLAS_OP_N ? m : k, a_cols = transa == CUBLAS_OP_N ? k : m;
  const int b_rows = transb == CUBLAS_OP_N ? k : n, b_cols = transb == CUBLAS_OP_N ? n : k;
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
  if (cmoe::cuda_emu::StickyError() != cudaSuccess) return CUBLAS_STATUS_EXECUTION_FAILED;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const size_t a_extent = Extent(a_rows, a_cols, lda), b_extent = Extent(b_rows, b_cols, ldb);
  if ((a_extent > 0 && !cmoe::cuda_emu::IsDeviceRange(a, a_extent * TypeSize(a_type))) ||
      (b_extent > 0 && !cmoe::cuda_emu::IsDeviceRange(b, b_extent * TypeSize(b_type))) ||
      !cmoe::cuda_emu::IsDeviceRange(c, Extent(m, n, ldc) * TypeSize(c_type))) {
    return CUBLAS_STATUS_EXECUTION_FAILED;  // an illegal address on a GPU
  }
  // op(A) as (m, k) rows and op(B)^T as (n, k) rows, so each output is one contiguous dot.
  const size_t kk = static_cast<size_t>(k);
  std::vector<float> op_a(static_cast<size_t>(m) * kk), op_bt(static_cast<size_t>(n) * kk);
  for (int i = 0; i < m; ++i) {
    for (int l = 0; l < k; ++l) {
      const size_t at = transa == CUBLAS_OP_N
                            ? static_cast<size_t>(i) + static_cast<size_t>(l) * lda
                            : static_cast<size_t>(l) + static_cast<size_t>(i) * lda;
      op_a[static_cast<size_t>(i) * kk + static_cast<size_t>(l)] = Load(a, a_type, at);
    }
  }
  for (int j = 0; j < n; ++j) {
    for (int l = 0; l < k; ++l) {
      const size_t at = transb == CUBLAS_OP_N
                            ? static_cast<size_t>(l) + static_cast<size_t>(j) * ldb
                            : static_cast<size_t>(j) + static_cast<size_t>(l) * ldb;
      op_bt[static_cast<size_t>(j) * kk + static_cast<size_t>(l)] = Load(b, b_type, at);
    }
  }
  const float alpha_f = *static_cast<const float*>(alpha);
  const float beta_f = *static_cast<const float*>(beta);
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
      const size_t at = static_cast<size_t>(i) + static_cast<size_t>(j) * ldc;
      const float prior = beta_f != 0.0f ? beta_f * Load(c, c_type, at) : 0.0f;
      Store(c, c_type, at, alpha_f * dot + prior);
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}
