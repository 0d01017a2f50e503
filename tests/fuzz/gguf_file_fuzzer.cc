// Fuzzes GgufFile::Parse with whole files: header, metadata of every value
// type (nested arrays included) and tensor infos. On success it does what
// gquant-gguf and the model loader do next: reads every value through the
// typed accessors, looks keys and tensors up, decodes every tensor the
// library can dequantize, maps tensor names to HF, and reads the Gemma 4
// text config from the metadata (and, when that works, writes it as
// config.json and parses it back).
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "gquant/gemma4/config.h"
#include "gquant/gemma4/gguf_mapping.h"
#include "gquant/ggml_format.h"
#include "gquant/gguf.h"

namespace gquant::fuzz {
namespace {

// Touches a value the way a consumer would; returns the number of values seen.
size_t WalkValue(const GgufValue& value) {
  // Each accessor either succeeds on the matching type or says why not.
  (void)value.AsUint64();
  (void)value.AsInt64();
  (void)value.AsDouble();
  (void)value.AsBool();
  const absl::StatusOr<std::string_view> text = value.AsString();
  FUZZ_CHECK(text.ok() == (value.type() == GgufValueType::kString));
  const absl::StatusOr<std::span<const GgufValue>> array = value.AsArray();
  FUZZ_CHECK(array.ok() == (value.type() == GgufValueType::kArray));
  size_t seen = 1;
  if (array.ok()) {
    for (const GgufValue& element : *array) {
      FUZZ_CHECK(element.type() == value.array()->element_type);
      seen += WalkValue(element);
    }
  }
  return seen;
}

void WalkTensors(const GgufFile& file, std::span<const std::byte> bytes) {
  for (const GgufTensorInfo& info : file.tensors()) {
    FUZZ_CHECK(file.FindTensor(info.name) == &info);
    FUZZ_CHECK(!info.dims.empty() && info.dims.size() <= kGgufMaxDims);
    const absl::StatusOr<uint64_t> size = GgufTensorBytes(info.dims, info.type);
    FUZZ_CHECK(size.ok() && *size == info.num_bytes);
    FUZZ_CHECK(info.offset % file.alignment() == 0);
    const std::span<const std::byte> data = file.TensorData(info);
    FUZZ_CHECK(data.size() == info.num_bytes);
    FUZZ_CHECK(data.data() >= bytes.data() &&
               data.data() + data.size() <= bytes.data() + bytes.size());

    const GgmlTypeTraits* traits = FindGgmlType(info.type);
    FUZZ_CHECK(traits != nullptr);
    if (traits->dequantize_row != nullptr) {
      std::vector<float> values(data.size() / traits->block_bytes * traits->block_elements);
      FUZZ_CHECK(DequantizeGgml(traits->type, data, values).ok());
    }
    (void)gemma4::HfNameFromGguf(info.name);
  }
}

void ReadGemmaConfig(const GgufFile& file) {
  const absl::StatusOr<gemma4::TextConfig> config = gemma4::TextConfigFromGguf(file);
  if (!config.ok()) {
    CheckErrorNames(config.status(), "fuzz-input");
    return;
  }
  // The parsed config was validated, so it must survive config.json.
  const std::string json = gemma4::ConfigJsonFromTextConfig(*config);
  const absl::StatusOr<gemma4::Config> reread = gemma4::ParseConfigJson(json, "from-gguf");
  if (!reread.ok()) {
    std::fprintf(stderr, "config from GGUF does not read back: %s\n%s\n",
                 std::string(reread.status().message()).c_str(), json.c_str());
  }
  FUZZ_CHECK(reread.ok());
  FUZZ_CHECK(reread->text.num_hidden_layers == config->num_hidden_layers);
  FUZZ_CHECK(reread->text.layer_head_dim == config->layer_head_dim);
  (void)gemma4::CheckGgufRepresentable(*config);
  (void)gemma4::DescribeConfig(*reread);
}

}  // namespace
}  // namespace gquant::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace gquant;
  const std::span<const std::byte> bytes = fuzz::AsBytes(data, size);
  const absl::StatusOr<GgufFile> file = GgufFile::Parse(bytes, "fuzz-input");
  if (!file.ok()) {
    fuzz::CheckErrorNames(file.status(), "GGUF file 'fuzz-input'");
    return 0;
  }
  FUZZ_CHECK(file->data_start() <= size || file->tensors().empty());
  size_t values = 0;
  for (const auto& [key, value] : file->metadata()) {
    FUZZ_CHECK(file->Find(key) == &value);
    values += fuzz::WalkValue(value);
  }
  // Every value costs at least one byte of the file.
  FUZZ_CHECK(values <= size);
  (void)file->GetUint("general.alignment");
  (void)file->GetString("general.architecture");
  (void)file->GetFloat("gemma4.rope.freq_base");
  fuzz::WalkTensors(*file, bytes);
  fuzz::ReadGemmaConfig(*file);
  return 0;
}
