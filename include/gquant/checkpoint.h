// A Hugging Face safetensors checkpoint: one file, or shards listed by an
// index, seen as one set of uniquely named tensors.
//
// Index file (model.safetensors.index.json):
//   {"metadata": {"total_size": 123}, "weight_map": {"<tensor>": "<shard file>", ...}}
// Shard names are plain file names in the same directory.
#ifndef GQUANT_CHECKPOINT_H_
#define GQUANT_CHECKPOINT_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gquant/safetensors.h"
#include "gquant/tensor.h"

namespace gquant {

inline constexpr std::string_view kSafetensorsIndexFile = "model.safetensors.index.json";
inline constexpr std::string_view kSafetensorsSingleFile = "model.safetensors";

// Copies are cheap and share the open shards; immutable after Open, so safe
// to use from several threads.
class Checkpoint {
 public:
  // Opens `path`: a directory holding model.safetensors (preferred when both
  // exist, as in transformers) or model.safetensors.index.json, or a path to
  // a single .safetensors file. Every shard is opened and validated now.
  // Returns
  //   NotFound         `path`, the directory's checkpoint files or a shard do
  //                    not exist
  //   InvalidArgument  a shard name in the index is not a plain file name
  //                    (empty, contains '/', '\\' or "..", or is absolute)
  //   DataLoss         the index is not a JSON object with a "weight_map"
  //                    object of string -> string (or repeats a key); a
  //                    weight_map tensor is missing from its shard; a tensor
  //                    is in two shards, or in a shard but not in weight_map
  //   and the codes of SafetensorsFile::Open for each shard (messages name it).
  static absl::StatusOr<Checkpoint> Open(const std::string& path);

  // The directory that holds the checkpoint files.
  const std::string& directory() const;

  // All tensor names, sorted.
  std::vector<std::string> TensorNames() const;
  size_t num_tensors() const;

  // nullptr if there is no such tensor. The offsets are relative to its shard.
  const SafetensorsTensorInfo* Find(std::string_view name) const;

  // The shard that holds `name`, or nullptr.
  const SafetensorsFile* ShardOf(std::string_view name) const;

  // See SafetensorsFile::Get. Returns NotFound (naming the checkpoint).
  absl::StatusOr<Tensor> Get(std::string_view name) const;

  // Streams every tensor once, shard by shard (shards sorted by file name),
  // each in file order; see SafetensorsFile::ForEachTensor.
  absl::Status ForEachTensor(const std::function<absl::Status(const Tensor&)>& fn) const;
  // See SafetensorsFile::Release.
  void Release(std::string_view name) const;

  // String values of the index's "metadata" object (non-strings such as
  // total_size are skipped), then each shard's __metadata__ in shard order;
  // on a repeated key the first value wins.
  std::map<std::string, std::string> metadata() const;

  // Shards sorted by file name (one element for a single-file checkpoint).
  const std::vector<SafetensorsFile>& shards() const;

 private:
  struct State;
  explicit Checkpoint(std::shared_ptr<const State> state) : state_(std::move(state)) {}

  std::shared_ptr<const State> state_;
};

}  // namespace gquant

#endif  // GQUANT_CHECKPOINT_H_
