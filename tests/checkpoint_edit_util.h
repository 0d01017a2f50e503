// Editing a fixture's checkpoint for error tests: copy it with some tensors
// removed, renamed or reshaped, or its config.json changed.
#ifndef GQUANT_TESTS_CHECKPOINT_EDIT_UTIL_H_
#define GQUANT_TESTS_CHECKPOINT_EDIT_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "golden_util.h"
#include "gquant/dtype.h"
#include "gquant/safetensors.h"
#include "gquant/tensor.h"
#include "test_util.h"

namespace gquant::testing {

// Copies fixture `fixture`'s f32 checkpoint into `dir`, letting `edit` change
// its tensor list (views into the original file) and config.json text.
inline void WriteModified(const std::string& fixture, const TempDir& dir,
                          const std::function<void(std::vector<Tensor>&, std::string&)>& edit) {
  const std::string from = FixtureDir(fixture) + "/f32";
  auto file = SafetensorsFile::Open(from + "/model.safetensors");
  REQUIRE_OK(file);
  std::vector<Tensor> tensors;
  for (const SafetensorsTensorInfo& info : file->tensors()) {
    auto tensor = file->Get(info.name);
    REQUIRE_OK(tensor);
    tensors.push_back(*std::move(tensor));
  }
  std::ifstream in(from + "/config.json");
  std::string config((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  edit(tensors, config);
  REQUIRE_OK(WriteSafetensors(dir.File("model.safetensors"), tensors));
  std::ofstream(dir.File("config.json")) << config;
}

// A view of the leading elements of `t` under `name` with `shape`.
inline Tensor Renamed(const Tensor& t, const std::string& name, std::vector<int64_t> shape) {
  int64_t n = DTypeSize(t.dtype());
  for (int64_t d : shape) n *= d;
  REQUIRE(n <= static_cast<int64_t>(t.bytes().size()));
  auto keep = std::make_shared<Tensor>(t);
  auto view = Tensor::View(name, t.dtype(), std::move(shape), t.bytes().first(n), keep);
  REQUIRE_OK(view);
  return *std::move(view);
}

inline Tensor& Find(std::vector<Tensor>& tensors, const std::string& name) {
  const auto it = std::find_if(tensors.begin(), tensors.end(),
                               [&](const Tensor& t) { return t.name() == name; });
  REQUIRE(it != tensors.end());
  return *it;
}

inline void Erase(std::vector<Tensor>& tensors, const std::string& name) {
  tensors.erase(std::find_if(tensors.begin(), tensors.end(),
                             [&](const Tensor& t) { return t.name() == name; }));
}

}  // namespace gquant::testing

#endif  // GQUANT_TESTS_CHECKPOINT_EDIT_UTIL_H_
