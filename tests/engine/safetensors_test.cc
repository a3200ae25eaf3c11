#include "engine/safetensors.h"

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "common/half.h"
#include "common/mapped_file.h"
#include "engine/safetensors_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace cmoe::engine {
namespace {

using kernels::DType;
using ::testing::AllOf;
using ::testing::HasSubstr;

// A safetensors file from a raw header string and `data_bytes` zero bytes of data.
std::string RawFile(const std::string& header, size_t data_bytes, uint64_t length_field) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((length_field >> (8 * i)) & 0xff);
  return out + header + std::string(data_bytes, '\0');
}
std::string RawFile(const std::string& header, size_t data_bytes) {
  return RawFile(header, data_bytes, header.size());
}

class SafetensorsTest : public ::testing::Test {
 protected:
  // Writes `contents` and opens it; returns the error status (the test expects a failure).
  absl::Status OpenRaw(const std::string& contents) {
    testing::WriteFile(path_, contents);
    auto file = SafetensorsFile::Open(path_);
    return file.status();
  }

  // Expects InvalidArgument whose message names the file and every one of `words`.
  void ExpectRejected(const std::string& contents, const std::vector<std::string>& words) {
    const absl::Status s = OpenRaw(contents);
    ASSERT_FALSE(s.ok()) << "accepted a malformed file";
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr(path_));
    for (const std::string& w : words) EXPECT_THAT(s.message(), HasSubstr(w));
  }

  testing::ScratchDir dir_;
  std::string path_ = dir_.Join("model.safetensors");
};

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  const auto f = SafetensorsFile::Open(path_);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(f.status().message(), HasSubstr(path_));
}

TEST_F(SafetensorsTest, RejectsFileShorterThanLengthField) {
  ExpectRejected("abc", {"8-byte"});
  ExpectRejected("", {"8-byte"});
}

TEST_F(SafetensorsTest, RejectsHeaderLengthBeyondFile) {
  ExpectRejected(RawFile("{}", 0, 1000), {"header length 1000", "beyond"});
}

TEST_F(SafetensorsTest, RejectsOversizedHeaderLength) {
  ExpectRejected(RawFile("{}", 0, uint64_t{1} << 40), {"header length", "limit"});
}

TEST_F(SafetensorsTest, RejectsHeaderThatIsNotJson) {
  ExpectRejected(RawFile("{\"a\": [1, 2", 0), {"not valid JSON"});
  ExpectRejected(RawFile("[1, 2, 3]", 0), {"not a JSON object"});
}

TEST_F(SafetensorsTest, RejectsEntryMissingKeys) {
  ExpectRejected(RawFile(R"({"w": {"dtype": "F32", "shape": [2]}})", 8), {"'w'", "data_offsets"});
  ExpectRejected(RawFile(R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", 8), {"'w'", "dtype"});
  ExpectRejected(RawFile(R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", 8),
                 {"'w'", "shape"});
}

TEST_F(SafetensorsTest, RejectsUnknownDtypeNamingIt) {
  ExpectRejected(RawFile(R"({"w": {"dtype": "I8", "shape": [2], "data_offsets": [0, 2]}})", 2),
                 {"'w'", "I8"});
  ExpectRejected(RawFile(R"({"w": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", 8),
                 {"'w'", "F64"});
}

TEST_F(SafetensorsTest, RejectsNegativeDims) {
  ExpectRejected(RawFile(R"({"w": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 8]}})", 8),
                 {"'w'", "negative"});
}

TEST_F(SafetensorsTest, RejectsMalformedOffsets) {
  ExpectRejected(RawFile(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 8),
                 {"'w'", "begin 8 > end 4"});
  ExpectRejected(RawFile(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", 8),
                 {"'w'", "data_offsets"});
}

TEST_F(SafetensorsTest, RejectsByteSizeMismatch) {
  ExpectRejected(RawFile(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8),
                 {"'w'", "8 bytes", "12"});
}

TEST_F(SafetensorsTest, RejectsOffsetsOutsideTheFile) {
  ExpectRejected(RawFile(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8),
                 {"'w'", "outside the data section"});
}

TEST_F(SafetensorsTest, RejectsOverlappingTensors) {
  ExpectRejected(RawFile(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                             "b": {"dtype": "F16", "shape": [2], "data_offsets": [6, 10]}})",
                         16),
                 {"'b'", "overlaps", "'a'"});
}

TEST_F(SafetensorsTest, AcceptsMetadataAndEmptyTensors) {
  testing::WriteFile(path_, RawFile(R"({"__metadata__": {"format": "pt"},
      "a": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
      "e": {"dtype": "F32", "shape": [0, 4], "data_offsets": [8, 8]}})",
                                    8));
  auto f = SafetensorsFile::Open(path_);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->metadata().at("format"), "pt");
  ASSERT_EQ(f->tensors().size(), 2u);
  const TensorInfo* a = f->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::kBF16);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(a->byte_size, 8);
  EXPECT_EQ(a->file, path_);
  EXPECT_EQ(f->Find("e")->elements(), 0);
  EXPECT_EQ(f->Find("missing"), nullptr);
}

// --- writer -> reader round trip ---

std::vector<uint8_t> Bytes(const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  return {b, b + n};
}

TEST_F(SafetensorsTest, WriterRoundTripsAllDtypes) {
  const std::vector<float> f32 = {1.5f, -2.25f, 3.0f, 0.1f, -0.0f, 1e-3f};
  std::vector<uint16_t> f16, bf16;
  for (float v : f32) {
    f16.push_back(FloatToF16(v));
    bf16.push_back(FloatToBf16(v));
  }
  SafetensorsWriter w;
  w.SetMetadata("format", "pt");
  ASSERT_TRUE(w.AddF32("z.f32", {2, 3}, f32).ok());
  ASSERT_TRUE(w.AddOwned("a.f16", DType::kF16, {6}, Bytes(f16.data(), 12)).ok());
  ASSERT_TRUE(w.AddBorrowed("m.bf16", DType::kBF16, {3, 2},
                            {reinterpret_cast<const uint8_t*>(bf16.data()), 12})
                  .ok());
  ASSERT_TRUE(w.Write(path_).ok());

  auto f = SafetensorsFile::Open(path_);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->metadata().at("format"), "pt");
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->tensors()[0].name, "a.f16");  // sorted
  const TensorInfo* t32 = f->Find("z.f32");
  ASSERT_EQ(t32->shape, (std::vector<int64_t>{2, 3}));
  std::vector<float> back(6);
  std::memcpy(back.data(), t32->data, 24);
  EXPECT_EQ(back, f32);
  EXPECT_EQ(std::memcmp(f->Find("a.f16")->data, f16.data(), 12), 0);
  EXPECT_EQ(std::memcmp(f->Find("m.bf16")->data, bf16.data(), 12), 0);
  EXPECT_EQ(f->Find("m.bf16")->dtype, DType::kBF16);
  // The data section starts 8-byte aligned (the header is padded with spaces).
  auto mapped = MappedFile::Open(path_);
  uint64_t header_len = 0;
  std::memcpy(&header_len, mapped->bytes().data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u);
}

TEST_F(SafetensorsTest, WriterStreamsProducedTensorsInChunks) {
  SafetensorsWriter w;
  ASSERT_TRUE(w.AddProduced("big", DType::kF32, {1000}, [](TensorSink& sink) {
                 for (int chunk = 0; chunk < 10; ++chunk) {
                   std::vector<float> v(100);
                   for (int i = 0; i < 100; ++i) v[i] = static_cast<float>(chunk * 100 + i);
                   absl::Status s = sink.Write({reinterpret_cast<const uint8_t*>(v.data()), 400});
                   if (!s.ok()) return s;
                 }
                 return absl::OkStatus();
               }).ok());
  int64_t last_done = 0;
  ASSERT_TRUE(w.Write(path_, [&](int64_t done, int64_t total) { last_done = done; }).ok());
  EXPECT_EQ(last_done, 4000);
  auto f = SafetensorsFile::Open(path_);
  ASSERT_TRUE(f.ok()) << f.status();
  const auto* v = reinterpret_cast<const float*>(f->Find("big")->data);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(v[i], static_cast<float>(i));
}

TEST_F(SafetensorsTest, WriterRejectsBadTensorsAndLeavesNoFile) {
  SafetensorsWriter w;
  EXPECT_EQ(w.AddOwned("x", DType::kF32, {3}, std::vector<uint8_t>(8)).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(w.AddF32("x", {1}, std::vector<float>{1.0f}).ok());
  EXPECT_THAT(w.AddF32("x", {1}, std::vector<float>{1.0f}).message(), HasSubstr("'x'"));
  ASSERT_TRUE(w.AddProduced("short", DType::kF32, {4}, [](TensorSink& sink) {
                 const float v[2] = {1, 2};
                 return sink.Write({reinterpret_cast<const uint8_t*>(v), 8});
               }).ok());
  const absl::Status s = w.Write(path_);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), AllOf(HasSubstr("'short'"), HasSubstr(path_)));
  EXPECT_TRUE(std::filesystem::is_empty(dir_.path()));  // neither the file nor a temporary
}

// --- TensorStore over shards ---

class TensorStoreTest : public ::testing::Test {
 protected:
  void WriteShard(const std::string& name, const std::vector<std::string>& tensors) {
    SafetensorsWriter w;
    for (const std::string& t : tensors) {
      ASSERT_TRUE(w.AddF32(t, {2}, std::vector<float>{1.0f, static_cast<float>(t.size())}).ok());
    }
    ASSERT_TRUE(w.Write(dir_.Join(name)).ok());
  }
  void WriteIndex(const std::string& weight_map) {
    testing::WriteFile(index_,
                       R"({"metadata": {"total_size": 16}, "weight_map": )" + weight_map + "}");
  }
  void ExpectIndexError(absl::StatusCode code, const std::vector<std::string>& words) {
    auto store = TensorStore::OpenDir(dir_.path());
    ASSERT_FALSE(store.ok());
    EXPECT_EQ(store.status().code(), code) << store.status();
    for (const std::string& w : words) EXPECT_THAT(store.status().message(), HasSubstr(w));
  }

  testing::ScratchDir dir_;
  std::string index_ = dir_.Join("model.safetensors.index.json");
};

TEST_F(TensorStoreTest, LoadsSingleFile) {
  WriteShard("model.safetensors", {"a", "b"});
  auto store = TensorStore::OpenDir(dir_.path());
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->tensors().size(), 2u);
  EXPECT_EQ((*store)->total_bytes(), 16);
  auto b = (*store)->Get("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->file, dir_.Join("model.safetensors"));
  const auto missing = (*store)->Get("nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), AllOf(HasSubstr("nope"), HasSubstr("model.safetensors")));
}

TEST_F(TensorStoreTest, LoadsShardsFromIndex) {
  WriteShard("model-00001-of-00002.safetensors", {"a", "b"});
  WriteShard("model-00002-of-00002.safetensors", {"c"});
  WriteIndex(R"({"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                 "c": "model-00002-of-00002.safetensors"})");
  auto store = TensorStore::OpenDir(dir_.path());
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->tensors().size(), 3u);
  EXPECT_EQ((*store)->files().size(), 2u);
  EXPECT_EQ((*store)->Find("c")->file, dir_.Join("model-00002-of-00002.safetensors"));
  EXPECT_EQ(reinterpret_cast<const float*>((*store)->Find("c")->data)[1], 1.0f);
}

TEST_F(TensorStoreTest, NoWeightsIsNotFoundNamingBothFiles) {
  ExpectIndexError(absl::StatusCode::kNotFound,
                   {"model.safetensors", "model.safetensors.index.json", dir_.path()});
}

TEST_F(TensorStoreTest, MissingShardIsNotFound) {
  WriteShard("s1.safetensors", {"a"});
  WriteIndex(R"({"a": "s1.safetensors", "b": "s2.safetensors"})");
  ExpectIndexError(absl::StatusCode::kNotFound, {dir_.Join("s2.safetensors"), index_});
}

TEST_F(TensorStoreTest, TensorListedButAbsentFromShard) {
  WriteShard("s1.safetensors", {"a"});
  WriteIndex(R"({"a": "s1.safetensors", "ghost": "s1.safetensors"})");
  ExpectIndexError(absl::StatusCode::kInvalidArgument, {index_, "'ghost'", "s1.safetensors"});
}

TEST_F(TensorStoreTest, TensorInTwoShards) {
  WriteShard("s1.safetensors", {"a", "b"});
  WriteShard("s2.safetensors", {"b"});
  WriteIndex(R"({"a": "s1.safetensors", "b": "s2.safetensors"})");
  ExpectIndexError(absl::StatusCode::kInvalidArgument, {"'b'", "s1.safetensors", "s2.safetensors"});
}

TEST_F(TensorStoreTest, TensorInShardButNotListed) {
  WriteShard("s1.safetensors", {"a", "stray"});
  WriteIndex(R"({"a": "s1.safetensors"})");
  ExpectIndexError(absl::StatusCode::kInvalidArgument, {index_, "'stray'", "not listed"});
}

TEST_F(TensorStoreTest, BadIndexJson) {
  testing::WriteFile(index_, "{\"weight_map\": ");
  ExpectIndexError(absl::StatusCode::kInvalidArgument, {index_, "JSON"});
  testing::WriteFile(index_, R"({"metadata": {}})");
  ExpectIndexError(absl::StatusCode::kInvalidArgument, {index_, "weight_map"});
  testing::WriteFile(index_, R"({"weight_map": {"a": 3}})");
  ExpectIndexError(absl::StatusCode::kInvalidArgument, {index_, "'a'"});
  testing::WriteFile(index_, R"({"weight_map": {"a": "../escape.safetensors"}})");
  ExpectIndexError(absl::StatusCode::kInvalidArgument, {index_, "'a'"});
}

TEST_F(TensorStoreTest, CorruptShardNamesTheShard) {
  testing::WriteFile(dir_.Join("s1.safetensors"), "xy");
  WriteIndex(R"({"a": "s1.safetensors"})");
  ExpectIndexError(absl::StatusCode::kInvalidArgument, {dir_.Join("s1.safetensors"), "8-byte"});
}

}  // namespace
}  // namespace cmoe::engine
