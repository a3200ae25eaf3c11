// Builds an output directory (a converted or synthetic model) in a temporary sibling and moves it
// into place only when complete, so a failed or interrupted tool leaves nothing half-written.
//
//   CMOE_ASSIGN_OR_RETURN(auto staged, StagedOutputDir::Create(out_dir, force));
//   CMOE_RETURN_IF_ERROR(WriteFileAtomically(staged->Join("config.json"), text));
//   CMOE_RETURN_IF_ERROR(staged->Commit());  // out_dir now holds the files
#ifndef CMOE_ENGINE_STAGED_OUTPUT_DIR_H_
#define CMOE_ENGINE_STAGED_OUTPUT_DIR_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace cmoe::engine {

class StagedOutputDir {
 public:
  // Refuses an existing non-empty `out_dir` unless `force` (AlreadyExists); even with `force`,
  // a non-empty directory without config.json (it does not look like a checkpoint: think
  // --out $HOME) and a path that exists but is not a directory (FailedPrecondition). Creates
  // missing parents and the staging directory `out_dir`.tmp-XXXXXX beside it.
  static absl::StatusOr<std::unique_ptr<StagedOutputDir>> Create(const std::string& out_dir,
                                                                 bool force);

  // Removes the staging directory unless Commit succeeded.
  ~StagedOutputDir();
  StagedOutputDir(const StagedOutputDir&) = delete;
  StagedOutputDir& operator=(const StagedOutputDir&) = delete;

  const std::string& path() const { return staging_; }    // where to write the files
  const std::string& target() const { return out_dir_; }  // where they appear on Commit
  std::string Join(const std::string& name) const { return staging_ + "/" + name; }

  // Replaces `out_dir` (and whatever it held) with the staging directory.
  absl::Status Commit();

 private:
  StagedOutputDir(std::string out_dir, std::string staging)
      : out_dir_(std::move(out_dir)), staging_(std::move(staging)) {}

  std::string out_dir_;
  std::string staging_;
  bool committed_ = false;
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_STAGED_OUTPUT_DIR_H_
