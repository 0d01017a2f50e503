#include "gquant/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gquant/atomic_file.h"
#include "test_util.h"

namespace gquant {
namespace {

using ::gquant::testing::MakeRng;
using ::gquant::testing::TempDir;

std::string AsString(std::span<const std::byte> bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

Tensor RandomTensor(std::mt19937_64& rng, std::string name, DType dtype,
                    std::vector<int64_t> shape) {
  auto tensor = Tensor::Allocate(std::move(name), dtype, std::move(shape));
  REQUIRE_OK(tensor);
  for (std::byte& b : tensor->mutable_bytes()) b = static_cast<std::byte>(rng() | 1);
  return *std::move(tensor);
}

void RequireError(const absl::Status& status, absl::StatusCode code, const std::string& part) {
  REQUIRE_STATUS_IS(status, code);
  INFO(status.ToString());
  REQUIRE(std::string(status.message()).find(part) != std::string::npos);
}

// A two-shard checkpoint in `dir`: a, b in shard 1; c, d in shard 2.
class ShardedCheckpoint {
 public:
  static constexpr const char* kShard1 = "model-00001-of-00002.safetensors";
  static constexpr const char* kShard2 = "model-00002-of-00002.safetensors";

  explicit ShardedCheckpoint(const TempDir& dir) : dir_(dir) {
    auto rng = MakeRng();
    shard1_ = {RandomTensor(rng, "a", DType::kBF16, {4, 8}),
               RandomTensor(rng, "b", DType::kF32, {3})};
    shard2_ = {RandomTensor(rng, "c", DType::kU8, {5}),
               RandomTensor(rng, "d.weight", DType::kI64, {2, 2})};
    REQUIRE_OK(WriteSafetensors(dir.File(kShard1), shard1_, {{"format", "pt"}, {"shard", "1"}}));
    REQUIRE_OK(WriteSafetensors(dir.File(kShard2), shard2_, {{"shard", "2"}}));
  }

  // The index for the shards as written, with `extra` appended to weight_map.
  std::string Index(const std::string& extra = "") const {
    return absl::StrCat(R"({"metadata":{"total_size":123,"origin":"test"},"weight_map":{)",
                        R"("a":")", kShard1, R"(","b":")", kShard1, R"(",)", R"("c":")", kShard2,
                        R"(","d.weight":")", kShard2, "\"", extra, "}}");
  }
  void WriteIndex(const std::string& contents) const {
    REQUIRE_OK(WriteFileAtomically(dir_.File(std::string(kSafetensorsIndexFile)), contents));
  }
  std::vector<Tensor> all() const {
    std::vector<Tensor> all = shard1_;
    all.insert(all.end(), shard2_.begin(), shard2_.end());
    return all;
  }

 private:
  const TempDir& dir_;
  std::vector<Tensor> shard1_;
  std::vector<Tensor> shard2_;
};

TEST_CASE("checkpoint with two shards round-trips", "[checkpoint]") {
  TempDir dir;
  ShardedCheckpoint files(dir);
  files.WriteIndex(files.Index());
  auto checkpoint = Checkpoint::Open(dir.path().string());
  REQUIRE_OK(checkpoint);
  REQUIRE(checkpoint->directory() == dir.path().string());
  REQUIRE(checkpoint->shards().size() == 2);
  REQUIRE(checkpoint->num_tensors() == 4);
  REQUIRE(checkpoint->TensorNames() == std::vector<std::string>{"a", "b", "c", "d.weight"});
  for (const Tensor& expected : files.all()) {
    auto actual = checkpoint->Get(expected.name());
    REQUIRE_OK(actual);
    REQUIRE(actual->dtype() == expected.dtype());
    REQUIRE(actual->shape() == expected.shape());
    REQUIRE(AsString(actual->bytes()) == AsString(expected.bytes()));
    const SafetensorsTensorInfo* info = checkpoint->Find(expected.name());
    REQUIRE(info != nullptr);
    REQUIRE(info->num_bytes() == expected.num_bytes());
  }
  REQUIRE(checkpoint->ShardOf("c")->path() == dir.File(ShardedCheckpoint::kShard2));
  REQUIRE(checkpoint->Find("zzz") == nullptr);
  RequireError(checkpoint->Get("zzz").status(), absl::StatusCode::kNotFound, "zzz");
  // Index string values first, then shard metadata; first value wins.
  REQUIRE(checkpoint->metadata() ==
          std::map<std::string, std::string>{{"format", "pt"}, {"origin", "test"}, {"shard", "1"}});
}

TEST_CASE("checkpoint ForEachTensor visits every tensor exactly once", "[checkpoint]") {
  TempDir dir;
  ShardedCheckpoint files(dir);
  files.WriteIndex(files.Index());
  auto checkpoint = Checkpoint::Open(dir.path().string());
  REQUIRE_OK(checkpoint);
  std::map<std::string, int> visits;
  std::vector<std::string> order;
  REQUIRE_OK(checkpoint->ForEachTensor([&](const Tensor& t) {
    ++visits[t.name()];
    order.push_back(t.name());
    REQUIRE(AsString(t.bytes()) == AsString(checkpoint->Get(t.name())->bytes()));
    return absl::OkStatus();
  }));
  REQUIRE(visits == std::map<std::string, int>{{"a", 1}, {"b", 1}, {"c", 1}, {"d.weight", 1}});
  // Shard by shard, each in file order (widest dtype first).
  REQUIRE(order == std::vector<std::string>{"b", "a", "d.weight", "c"});
}

TEST_CASE("checkpoint opens a single file or model.safetensors", "[checkpoint]") {
  TempDir dir;
  auto rng = MakeRng();
  const std::vector<Tensor> tensors = {RandomTensor(rng, "x", DType::kF16, {6}),
                                       RandomTensor(rng, "y", DType::kI8, {})};
  const std::string path = dir.File("model.safetensors");
  REQUIRE_OK(WriteSafetensors(path, tensors, {{"k", "v"}}));
  for (const std::string& open_path : {dir.path().string(), path}) {
    auto checkpoint = Checkpoint::Open(open_path);
    REQUIRE_OK(checkpoint);
    REQUIRE(checkpoint->directory() == dir.path().string());
    REQUIRE(checkpoint->TensorNames() == std::vector<std::string>{"x", "y"});
    REQUIRE(checkpoint->metadata() == std::map<std::string, std::string>{{"k", "v"}});
    REQUIRE(AsString(checkpoint->Get("y")->bytes()) == AsString(tensors[1].bytes()));
  }
}

TEST_CASE("checkpoint reports missing files", "[checkpoint]") {
  TempDir dir;
  RequireError(Checkpoint::Open(dir.File("nope")).status(), absl::StatusCode::kNotFound, "nope");
  RequireError(Checkpoint::Open(dir.path().string()).status(), absl::StatusCode::kNotFound,
               "found neither");
}

TEST_CASE("checkpoint rejects bad indexes", "[checkpoint]") {
  using Code = absl::StatusCode;
  TempDir dir;
  ShardedCheckpoint files(dir);
  struct Case {
    const char* what;
    std::string index;
    Code code;
    std::string message;
  };
  const std::string shard1 = ShardedCheckpoint::kShard1;
  const std::vector<Case> cases = {
      {"shard name escaping the directory", files.Index(R"(,"e":"../x.safetensors")"),
       Code::kInvalidArgument, "shard '../x.safetensors'"},
      {"absolute shard path", files.Index(R"(,"e":"/tmp/x.safetensors")"), Code::kInvalidArgument,
       "shard '/tmp/x.safetensors'"},
      {"shard in a subdirectory", files.Index(R"(,"e":"sub/x.safetensors")"),
       Code::kInvalidArgument, "plain file name"},
      {"empty shard name", files.Index(R"(,"e":"")"), Code::kInvalidArgument, "shard ''"},
      {"missing shard", files.Index(R"(,"e":"model-00003.safetensors")"), Code::kNotFound,
       "model-00003.safetensors"},
      {"tensor listed in the wrong shard",
       absl::StrCat(R"({"weight_map":{"a":")", ShardedCheckpoint::kShard2, R"(","b":")", shard1,
                    R"(","c":")", ShardedCheckpoint::kShard2, R"(","d.weight":")",
                    ShardedCheckpoint::kShard2, "\"}}"),
       Code::kDataLoss, "tensor 'a': expected in shard 'model-00002-of-00002.safetensors'"},
      {"tensor missing from weight_map",
       absl::StrCat(R"({"weight_map":{"a":")", shard1, R"(","c":")", ShardedCheckpoint::kShard2,
                    R"(","d.weight":")", ShardedCheckpoint::kShard2, "\"}}"),
       Code::kDataLoss, "tensor 'b': expected in the weight_map"},
      {"weight_map tensor missing from its shard", files.Index(R"(,"zz":")" + shard1 + "\""),
       Code::kDataLoss, "tensor 'zz': expected in shard"},
      {"weight_map not an object", R"({"weight_map":["a"]})", Code::kDataLoss,
       "'weight_map': expected an object, but got array"},
      {"no weight_map", R"({"metadata":{}})", Code::kDataLoss, "'weight_map'"},
      {"weight_map value not a string", R"({"weight_map":{"a":1}})", Code::kDataLoss,
       "'weight_map' entry 'a'"},
      {"index not an object", "[]", Code::kDataLoss, "expected a JSON object"},
      {"index not JSON", "{\"weight_map\":", Code::kDataLoss, "invalid JSON"},
      {"duplicate weight_map key", files.Index(R"(,"a":")" + shard1 + "\""), Code::kDataLoss,
       "duplicate key 'a'"},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION(c.what) {
      files.WriteIndex(c.index);
      const absl::Status status = Checkpoint::Open(dir.path().string()).status();
      RequireError(status, c.code, c.message);
      if (c.code == Code::kDataLoss) {
        RequireError(status, c.code, std::string(kSafetensorsIndexFile));
      }
    }
  }
}

TEST_CASE("checkpoint rejects a tensor stored in two shards", "[checkpoint]") {
  TempDir dir;
  ShardedCheckpoint files(dir);
  auto rng = MakeRng();
  const std::vector<Tensor> extra = {RandomTensor(rng, "a", DType::kBF16, {4, 8})};
  REQUIRE_OK(WriteSafetensors(dir.File("extra.safetensors"), extra));
  files.WriteIndex(files.Index(R"(,"zz":"extra.safetensors")"));
  RequireError(Checkpoint::Open(dir.path().string()).status(), absl::StatusCode::kDataLoss,
               "tensor 'a': expected in one shard, but got it in both");
}

TEST_CASE("checkpoint reports a corrupt shard by path", "[checkpoint]") {
  TempDir dir;
  ShardedCheckpoint files(dir);
  files.WriteIndex(files.Index());
  REQUIRE_OK(WriteFileAtomically(dir.File(ShardedCheckpoint::kShard2), "garbage"));
  RequireError(Checkpoint::Open(dir.path().string()).status(), absl::StatusCode::kDataLoss,
               dir.File(ShardedCheckpoint::kShard2));
}

}  // namespace
}  // namespace gquant
