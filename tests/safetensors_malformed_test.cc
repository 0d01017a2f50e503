// Every way a safetensors header can be wrong, each with the exact status code
// and a message fragment. Files are built byte by byte.
#include <sys/stat.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gquant/checkpoint.h"
#include "gquant/mapped_file.h"
#include "gquant/safetensors.h"
#include "test_util.h"

namespace gquant {
namespace {

using ::gquant::testing::TempDir;
using Code = absl::StatusCode;

std::string LittleEndian64(uint64_t value) {
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>(value >> (8 * i)));
  return bytes;
}

// 8-byte length of `header`, the header, then `payload_size` non-zero bytes.
std::string Frame(const std::string& header, size_t payload_size = 0) {
  return absl::StrCat(LittleEndian64(header.size()), header, std::string(payload_size, '\x5a'));
}

// A JSON object of the given entries.
template <typename... Entries>
std::string Obj(const Entries&... entries) {
  return absl::StrCat("{", entries..., "}");
}

// One tensor entry of the header, as `"name":{...}`.
std::string Entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  uint64_t begin, uint64_t end) {
  return absl::StrCat("\"", name, "\":{\"dtype\":\"", dtype, "\",\"shape\":", shape,
                      ",\"data_offsets\":[", begin, ",", end, "]}");
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

// The message of `status` contains every one of `fragments`.
void RequireMessageHas(const absl::Status& status, std::initializer_list<std::string> fragments) {
  const std::string message(status.message());
  INFO(message);
  for (const std::string& fragment : fragments) CHECK(message.find(fragment) != std::string::npos);
}

absl::Status Parse(const std::string& file) {
  return ParseSafetensorsHeader(std::as_bytes(std::span<const char>(file)), "bad.safetensors")
      .status();
}

struct Case {
  const char* what;
  std::string file;
  Code code;
  const char* message;  // a fragment the message must contain
};

std::vector<Case> MalformedCases() {
  const std::string w = Entry("w", "F32", "[2]", 0, 8);
  return {
      {"empty file", "", Code::kDataLoss, "file too short"},
      {"7-byte file", std::string(7, '\0'), Code::kDataLoss, "file too short"},
      {"header cut short", Frame(Obj(w), 8).substr(0, 30), Code::kDataLoss, "truncated header"},
      {"header length beyond the file", LittleEndian64(99'999'999) + "{}", Code::kDataLoss,
       "truncated header"},
      {"header length over 100 MB", LittleEndian64(100'000'001) + "{}", Code::kInvalidArgument,
       "header too large"},
      {"header length 2^64-1", LittleEndian64(UINT64_MAX) + "{}", Code::kInvalidArgument,
       "header too large"},
      {"empty header", Frame(""), Code::kDataLoss, "start with '{'"},
      {"JSON array", Frame("[1,2]"), Code::kDataLoss, "start with '{'"},
      {"leading space", Frame(" {}"), Code::kDataLoss, "start with '{'"},
      {"invalid JSON", Frame("{\"w\":"), Code::kDataLoss, "invalid JSON"},
      {"trailing garbage after JSON", Frame("{}  x"), Code::kDataLoss, "invalid JSON"},
      {"invalid UTF-8 in a key", Frame("{\"\xff\":{}}"), Code::kDataLoss, "invalid JSON"},
      {"duplicate tensor names", Frame(absl::StrCat("{", w, ",", w, "}"), 8), Code::kDataLoss,
       "duplicate key 'w'"},
      {"duplicate field",
       Frame(R"({"w":{"dtype":"F32","dtype":"F32","shape":[],"data_offsets":[0,4]}})", 4),
       Code::kDataLoss, "duplicate key 'dtype'"},
      {"nesting too deep", Frame(R"({"w":{"shape":[[1]]}})"), Code::kDataLoss, "nested"},
      {"unknown dtype", Frame(Obj(Entry("w", "F17", "[2]", 0, 8)), 8), Code::kInvalidArgument,
       "unknown dtype 'F17'"},
      {"unsupported dtype", Frame(Obj(Entry("w", "F4", "[2]", 0, 1)), 1), Code::kUnimplemented,
       "'F4'"},
      {"dtype not a string", Frame(R"({"w":{"dtype":5,"shape":[],"data_offsets":[0,4]}})", 4),
       Code::kDataLoss, "dtype: expected a string"},
      {"offsets past the end", Frame(Obj(w), 4), Code::kOutOfRange, "ends past it"},
      {"overlapping tensors",
       Frame(absl::StrCat("{", w, ",", Entry("v", "F32", "[2]", 4, 12), "}"), 12), Code::kDataLoss,
       "'w' [0, 8] and 'v' [4, 12]: expected adjacent data, but got an overlap"},
      {"hole between tensors",
       Frame(absl::StrCat("{", w, ",", Entry("v", "F32", "[1]", 12, 16), "}"), 16), Code::kDataLoss,
       "'w' [0, 8] and 'v' [12, 16]: expected adjacent data, but got a hole"},
      {"first offset not 0", Frame(Obj(Entry("w", "F32", "[2]", 4, 12)), 12), Code::kDataLoss,
       "begin at offset 0, but got 4"},
      {"wrong byte size", Frame(Obj(Entry("w", "F32", "[2,3]", 0, 20)), 20), Code::kDataLoss,
       "expected 24 bytes"},
      {"negative dimension", Frame(Obj(Entry("w", "F32", "[2,-1]", 0, 8)), 8), Code::kDataLoss,
       "non-negative int64 dimensions, but got -1"},
      {"float dimension", Frame(Obj(Entry("w", "F32", "[2.0]", 0, 8)), 8), Code::kDataLoss,
       "but got 2.0"},
      {"dimension beyond int64", Frame(Obj(Entry("w", "U8", "[9223372036854775808]", 0, 8)), 8),
       Code::kDataLoss, "non-negative int64"},
      {"shape product overflow",
       Frame(Obj(Entry("w", "F32", "[1099511627776,1099511627776]", 0, 8)), 8), Code::kDataLoss,
       "overflows"},
      {"byte size overflow", Frame(Obj(Entry("w", "F64", "[4611686018427387904]", 0, 8)), 8),
       Code::kDataLoss, "overflows"},
      {"shape not an array", Frame(R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8),
       Code::kDataLoss, "shape: expected an array"},
      {"begin > end", Frame(Obj(Entry("w", "F32", "[0]", 8, 4)), 8), Code::kDataLoss,
       "expected begin <= end, but got [8, 4]"},
      {"negative offset", Frame(R"({"w":{"dtype":"U8","shape":[],"data_offsets":[-1,0]}})", 1),
       Code::kDataLoss, "data_offsets: expected [begin, end]"},
      {"data_offsets of wrong length",
       Frame(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", 8), Code::kDataLoss,
       "data_offsets: expected [begin, end]"},
      {"trailing bytes", Frame(Obj(w), 9), Code::kDataLoss, "1 trailing bytes"},
      {"buffer bytes but no tensors", Frame("{}      ", 8), Code::kDataLoss, "8 trailing bytes"},
      {"metadata value not a string",
       Frame(absl::StrCat(R"({"__metadata__":{"a":"b","n":1},)", w, "}"), 8), Code::kDataLoss,
       "'__metadata__' key 'n': expected a string value, but got number"},
      {"metadata not an object", Frame(absl::StrCat(R"({"__metadata__":"pt",)", w, "}"), 8),
       Code::kDataLoss, "'__metadata__': expected an object"},
      {"missing dtype", Frame(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8), Code::kDataLoss,
       "tensor 'w': missing field 'dtype'"},
      {"missing data_offsets", Frame(R"({"w":{"dtype":"F32","shape":[2]}})", 8), Code::kDataLoss,
       "missing field 'data_offsets'"},
      {"extra field",
       Frame(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"offsets":[0,8]}})", 8),
       Code::kDataLoss, "extra field 'offsets'"},
      {"tensor entry not an object", Frame(R"({"w":[1,2]})"), Code::kDataLoss,
       "tensor 'w': expected an object, but got array"},
      // Hostile inputs (issue 8): lengths near 2^64, terabyte tensors, bad UTF-8.
      {"data_offsets near 2^64", Frame(Obj(Entry("w", "U8", "[1]", UINT64_MAX - 1, UINT64_MAX)), 1),
       Code::kOutOfRange, "data_offsets [18446744073709551614, 18446744073709551615]"},
      {"data_offsets beyond uint64",
       Frame(R"({"w":{"dtype":"U8","shape":[],"data_offsets":[0,18446744073709551616]}})", 1),
       Code::kDataLoss, "data_offsets: expected [begin, end]"},
      {"a 1 TiB tensor in a tiny file",
       Frame(Obj(Entry("w", "U8", "[1048576,1048576]", 0, uint64_t{1} << 40)), 8),
       Code::kOutOfRange, "tensor 'w': data_offsets [0, 1099511627776]"},
      {"an exbibyte tensor beside a zero-sized one",
       Frame(absl::StrCat("{", Entry("a", "F64", "[1073741824,134217728]", 0, uint64_t{1} << 60),
                          ",", Entry("b", "U8", "[0]", 0, 0), "}"),
             8),
       Code::kOutOfRange, "tensor 'a'"},
      {"overlong UTF-8 '/' in a name",
       Frame(absl::StrCat("{", Entry("..\xc0\xafx", "U8", "[1]", 0, 1), "}"), 1), Code::kDataLoss,
       "invalid JSON"},
      {"unpaired surrogate escape in a name",
       Frame(absl::StrCat("{", Entry("\\ud800", "U8", "[1]", 0, 1), "}"), 1), Code::kDataLoss,
       "invalid JSON"},
      {"invalid UTF-8 in a metadata value",
       Frame(absl::StrCat("{\"__metadata__\":{\"k\":\"\xfe\"},", w, "}"), 8), Code::kDataLoss,
       "invalid JSON"},
      {"100000 nested arrays",
       Frame(absl::StrCat(R"({"w":)", std::string(100000, '['), std::string(100000, ']'), "}")),
       Code::kDataLoss, "nested at most 3 deep"},
  };
}

TEST_CASE("safetensors rejects malformed files", "[safetensors]") {
  for (const Case& c : MalformedCases()) {
    DYNAMIC_SECTION(c.what) {
      const absl::Status status = Parse(c.file);
      REQUIRE_STATUS_IS(status, c.code);
      const std::string message(status.message());
      INFO(message);
      CHECK(message.find(c.message) != std::string::npos);
      CHECK(message.rfind("safetensors 'bad.safetensors': ", 0) == 0);
    }
  }
}

TEST_CASE("safetensors malformed cases are distinct and many", "[safetensors]") {
  const std::vector<Case> cases = MalformedCases();
  REQUIRE(cases.size() >= 16);
  for (size_t i = 0; i < cases.size(); ++i) {
    for (size_t j = i + 1; j < cases.size(); ++j) REQUIRE(cases[i].file != cases[j].file);
  }
}

TEST_CASE("safetensors accepts the odd but valid corners", "[safetensors]") {
  struct Valid {
    const char* what;
    std::string file;
    size_t tensors;
  };
  const std::vector<Valid> valid = {
      {"no tensors, no data", Frame("{}"), 0},
      {"only metadata", Frame(R"({"__metadata__":{}})"), 0},
      {"zero-sized tensors share an offset",
       Frame(absl::StrCat("{", Entry("a", "F32", "[0,3]", 0, 0), ",", Entry("b", "U8", "[0]", 0, 0),
                          ",", Entry("c", "I16", "[2]", 0, 4), ",",
                          Entry("d", "F16", "[5,0]", 4, 4), "}"),
             4),
       4},
      {"trailing JSON whitespace",
       Frame(absl::StrCat(Obj(Entry("a", "U8", "[]", 0, 1)), " \n\t\r "), 1), 1},
      {"offsets not in key order",
       Frame(absl::StrCat("{", Entry("a", "U8", "[1]", 2, 3), ",", Entry("b", "U8", "[2]", 0, 2),
                          "}"),
             3),
       2},
      {"negative zero dimension", Frame(Obj(Entry("a", "U8", "[-0,2]", 0, 0))), 1},
  };
  for (const Valid& v : valid) {
    DYNAMIC_SECTION(v.what) {
      auto header =
          ParseSafetensorsHeader(std::as_bytes(std::span<const char>(v.file)), "ok.safetensors");
      REQUIRE_OK(header);
      REQUIRE(header->tensors.size() == v.tensors);
      uint64_t offset = 0;
      for (const SafetensorsTensorInfo& t : header->tensors) {
        REQUIRE(t.begin == offset);
        offset = t.end;
      }
    }
  }
}

TEST_CASE("SafetensorsFile::Open names the file in errors", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.File("broken.safetensors");
  {
    std::ofstream out(path, std::ios::binary);
    const std::string file = Frame(Obj(Entry("w", "F32", "[2]", 0, 8)), 4);
    out.write(file.data(), static_cast<std::streamsize>(file.size()));
  }
  const absl::Status status = SafetensorsFile::Open(path).status();
  REQUIRE_STATUS_IS(status, Code::kOutOfRange);
  INFO(status.ToString());
  REQUIRE(std::string(status.message()).find(path) != std::string::npos);
  REQUIRE(std::string(status.message()).find("tensor 'w'") != std::string::npos);
  REQUIRE_STATUS_IS(SafetensorsFile::Open(dir.path().string()), Code::kInvalidArgument);
}

// ---- hostile inputs (issue 8) ----

TEST_CASE("safetensors: hostile sizes fail fast, before allocating", "[safetensors][hostile]") {
  // Each would need terabytes (or a deep recursion) if the reader trusted it.
  const std::vector<std::pair<std::string, std::string>> files = {
      {"header length 2^64-1", LittleEndian64(UINT64_MAX) + "{}"},
      {"a 2^60-byte tensor",
       Frame(Obj(Entry("w", "U8", "[1073741824,1073741824]", 0, uint64_t{1} << 60)))},
      {"a 2^62-element shape of zero bytes claimed as 8",
       Frame(Obj(Entry("w", "U8", "[4611686018427387904,1]", 0, 8)), 8)},
      {"1 million nested arrays",
       Frame(absl::StrCat(R"({"w":)", std::string(1000000, '['), std::string(1000000, ']'), "}"))},
  };
  for (const auto& [what, file] : files) {
    INFO(what);
    const auto start = std::chrono::steady_clock::now();
    absl::Status status;
    CHECK_NOTHROW(status = Parse(file));
    CHECK_FALSE(status.ok());
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
  }
}

TEST_CASE("safetensors: a huge but legal header is read", "[safetensors][hostile]") {
  // 20 MB of JSON whitespace after "{}": under the 100 MB limit, so valid.
  REQUIRE_OK(Parse(Frame("{}" + std::string(20'000'000, ' '))));
}

TEST_CASE("safetensors: tensor names are data, never paths", "[safetensors][hostile]") {
  // Separators, "..", an absolute path, a NUL: all legal JSON strings, kept
  // verbatim; nothing in the reader builds a path from a tensor name.
  // As JSON text, then as the decoded names the reader must return.
  const std::string names[] = {"../../etc/passwd", "/etc/shadow", R"(a\\b)", R"(nul\u0000byte)",
                               ".."};
  const std::string decoded[] = {"../../etc/passwd", "/etc/shadow", "a\\b",
                                 std::string("nul\0byte", 8), ".."};
  std::string entries;
  for (size_t i = 0; i < std::size(names); ++i) {
    absl::StrAppend(&entries, i == 0 ? "" : ",", Entry(names[i], "U8", "[1]", i, i + 1));
  }
  TempDir dir;
  WriteFile(dir.File("model.safetensors"), Frame(Obj(entries), std::size(names)));
  absl::StatusOr<Checkpoint> checkpoint = Checkpoint::Open(dir.path().string());
  REQUIRE_OK(checkpoint);
  REQUIRE(checkpoint->num_tensors() == std::size(names));
  for (const std::string& name : decoded) {
    INFO(name);
    absl::StatusOr<Tensor> tensor = checkpoint->Get(name);
    REQUIRE_OK(tensor);
    CHECK(tensor->name() == name);
    CHECK(tensor->bytes().size() == 1);
  }
  // Reading created nothing beside the file.
  CHECK(std::distance(std::filesystem::directory_iterator(dir.path()),
                      std::filesystem::directory_iterator()) == 1);
}

TEST_CASE("checkpoint: shard names in an index never leave the directory",
          "[safetensors][checkpoint][hostile]") {
  TempDir dir;
  WriteFile(dir.File("a.safetensors"), Frame(Obj(Entry("w", "U8", "[1]", 0, 1)), 1));
  // As JSON text: each decodes to a name that is not a plain file name.
  const std::string shards[] = {
      "/etc/passwd",          "sub/a.safetensors",          "..", ".",
      R"(..\\a.safetensors)", R"(a.safetensors\u0000.txt)", "",   "./a.safetensors"};
  for (const std::string& shard : shards) {
    DYNAMIC_SECTION("shard '" << shard << "'") {
      const std::string index = dir.File(std::string(kSafetensorsIndexFile));
      WriteFile(index, absl::StrCat(R"({"weight_map":{"w":")", shard, R"("}})"));
      const absl::Status status = Checkpoint::Open(dir.path().string()).status();
      REQUIRE_STATUS_IS(status, Code::kInvalidArgument);
      RequireMessageHas(status, {index, "expected a plain file name"});
    }
  }
}

TEST_CASE("checkpoint: a hostile index is DataLoss, naming the index", "[checkpoint][hostile]") {
  TempDir dir;
  const std::string index = dir.File(std::string(kSafetensorsIndexFile));
  const std::pair<std::string, std::string> cases[] = {
      {R"({"weight_map":{"w":"a.safetensors"},"metadata":)" + std::string(100000, '[') +
           std::string(100000, ']') + "}",
       "nesting at most 64 deep"},
      {R"({"weight_map":{"w":"a.safetensors"},"metadata":{"x":")" + std::string(17 << 20, ' ') +
           "\"}}",
       "expected at most 16777216"},
      {"{\"weight_map\":{\"w\xff\":\"a.safetensors\"}}", "invalid JSON"},
      {R"({"weight_map":{"w":"a.safetensors","w":"b.safetensors"}})", "duplicate key 'w'"},
  };
  for (const auto& [json, fragment] : cases) {
    DYNAMIC_SECTION(fragment) {
      WriteFile(index, json);
      const absl::Status status = Checkpoint::Open(dir.path().string()).status();
      REQUIRE_STATUS_IS(status, Code::kDataLoss);
      RequireMessageHas(status, {index, fragment});
    }
  }
}

TEST_CASE("safetensors: symlinked inputs", "[safetensors][checkpoint][hostile]") {
  namespace fs = std::filesystem;
  // Policy: a symlink to a regular file is followed, also out of the
  // checkpoint directory (the Hugging Face cache links every file into a blob
  // store); a shard *name* that leaves the directory is refused (above); what
  // a link ends at must be a regular file.
  TempDir dir;
  fs::create_directories(dir.path() / "blobs");
  fs::create_directories(dir.path() / "snapshot");
  WriteFile(dir.File("blobs/0123"), Frame(Obj(Entry("w", "U8", "[2]", 0, 2)), 2));
  fs::create_symlink("../blobs/0123", dir.path() / "snapshot" / "model.safetensors");
  REQUIRE_OK(Checkpoint::Open((dir.path() / "snapshot").string()));
  fs::create_symlink("../blobs/0123", dir.path() / "snapshot" / "shard-1.safetensors");
  WriteFile(dir.File("snapshot/" + std::string(kSafetensorsIndexFile)),
            R"({"weight_map":{"w":"shard-1.safetensors"}})");
  fs::remove(dir.path() / "snapshot" / "model.safetensors");
  REQUIRE_OK(Checkpoint::Open((dir.path() / "snapshot").string()));

  fs::create_symlink(dir.path() / "blobs", dir.path() / "to_dir.safetensors");
  fs::create_symlink(dir.path() / "missing", dir.path() / "dangling.safetensors");
  fs::create_symlink(dir.path() / "loop_b.safetensors", dir.path() / "loop_a.safetensors");
  fs::create_symlink(dir.path() / "loop_a.safetensors", dir.path() / "loop_b.safetensors");
  fs::create_symlink("/dev/zero", dir.path() / "dev_zero.safetensors");
  REQUIRE(mkfifo(dir.File("fifo.safetensors").c_str(), 0600) == 0);
  const std::pair<const char*, Code> cases[] = {
      {"to_dir.safetensors", Code::kInvalidArgument},
      {"dangling.safetensors", Code::kNotFound},
      {"loop_a.safetensors", Code::kInvalidArgument},
      {"dev_zero.safetensors", Code::kInvalidArgument},
      // Opened non-blocking: no writer, yet no hang.
      {"fifo.safetensors", Code::kInvalidArgument},
  };
  for (const auto& [name, code] : cases) {
    DYNAMIC_SECTION(name) {
      const std::string path = dir.File(name);
      const absl::Status status = SafetensorsFile::Open(path).status();
      REQUIRE_STATUS_IS(status, code);
      RequireMessageHas(status, {path});
    }
  }
}

TEST_CASE("safetensors: a file truncated after Open gives DataLoss, not SIGBUS",
          "[safetensors][hostile]") {
  // Two tensors of 64 KiB: the second lies in pages the truncation removes.
  constexpr uint64_t kBytes = 65536;
  TempDir dir;
  const std::string path = dir.File("shrinking.safetensors");
  WriteFile(path, Frame(absl::StrCat("{", Entry("a", "U8", "[65536]", 0, kBytes), ",",
                                     Entry("b", "U8", "[65536]", kBytes, 2 * kBytes), "}"),
                        2 * kBytes));
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  REQUIRE_OK(file);
  std::filesystem::resize_file(path, file->data_start() + 100);
  const absl::Status get = file->Get("b").status();
  REQUIRE_STATUS_IS(get, Code::kDataLoss);
  RequireMessageHas(get, {path, "shrank from"});
  REQUIRE_STATUS_IS(file->ForEachTensor([](const Tensor&) { return absl::OkStatus(); }),
                    Code::kDataLoss);
  // Restored to its size, the file reads again (the mapping was never touched).
  std::filesystem::resize_file(path, file->data_start() + 2 * kBytes);
  REQUIRE_OK(file->Get("b"));
}

}  // namespace
}  // namespace gquant
