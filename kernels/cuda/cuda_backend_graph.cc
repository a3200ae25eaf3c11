// CudaBackend's step graphs (Backend::BeginGraph): the ops called between BeginGraph and EndGraph
// are captured from the backend's stream into a CUDA graph (relaxed mode, so that a scratch area
// may still grow with cudaMalloc), and EndGraph launches it.
//
// Every step is captured afresh, so the graph always holds that step's arguments (pointers,
// row counts, the attention split plan, cuBLAS's choice of kernels); capturing costs host time
// comparable to launching, but the GPU then runs the step's hundreds of kernels back to back.
// Building an executable graph is what is expensive, so a capture with the node count of an
// earlier one is first tried as cudaGraphExecUpdate of that graph (a decode step of the same
// shape: only arguments changed); only a new shape instantiates. Host operands are copied into
// pinned memory (pinned_staging.h) and the graph copies them from there.
#include <cuda_runtime_api.h>

#include "common/status.h"
#include "kernels/cuda/cuda_backend_impl.h"
#include "kernels/cuda/cuda_status.h"

namespace cmoe::kernels::cuda {
namespace {

// Executable graphs kept (distinct step shapes: batch sizes, split plans, MoE runs). Each holds
// device memory for its nodes; an engine cycling through more shapes re-instantiates.
constexpr size_t kMaxGraphs = 32;

}  // namespace

void CudaBackend::ForgetUploads() {
  for (Area& area : scratch_) area.uploaded.clear();
}

absl::Status CudaBackend::BeginGraph() {
  CMOE_RETURN_IF_ERROR(Ready());
  if (!graphs_) return absl::OkStatus();
  if (recording_) return absl::FailedPreconditionError("BeginGraph: a graph is being recorded");
  CMOE_RETURN_IF_ERROR(Check(staging_.BeginRound()));
  // Every recording uploads the step's metadata itself: a copy skipped because the device
  // already held the bytes would make this step's graph a different shape from the last one's.
  ForgetUploads();
  CMOE_RETURN_IF_ERROR(
      Check(CMOE_CUDA_STATUS(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed))));
  recording_ = true;
  return absl::OkStatus();
}

void CudaBackend::CancelGraph() {
  if (!recording_) return;
  recording_ = false;
  ++graph_stats_.cancelled;
  cudaGraph_t graph = nullptr;
  if (cudaStreamEndCapture(stream_, &graph) == cudaSuccess) {
    if (graph != nullptr) cudaGraphDestroy(graph);
  } else {
    cudaGetLastError();  // an invalidated capture: nothing to keep
  }
  ForgetUploads();  // the recorded copies never ran
}

absl::Status CudaBackend::EndGraph() {
  if (!recording_) return Ready();  // graphs off: every op was queued as it was called
  recording_ = false;
  cudaGraph_t graph = nullptr;
  absl::Status status = Check(CMOE_CUDA_STATUS(cudaStreamEndCapture(stream_, &graph)));
  cudaGraphExec_t exec = nullptr;
  if (status.ok()) {
    size_t nodes = 0;
    status = Check(CMOE_CUDA_STATUS(cudaGraphGetNodes(graph, nullptr, &nodes)));
    const auto it = execs_.find(nodes);
    if (status.ok() && it != execs_.end()) {
      cudaGraphExecUpdateResultInfo info{};
      if (cudaGraphExecUpdate(it->second, graph, &info) == cudaSuccess) {
        exec = it->second;
        ++graph_stats_.updated;
      } else {
        cudaGetLastError();  // not an error of ours: the shape changed, build it anew
        cudaGraphExecDestroy(it->second);
        execs_.erase(it);
      }
    }
    if (status.ok() && exec == nullptr) {
      if (execs_.size() >= kMaxGraphs) {
        cudaGraphExecDestroy(execs_.begin()->second);
        execs_.erase(execs_.begin());
      }
      status = Check(CMOE_CUDA_STATUS(cudaGraphInstantiate(&exec, graph, 0)));
      if (status.ok()) {
        execs_[nodes] = exec;
        ++graph_stats_.instantiated;
      }
    }
  }
  if (graph != nullptr) cudaGraphDestroy(graph);
  if (status.ok()) status = Check(CMOE_CUDA_STATUS(cudaGraphLaunch(exec, stream_)));
  if (!status.ok()) {
    ForgetUploads();  // the recorded copies did not run
    return status;
  }
  ++graph_stats_.launched;
  return Check(staging_.EndRound(stream_));
}

}  // namespace cmoe::kernels::cuda
