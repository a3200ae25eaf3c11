// cmoe-convert: imports foreign checkpoints into the Hugging Face Llama layout the engine serves.
//
//   cmoe-convert llama2c --model stories260K.bin --tokenizer tok512.model --out DIR [--force]
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "common/status.h"
#include "engine/llama2c_import.h"
#include "tools/tool_util.h"

ABSL_FLAG(std::string, model, "", "llama2.c checkpoint (legacy v0 .bin)");
ABSL_FLAG(std::string, tokenizer, "", "SentencePiece tokenizer (.model) of the checkpoint");
ABSL_FLAG(std::string, out, "", "output directory (Hugging Face layout)");
ABSL_FLAG(bool, force, false, "replace an existing non-empty output directory");

namespace {

constexpr char kTool[] = "cmoe-convert";

absl::Status RunLlama2c() {
  CMOE_RETURN_IF_ERROR(cmoe::tools::RequireFlag("model", absl::GetFlag(FLAGS_model)));
  CMOE_RETURN_IF_ERROR(cmoe::tools::RequireFlag("tokenizer", absl::GetFlag(FLAGS_tokenizer)));
  CMOE_RETURN_IF_ERROR(cmoe::tools::RequireFlag("out", absl::GetFlag(FLAGS_out)));
  return cmoe::engine::ConvertLlama2c({.model_path = absl::GetFlag(FLAGS_model),
                                       .tokenizer_path = absl::GetFlag(FLAGS_tokenizer),
                                       .out_dir = absl::GetFlag(FLAGS_out),
                                       .force = absl::GetFlag(FLAGS_force)});
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args = cmoe::tools::ParseToolFlags(
      argc, argv,
      "converts a checkpoint into the Hugging Face Llama layout.\n"
      "  cmoe-convert llama2c --model X.bin --tokenizer tok.model --out DIR [--force]");
  if (args.size() != 1) {
    return cmoe::tools::Fail(
        kTool, absl::InvalidArgumentError("expected one subcommand (llama2c); see --help"));
  }
  if (args[0] != "llama2c") {
    return cmoe::tools::Fail(
        kTool, absl::InvalidArgumentError("unknown subcommand '" + args[0] + "' (want llama2c)"));
  }
  const absl::Status status = RunLlama2c();
  if (!status.ok()) return cmoe::tools::Fail(kTool, status);
  std::fprintf(stderr, "cmoe-convert: wrote %s\n", absl::GetFlag(FLAGS_out).c_str());
  return 0;
}
