#include "engine/staged_output_dir.h"

#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace cmoe::engine {
namespace fs = std::filesystem;

namespace {

absl::Status CheckTarget(const std::string& out_dir, bool force) {
  std::error_code ec;
  const fs::file_status st = fs::status(out_dir, ec);
  if (!fs::exists(st)) return absl::OkStatus();
  if (!fs::is_directory(st)) {
    return absl::FailedPreconditionError(
        absl::StrCat("output path ", out_dir, " exists and is not a directory"));
  }
  if (fs::is_empty(out_dir, ec)) return absl::OkStatus();
  if (!force) {
    return absl::AlreadyExistsError(absl::StrCat(
        "output directory ", out_dir, " exists and is not empty (use --force to replace it)"));
  }
  // --force replaces a checkpoint, never an arbitrary directory (think --out $HOME).
  if (!fs::exists(fs::path(out_dir) / "config.json", ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat("refusing to replace ", out_dir,
                     " even with --force: it is not empty and holds no config.json, so it does "
                     "not look like a model directory"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<StagedOutputDir>> StagedOutputDir::Create(const std::string& out_dir,
                                                                         bool force) {
  if (out_dir.empty()) return absl::InvalidArgumentError("output directory not given");
  std::string target = out_dir;
  while (target.size() > 1 && target.back() == '/') target.pop_back();
  if (absl::Status s = CheckTarget(target, force); !s.ok()) return s;
  std::error_code ec;
  const fs::path parent = fs::absolute(target, ec).parent_path();
  fs::create_directories(parent, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create directory ", parent.string(), ": ", ec.message()));
  }
  std::string staging = target + ".tmp-XXXXXX";
  if (::mkdtemp(staging.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("cannot create a staging directory beside ", target,
                                            ": ", std::strerror(errno)));
  }
  // mkdtemp makes it private; a model directory is normally world-readable.
  fs::permissions(staging,
                  fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                      fs::perms::others_read | fs::perms::others_exec,
                  ec);
  return std::unique_ptr<StagedOutputDir>(new StagedOutputDir(target, staging));
}

StagedOutputDir::~StagedOutputDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

absl::Status StagedOutputDir::Commit() {
  std::error_code ec;
  const std::string old = staging_ + ".old";
  const bool replace = fs::exists(out_dir_, ec);
  if (replace) fs::rename(out_dir_, old, ec);
  if (!ec) fs::rename(staging_, out_dir_, ec);
  if (ec) {
    const std::string reason = ec.message();
    if (replace && fs::exists(old, ec)) fs::rename(old, out_dir_, ec);
    return absl::InternalError(
        absl::StrCat("cannot move ", staging_, " into place as ", out_dir_, ": ", reason));
  }
  committed_ = true;
  if (replace) fs::remove_all(old, ec);
  return absl::OkStatus();
}

}  // namespace cmoe::engine
