#include "common/mapped_file.h"

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace cmoe {
namespace {

TEST(MappedFileTest, MapsContents) {
  testing::ScratchDir dir;
  testing::WriteFile(dir.Join("a.bin"), "hello");
  absl::StatusOr<MappedFile> file = MappedFile::Open(dir.Join("a.bin"));
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->size(), 5u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(file->bytes().data()), 5), "hello");
}

TEST(MappedFileTest, EmptyFileMapsToEmptySpan) {
  testing::ScratchDir dir;
  testing::WriteFile(dir.Join("empty"), "");
  absl::StatusOr<MappedFile> file = MappedFile::Open(dir.Join("empty"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->size(), 0u);
}

TEST(MappedFileTest, MissingFileIsNotFoundNamingThePath) {
  absl::StatusOr<MappedFile> file = MappedFile::Open("/nonexistent/x.safetensors");
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(file.status().message().find("/nonexistent/x.safetensors"), std::string::npos);
}

TEST(MappedFileTest, DirectoryIsRejected) {
  testing::ScratchDir dir;
  EXPECT_EQ(MappedFile::Open(dir.path()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MappedFileTest, WriteAtomicallyReplacesAndReadsBack) {
  testing::ScratchDir dir;
  const std::string path = dir.Join("out.json");
  ASSERT_TRUE(WriteFileAtomically(path, "one").ok());
  ASSERT_TRUE(WriteFileAtomically(path, "two").ok());
  absl::StatusOr<std::string> text = ReadFileToString(path);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "two");
  EXPECT_FALSE(WriteFileAtomically("/nonexistent/dir/out.json", "x").ok());
}

}  // namespace
}  // namespace cmoe
