// cmoe-synth: writes a synthetic dense Llama checkpoint with seeded random weights.
//
//   cmoe-synth --shape tinyllama-1.1b --dtype bf16 --seed 1 --out /tmp/synth-tinyllama
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "common/status.h"
#include "common/timer.h"
#include "engine/synthetic_checkpoint.h"
#include "tools/tool_util.h"

ABSL_FLAG(std::string, shape, "",
          "tinyllama-1.1b, llama2-7b or "
          "custom(hidden=H,ffn=F,layers=L,heads=N,kv_heads=K,vocab=V,ctx=C[,head_dim=D][,tied=1])");
ABSL_FLAG(std::string, dtype, "bf16", "weight dtype: bf16, f16 or f32");
ABSL_FLAG(uint64_t, seed, 0, "random seed (same seed, same weights)");
ABSL_FLAG(std::string, out, "", "output directory");
ABSL_FLAG(bool, force, false, "replace an existing non-empty output directory");
ABSL_FLAG(int32_t, threads, 2, "generation threads");

namespace {

constexpr char kTool[] = "cmoe-synth";

absl::Status Run() {
  CMOE_RETURN_IF_ERROR(cmoe::tools::RequireFlag("shape", absl::GetFlag(FLAGS_shape)));
  CMOE_RETURN_IF_ERROR(cmoe::tools::RequireFlag("out", absl::GetFlag(FLAGS_out)));
  CMOE_ASSIGN_OR_RETURN(cmoe::kernels::DType dtype,
                        cmoe::engine::ParseSynthDType(absl::GetFlag(FLAGS_dtype)));
  return cmoe::engine::WriteSyntheticCheckpoint({.shape = absl::GetFlag(FLAGS_shape),
                                                 .dtype = dtype,
                                                 .seed = absl::GetFlag(FLAGS_seed),
                                                 .out_dir = absl::GetFlag(FLAGS_out),
                                                 .force = absl::GetFlag(FLAGS_force),
                                                 .threads = absl::GetFlag(FLAGS_threads)});
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args = cmoe::tools::ParseToolFlags(
      argc, argv,
      "writes a synthetic Llama checkpoint with seeded random weights.\n"
      "  cmoe-synth --shape tinyllama-1.1b|llama2-7b|custom(...) --dtype bf16|f16|f32 --seed S "
      "--out DIR [--force]");
  if (!args.empty()) {
    return cmoe::tools::Fail(kTool,
                             absl::InvalidArgumentError("unexpected argument '" + args[0] + "'"));
  }
  const cmoe::Timer timer;
  const absl::Status status = Run();
  if (!status.ok()) return cmoe::tools::Fail(kTool, status);
  std::fprintf(stderr, "cmoe-synth: wrote %s in %.1f s\n", absl::GetFlag(FLAGS_out).c_str(),
               timer.Seconds());
  return 0;
}
