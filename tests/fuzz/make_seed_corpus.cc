// Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/)
// with gquant's own writers, so the seeds are real files the project writes:
// small safetensors files of every dtype, quantized checkpoints of every
// storage kind, GGUF files with every metadata value type and the Gemma 4
// metadata of the tiny fixtures, ggml blocks of every unpackable type, and
// config.json files written from the fixtures' configs. Fixed seeds, so a
// re-run writes the same bytes.
//
// Usage: gquant_fuzz_make_corpus <corpus dir> <tests/data dir>
// (run_fuzzers.sh does not call it; the corpus is committed.)
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gquant/dtype.h"
#include "gquant/gemma4/config.h"
#include "gquant/gemma4/gguf_mapping.h"
#include "gquant/ggml_format.h"
#include "gquant/gguf.h"
#include "gquant/quantized_checkpoint.h"
#include "gquant/safetensors.h"
#include "gquant/tensor.h"

namespace gquant {
namespace {

namespace fs = std::filesystem;

void Check(const absl::Status& status) {
  if (!status.ok()) {
    std::fprintf(stderr, "make_seed_corpus: %s\n", status.ToString().c_str());
    std::exit(1);
  }
}
template <typename T>
T Check(absl::StatusOr<T> value) {
  Check(value.status());
  return *std::move(value);
}

void WriteBytes(const fs::path& path, std::span<const std::byte> bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::byte> ReadBytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> bytes(text.size());
  std::memcpy(bytes.data(), text.data(), text.size());
  return bytes;
}

std::mt19937 rng(20261123);

void FillRandom(std::span<std::byte> bytes) {
  for (std::byte& b : bytes) b = static_cast<std::byte>(rng() & 0xff);
}

// ---- safetensors ----

void SafetensorsSeeds(const fs::path& dir, const fs::path& data_dir) {
  // One tensor of every dtype, odd shapes, metadata.
  std::vector<Tensor> all;
  for (int d = 0; d < kNumDTypes; ++d) {
    const DType dtype = static_cast<DType>(d);
    Tensor t =
        Check(Tensor::Allocate(absl::StrCat("t.", std::string(DTypeName(dtype))), dtype, {2, 3}));
    FillRandom(t.mutable_bytes());
    all.push_back(t);
    Check(WriteSafetensors(
        (dir / absl::StrCat("one_", std::string(DTypeName(dtype)), ".safetensors")).string(),
        std::span<const Tensor>(&all.back(), 1)));
  }
  Check(WriteSafetensors((dir / "all_dtypes.safetensors").string(), all,
                         {{"format", "pt"}, {"note", "seed"}}));
  Check(WriteSafetensors((dir / "empty.safetensors").string(), {}));
  std::vector<Tensor> odd = {Check(Tensor::Allocate("scalar", DType::kF32, {})),
                             Check(Tensor::Allocate("zero_dim", DType::kBF16, {0, 7})),
                             Check(Tensor::Allocate("vec", DType::kU8, {5})),
                             Check(Tensor::Allocate("a/b..c", DType::kF16, {1, 1, 1, 3}))};
  Check(WriteSafetensors((dir / "odd_shapes.safetensors").string(), odd, {{"k", "v"}}));
  // The headers of the fixtures (the tensor bytes cut off): the JSON of real
  // checkpoints, which the fuzzer can then shrink into consistent files.
  for (const char* fixture : {"tiny-31b", "tiny-e2b", "tiny-moe"}) {
    const std::vector<std::byte> file =
        ReadBytes(data_dir / fixture / "bf16" / "model.safetensors");
    uint64_t header = 0;
    std::memcpy(&header, file.data(), 8);
    WriteBytes(dir / absl::StrCat(fixture, "_header.safetensors"),
               std::span(file).first(std::min<size_t>(file.size(), 8 + header)));
  }
}

// ---- quantized checkpoints ----

PackedWeight RandomPacked(const std::string& fqn, std::vector<int64_t> shape,
                          const QuantConfig& config, const StorageFormat& format) {
  PackedWeight packed(Check(QuantizedLayout::Create(fqn, std::move(shape), config, format)));
  const QuantizedLayout& l = packed.layout();
  const bool min_form = format.zero_form == ZeroForm::kMin;
  const bool int4 = config.bits == 4 && !min_form;
  for (int64_t m = 0; m < l.matrices(); ++m) {
    std::vector<int8_t> codes(l.rows() * l.cols());
    std::vector<float> scale(l.rows() * l.groups()), zero(l.rows() * l.groups());
    const int levels = 1 << config.bits;
    for (int8_t& c : codes) {
      const int code = static_cast<int>(rng() % levels);
      c = static_cast<int8_t>(min_form || int4 ? code : code - levels / 2);
    }
    for (float& s : scale) s = 0.001f * static_cast<float>(1 + rng() % 100);
    for (float& z : zero) {
      z = min_form ? 0.01f * static_cast<float>(rng() % 50)
                   : static_cast<float>(int4 ? static_cast<int>(rng() % 16)
                                             : static_cast<int>(rng() % 9) - 4);
    }
    Check(packed.Pack(m, 0, l.rows(), codes, scale, zero));
  }
  return packed;
}

void WriteQuantized(const fs::path& path, const std::vector<PackedWeight>& weights, bool plain) {
  std::vector<QuantizedCheckpointEntry> entries;
  for (const PackedWeight& w : weights) entries.push_back({w.layout().fqn(), w.layout()});
  if (plain) {
    entries.push_back({"model.norm.weight", std::nullopt, DType::kBF16, {16}});
  }
  auto writer = Check(QuantizedCheckpointWriter::Create(
      path.string(), entries, {{"gquant.recipe", R"({"name":"seed","rules":[]})"}}));
  for (const PackedWeight& w : weights) Check(writer->WritePacked(w));
  if (plain) {
    std::vector<std::byte> norm(32);
    FillRandom(norm);
    Check(writer->WritePlain("model.norm.weight", norm));
  }
  Check(writer->Commit());
}

void QuantizedSeeds(const fs::path& dir) {
  const StorageFormat bf16{}, f16{DType::kF16, ZeroForm::kZeroPoint},
      min_f16{DType::kF16, ZeroForm::kMin}, min_f32{DType::kF32, ZeroForm::kMin};
  struct Seed {
    const char* name;
    int bits;
    int group;
    bool symmetric;
    StorageFormat format;
    std::vector<int64_t> shape;
  };
  const Seed seeds[] = {
      {"int4_g32", 4, 32, false, bf16, {4, 64}},
      {"int4_sym_f16", 4, 32, true, f16, {3, 32}},
      {"int4_experts", 4, 32, false, bf16, {2, 3, 64}},
      {"int8_per_row", 8, kPerRowGroupSize, true, bf16, {4, 32}},
      {"int5_g16", 5, 16, false, bf16, {2, 32}},
      {"int6_experts", 6, 32, true, bf16, {2, 2, 32}},
      {"min4_f16", 4, 32, false, min_f16, {2, 64}},
      {"min5_f32", 5, 32, false, min_f32, {2, 32}},
      {"min6_f32_g16", 6, 16, false, min_f32, {3, 32}},
  };
  std::vector<PackedWeight> all;
  int layer = 0;
  for (const Seed& s : seeds) {
    const QuantConfig config{s.bits, s.group, s.symmetric, QuantMethod::kMinMax};
    const std::string fqn = absl::StrCat("model.layers.", layer++, ".mlp.down_proj.weight");
    PackedWeight w = RandomPacked(fqn, s.shape, config, s.format);
    WriteQuantized(dir / absl::StrCat(s.name, ".safetensors"), {w}, /*plain=*/false);
    all.push_back(std::move(w));
  }
  WriteQuantized(dir / "mixed.safetensors", all, /*plain=*/true);
}

// ---- GGUF ----

void GgufSeeds(const fs::path& dir, const fs::path& data_dir) {
  const std::vector<std::byte> tiny = ReadBytes(data_dir / "tiny.gguf");
  WriteBytes(dir / "tiny.gguf", tiny);

  // Every value type, arrays of each and an array of arrays; no tensors.
  {
    auto writer = Check(GgufWriter::Create((dir / "all_value_types.gguf").string()));
    writer->SetMetadata("u8", GgufValue(uint8_t{7}));
    writer->SetMetadata("i8", GgufValue(int8_t{-7}));
    writer->SetMetadata("u16", GgufValue(uint16_t{700}));
    writer->SetMetadata("i16", GgufValue(int16_t{-700}));
    writer->SetMetadata("u32", GgufValue(uint32_t{70000}));
    writer->SetMetadata("i32", GgufValue(int32_t{-70000}));
    writer->SetMetadata("f32", GgufValue(1.5f));
    writer->SetMetadata("bool", GgufValue(true));
    writer->SetMetadata("str", GgufValue("gemma4"));
    writer->SetMetadata("u64", GgufValue(uint64_t{1} << 40));
    writer->SetMetadata("i64", GgufValue(-(int64_t{1} << 40)));
    writer->SetMetadata("f64", GgufValue(2.25));
    writer->SetMetadata("arr.u8", GgufValue::ArrayOf<uint8_t>({1, 2, 3}));
    writer->SetMetadata("arr.str", GgufValue::ArrayOf<std::string>({"a", "", "bc"}));
    writer->SetMetadata("arr.f64", GgufValue::ArrayOf<double>({0.5, -1}));
    writer->SetMetadata("arr.bool", GgufValue::ArrayOf<bool>({true, false}));
    writer->SetMetadata("arr.arr", Check(GgufValue::MakeArray(GgufValueType::kArray,
                                                              {GgufValue::ArrayOf<int32_t>({1, 2}),
                                                               GgufValue::ArrayOf<int32_t>({3})})));
    Check(writer->Commit());
  }
  // One tensor of every type the library decodes, with a custom alignment.
  {
    auto writer = Check(GgufWriter::Create((dir / "all_tensor_types.gguf").string()));
    writer->SetMetadata("general.alignment", GgufValue(uint32_t{64}));
    std::vector<std::pair<std::string, std::vector<std::byte>>> payloads;
    for (const GgmlTypeTraits& t : kGgmlTypeTraits) {
      if (t.quantize_row_ref == nullptr) continue;
      const std::vector<int64_t> dims = {t.block_elements == 1 ? 8 : t.block_elements, 2};
      std::vector<float> values(dims[0] * dims[1]);
      std::normal_distribution<float> normal(0, 0.02f);
      for (float& v : values) v = normal(rng);
      std::vector<std::byte> blocks(Check(GgufTensorBytes(dims, static_cast<uint32_t>(t.type))));
      Check(QuantizeGgmlRef(t.type, values, blocks));
      const std::string name = absl::StrCat("t.", std::string(t.name));
      Check(writer->AddTensor(name, dims, static_cast<uint32_t>(t.type), blocks.size()));
      payloads.emplace_back(name, std::move(blocks));
    }
    for (const auto& [name, blocks] : payloads) Check(writer->WriteTensorData(name, blocks));
    Check(writer->Commit());
  }
  // The Gemma 4 metadata of the fixtures (TextConfigFromGguf's input).
  for (const char* fixture : {"tiny-31b", "tiny-e2b", "tiny-moe"}) {
    const gemma4::Config config = Check(gemma4::LoadConfig((data_dir / fixture / "bf16").string()));
    auto writer = Check(GgufWriter::Create((dir / absl::StrCat(fixture, "_meta.gguf")).string()));
    for (auto& [key, value] : gemma4::GgufMetadataFromTextConfig(config.text, fixture)) {
      writer->SetMetadata(key, value);
    }
    Check(writer->Commit());
  }
}

// ---- GGUF blocks for the unpacker: selector bytes, then blocks ----

void UnpackSeeds(const fs::path& dir) {
  // Indices into gguf_unpack_fuzzer.cc's kTypes.
  const GgmlType types[] = {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ5_0, GgmlType::kQ4_1,
                            GgmlType::kQ5_1, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K};
  for (size_t i = 0; i < std::size(types); ++i) {
    const GgmlTypeTraits& t = *FindGgmlType(static_cast<uint32_t>(types[i]));
    for (const bool experts : {false, true}) {
      const int64_t e = experts ? 2 : 1, n = 3, blocks_per_row = 2;
      std::vector<float> values(e * n * blocks_per_row * t.block_elements);
      std::normal_distribution<float> normal(0, 0.05f);
      for (float& v : values) v = normal(rng);
      std::vector<std::byte> blocks(e * n * blocks_per_row * t.block_bytes);
      Check(QuantizeGgmlRef(t.type, values, blocks));
      // kTypes index, mode (bit 0: experts), then E - 1 and N - 1 (the
      // fuzzer's selectors: E = 1 + byte % 3, N = 1 + byte % 8).
      std::vector<std::byte> input = {static_cast<std::byte>(i),
                                      static_cast<std::byte>(experts ? 1 : 0)};
      if (experts) input.push_back(static_cast<std::byte>(e - 1));
      input.push_back(static_cast<std::byte>(n - 1));
      input.insert(input.end(), blocks.begin(), blocks.end());
      WriteBytes(dir / absl::StrCat(std::string(t.name), experts ? "_experts" : "", ".bin"), input);
    }
  }
}

// ---- config.json written from the fixtures' configs ----

void ConfigSeeds(const fs::path& dir, const fs::path& data_dir) {
  for (const char* fixture : {"tiny-31b", "tiny-e2b", "tiny-moe"}) {
    const fs::path config = data_dir / fixture / "bf16" / "config.json";
    fs::copy_file(config, dir / absl::StrCat(fixture, ".json"),
                  fs::copy_options::overwrite_existing);
    const gemma4::Config parsed = Check(gemma4::LoadConfig(config.string()));
    const std::string written = gemma4::ConfigJsonFromTextConfig(parsed.text);
    std::ofstream(dir / absl::StrCat(fixture, "_written.json")) << written;
  }
}

}  // namespace
}  // namespace gquant

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <corpus dir> <tests/data dir>\n", argv[0]);
    return 2;
  }
  const fs::path corpus = argv[1], data = argv[2];
  for (const char* target :
       {"safetensors_header", "quantized_checkpoint", "gguf_file", "gguf_unpack", "config_json"}) {
    fs::create_directories(corpus / target);
  }
  gquant::SafetensorsSeeds(corpus / "safetensors_header", data);
  gquant::QuantizedSeeds(corpus / "quantized_checkpoint");
  gquant::GgufSeeds(corpus / "gguf_file", data);
  gquant::UnpackSeeds(corpus / "gguf_unpack");
  gquant::ConfigSeeds(corpus / "config_json", data);
  return 0;
}
