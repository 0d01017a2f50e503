#include "gquant/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gquant/mapped_file.h"
#include "gquant/status.h"
#include "strict_json.h"

namespace gquant {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Shard names come from a possibly untrusted index; refuse anything that could
// leave the checkpoint directory.
absl::Status CheckShardName(const std::string& name) {
  const bool bad = name.empty() || name.find('/') != std::string::npos ||
                   name.find('\\') != std::string::npos || name.find("..") != std::string::npos ||
                   name.find('\0') != std::string::npos || name == ".";
  if (bad) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "shard '%s': expected a plain file name in the checkpoint directory", name));
  }
  return absl::OkStatus();
}

struct Index {
  std::map<std::string, std::string> weight_map;  // tensor -> shard file name
  std::map<std::string, std::string> metadata;    // string values of "metadata"
};

absl::StatusOr<Index> ParseIndex(std::span<const std::byte> bytes) {
  const char* text = reinterpret_cast<const char*>(bytes.data());
  absl::StatusOr<Json> parsed =
      internal::ParseStrictJson<Json>(std::string_view(text, bytes.size()));
  if (!parsed.ok()) return absl::DataLossError(parsed.status().message());
  const Json root = std::move(*parsed);
  if (!root.is_object()) {
    return absl::DataLossError(absl::StrCat("expected a JSON object, but got ", root.type_name()));
  }
  const auto weight_map = root.find("weight_map");
  if (weight_map == root.end() || !weight_map->is_object()) {
    return absl::DataLossError(
        absl::StrCat("'weight_map': expected an object, but got ",
                     weight_map == root.end() ? "nothing" : weight_map->type_name()));
  }
  Index index;
  for (const auto& [tensor, shard] : weight_map->items()) {
    if (!shard.is_string()) {
      return absl::DataLossError(absl::StrCat("'weight_map' entry '", tensor,
                                              "': expected a shard file name string, but got ",
                                              shard.type_name()));
    }
    GQ_RETURN_IF_ERROR(CheckShardName(shard.get<std::string>()));
    index.weight_map.emplace(tensor, shard.get<std::string>());
  }
  const auto metadata = root.find("metadata");
  if (metadata != root.end() && !metadata->is_null()) {
    if (!metadata->is_object()) {
      return absl::DataLossError(
          absl::StrCat("'metadata': expected an object, but got ", metadata->type_name()));
    }
    for (const auto& [key, value] : metadata->items()) {
      if (value.is_string()) index.metadata.emplace(key, value.get<std::string>());
    }
  }
  return index;
}

}  // namespace

struct Checkpoint::State {
  std::string directory;
  // Mapped eagerly: mappings are file-backed and cost no memory until read,
  // and opening validates every shard up front instead of mid-conversion.
  std::vector<SafetensorsFile> shards;
  std::unordered_map<std::string, size_t, StringHash, std::equal_to<>> shard_of;
  std::map<std::string, std::string> metadata;
};

absl::StatusOr<Checkpoint> Checkpoint::Open(const std::string& path) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) {
    return absl::NotFoundError(absl::StrFormat("checkpoint '%s': does not exist", path));
  }
  auto state = std::make_shared<State>();
  std::string single_path;
  std::string index_path;
  if (fs::is_directory(status)) {
    state->directory = path;
    const std::string single = (fs::path(path) / kSafetensorsSingleFile).string();
    const std::string index = (fs::path(path) / kSafetensorsIndexFile).string();
    if (fs::exists(single, ec)) {
      single_path = single;
    } else if (fs::exists(index, ec)) {
      index_path = index;
    } else {
      return absl::NotFoundError(
          absl::StrFormat("checkpoint directory '%s': expected %s or %s, but found neither", path,
                          kSafetensorsSingleFile, kSafetensorsIndexFile));
    }
  } else {
    const fs::path parent = fs::path(path).parent_path();
    state->directory = (parent.empty() ? fs::path(".") : parent).string();
    single_path = path;
  }

  Index index;
  if (!index_path.empty()) {
    GQ_ASSIGN_OR_RETURN(std::shared_ptr<const MappedFile> file, MappedFile::Open(index_path));
    absl::StatusOr<Index> parsed = ParseIndex(file->bytes());
    if (!parsed.ok()) return Annotate(parsed.status(), "checkpoint index '", index_path, "'");
    index = *std::move(parsed);
    std::set<std::string> shard_names;
    for (const auto& [tensor, shard] : index.weight_map) shard_names.insert(shard);
    for (const std::string& name : shard_names) {
      GQ_ASSIGN_OR_RETURN(SafetensorsFile shard,
                          SafetensorsFile::Open((fs::path(path) / name).string()));
      state->shards.push_back(std::move(shard));
    }
  } else {
    GQ_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(single_path));
    state->shards.push_back(std::move(file));
  }

  for (size_t i = 0; i < state->shards.size(); ++i) {
    for (const SafetensorsTensorInfo& info : state->shards[i].tensors()) {
      const auto [it, inserted] = state->shard_of.emplace(info.name, i);
      if (!inserted) {
        return absl::DataLossError(
            absl::StrFormat("tensor '%s': expected in one shard, but got it in both '%s' and '%s'",
                            info.name, state->shards[it->second].path(), state->shards[i].path()));
      }
    }
  }
  if (!index_path.empty()) {
    // Every tensor must be where the index says, and nowhere else.
    for (const auto& [name, shard_index] : state->shard_of) {
      const std::string shard_name = fs::path(state->shards[shard_index].path()).filename();
      const auto listed = index.weight_map.find(name);
      if (listed == index.weight_map.end()) {
        return absl::DataLossError(absl::StrFormat(
            "tensor '%s': expected in the weight_map of '%s', but it only appears in shard '%s'",
            name, index_path, shard_name));
      }
      if (listed->second != shard_name) {
        return absl::DataLossError(absl::StrFormat(
            "tensor '%s': expected in shard '%s' (per '%s'), but got it in shard '%s'", name,
            listed->second, index_path, shard_name));
      }
    }
    for (const auto& [name, shard_name] : index.weight_map) {
      if (!state->shard_of.contains(name)) {
        return absl::DataLossError(
            absl::StrFormat("tensor '%s': expected in shard '%s' (per '%s'), but it is not there",
                            name, shard_name, index_path));
      }
    }
  }

  state->metadata = std::move(index.metadata);
  for (const SafetensorsFile& shard : state->shards) {
    state->metadata.insert(shard.metadata().begin(), shard.metadata().end());
  }
  return Checkpoint(std::move(state));
}

const std::string& Checkpoint::directory() const { return state_->directory; }

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(state_->shard_of.size());
  for (const auto& [name, unused] : state_->shard_of) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

size_t Checkpoint::num_tensors() const { return state_->shard_of.size(); }

const SafetensorsFile* Checkpoint::ShardOf(std::string_view name) const {
  const auto it = state_->shard_of.find(name);
  return it == state_->shard_of.end() ? nullptr : &state_->shards[it->second];
}

const SafetensorsTensorInfo* Checkpoint::Find(std::string_view name) const {
  const SafetensorsFile* shard = ShardOf(name);
  return shard == nullptr ? nullptr : shard->Find(name);
}

absl::StatusOr<Tensor> Checkpoint::Get(std::string_view name) const {
  const SafetensorsFile* shard = ShardOf(name);
  if (shard == nullptr) {
    return absl::NotFoundError(
        absl::StrFormat("tensor '%s': not found in checkpoint '%s'", name, state_->directory));
  }
  return shard->Get(name);
}

void Checkpoint::Release(std::string_view name) const {
  if (const SafetensorsFile* shard = ShardOf(name)) shard->Release(name);
}

absl::Status Checkpoint::ForEachTensor(const std::function<absl::Status(const Tensor&)>& fn) const {
  for (const SafetensorsFile& shard : state_->shards) GQ_RETURN_IF_ERROR(shard.ForEachTensor(fn));
  return absl::OkStatus();
}

std::map<std::string, std::string> Checkpoint::metadata() const { return state_->metadata; }

const std::vector<SafetensorsFile>& Checkpoint::shards() const { return state_->shards; }

}  // namespace gquant
