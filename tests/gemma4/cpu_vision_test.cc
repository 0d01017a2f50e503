// The CPU vision tower and embedder against Hugging Face's goldens
// (tests/data/make_fixtures.py make_vision_fixture): tiny-31b-vision
// (standardize, no clipping) and tiny-e2b-vision (clipped linears whose bounds
// really clip, no standardize); then the errors on bad checkpoints and inputs.
//
// Error norm ("relative error", golden_util.h MaxRelativeError): for each row,
// ||ours - golden||_inf / ||golden||_inf, then the maximum over rows.
#include "gquant/gemma4/cpu_vision.h"

#include <algorithm>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint_edit_util.h"
#include "golden_util.h"
#include "gquant/safetensors.h"
#include "gquant/tensor.h"
#include "test_util.h"

namespace gquant::gemma4 {
namespace {

using gquant::testing::Erase;
using gquant::testing::Find;
using gquant::testing::FixtureDir;
using gquant::testing::MaxRelativeError;
using gquant::testing::ReadBytes;
using gquant::testing::ReadDoubles;
using gquant::testing::ReadIds;
using gquant::testing::Renamed;
using gquant::testing::TempDir;
using gquant::testing::WriteModified;

// The acceptance bound against HF's float32 and float64 outputs. Our
// float32 path follows HF's order of operations up to the order of sums.
// Measured: at most 2.4e-5 (tiny-e2b-vision, last encoder state vs HF f32;
// the patch embeddings are closer to an exact float64 sum than HF's own),
// and 3e-6 to 5e-6 on soft tokens and image embeddings against either
// golden, the level of HF float32 against float64 itself (4e-6).
constexpr double kBound = 1e-4;

std::unique_ptr<WeightSource> Open(const std::string& path) {
  auto source = OpenWeightSource(path);
  REQUIRE_OK(source);
  return *std::move(source);
}

std::unique_ptr<CpuVisionModel> Create(const WeightSource& source, int threads = 2) {
  auto model = CpuVisionModel::Create(source, {.threads = threads});
  REQUIRE_OK(model);
  return *std::move(model);
}

// The golden image as the tower takes it: HF's processor output (pixel
// values = byte * float(1/255) as HF computes them, positions (x, y), -1 pads).
VisionInput GoldenInput(const SafetensorsFile& golden, const VisionConfig& config) {
  const std::vector<uint8_t> bytes = ReadBytes(golden, "pixel_values_u8");
  const std::vector<int> positions = ReadIds(golden, "image_position_ids");
  std::vector<float> pixels;
  for (uint8_t b : bytes) pixels.push_back(static_cast<float>(b) * static_cast<float>(1.0 / 255));
  auto input =
      VisionInputFromPatches(std::move(pixels), {positions.begin(), positions.end()}, config);
  REQUIRE_OK(input);
  return *std::move(input);
}

TEST_CASE("CPU vision tower matches the HF goldens", "[vision]") {
  for (const std::string fixture : {"tiny-31b-vision", "tiny-e2b-vision"}) {
    INFO(fixture);
    auto golden = SafetensorsFile::Open(FixtureDir(fixture) + "/golden.safetensors");
    REQUIRE_OK(golden);
    const auto source = Open(FixtureDir(fixture) + "/f32");
    const auto model = Create(*source);
    const VisionConfig& c = model->config();
    const int64_t hv = c.hidden_size, ht = model->text_hidden_size();
    CHECK(c.standardize == (fixture == "tiny-31b-vision"));
    CHECK(c.use_clipped_linears == (fixture == "tiny-e2b-vision"));
    const VisionInput input = GoldenInput(*golden, c);
    REQUIRE(input.max_patches == 630);
    REQUIRE(input.num_soft_tokens == 60);

    // Patch embeddings and each layer's output, padding rows included.
    auto states = model->EncoderStates(input);
    REQUIRE_OK(states);
    const std::vector<double> encoder = ReadDoubles(*golden, "vision_encoder_f32");
    REQUIRE(states->size() == encoder.size());
    REQUIRE(static_cast<int64_t>(encoder.size()) == (c.num_hidden_layers + 1) * 630 * hv);
    for (int layer = 0; layer <= c.num_hidden_layers; ++layer) {
      const size_t n = 630 * hv;
      const double err = MaxRelativeError(std::span(*states).subspan(layer * n, n),
                                          std::span(encoder).subspan(layer * n, n), hv);
      INFO("encoder state " << layer << " vs HF f32: " << err);
      CHECK(err <= kBound);
    }

    auto soft = model->SoftTokens(input);
    REQUIRE_OK(soft);
    REQUIRE(static_cast<int64_t>(soft->size()) == 60 * hv);
    for (const char* name : {"vision_soft_tokens_f32", "vision_soft_tokens_f64"}) {
      const double err = MaxRelativeError(*soft, ReadDoubles(*golden, name), hv);
      INFO("soft tokens vs " << name << ": " << err);
      CHECK(err <= kBound);
    }

    auto image = model->EncodeImage(input);
    REQUIRE_OK(image);
    REQUIRE(static_cast<int64_t>(image->size()) == 60 * ht);
    for (const char* name : {"image_embeddings_f32", "image_embeddings_f64"}) {
      const double err = MaxRelativeError(*image, ReadDoubles(*golden, name), ht);
      INFO("image embeddings vs " << name << ": " << err);
      CHECK(err <= kBound);
    }
    // EncodeImage is SoftTokens then Embed.
    auto embedded = model->Embed(*soft, 60);
    REQUIRE_OK(embedded);
    CHECK(*embedded == *image);

    // The embedder alone, on HF's own float32 soft tokens.
    const std::vector<double> hf_soft = ReadDoubles(*golden, "vision_soft_tokens_f32");
    const std::vector<float> hf_soft_f(hf_soft.begin(), hf_soft.end());
    auto hf_embedded = model->Embed(hf_soft_f, 60);
    REQUIRE_OK(hf_embedded);
    const double embed_err =
        MaxRelativeError(*hf_embedded, ReadDoubles(*golden, "image_embeddings_f32"), ht);
    INFO("Embed(HF soft tokens) vs image_embeddings_f32: " << embed_err);
    CHECK(embed_err <= kBound);

    // The thread count does not change a bit.
    auto single = Create(*source, 1)->SoftTokens(input);
    REQUIRE_OK(single);
    CHECK(*single == *soft);
  }
}

TEST_CASE("CPU vision tower: the E2B goldens exercise the clip bounds", "[vision]") {
  // The same checkpoint with use_clipped_linears off (HF then ignores the
  // bounds) must miss the goldens: the fixture's bounds really clip.
  TempDir dir;
  WriteModified("tiny-e2b-vision", dir, [](std::vector<Tensor>&, std::string& config) {
    const std::string from = "\"use_clipped_linears\": true";
    REQUIRE(config.find(from) != std::string::npos);
    config.replace(config.find(from), from.size(), "\"use_clipped_linears\": false");
  });
  auto golden = SafetensorsFile::Open(FixtureDir("tiny-e2b-vision") + "/golden.safetensors");
  REQUIRE_OK(golden);
  const auto source = Open(dir.path().string());
  const auto model = Create(*source);
  REQUIRE_FALSE(model->config().use_clipped_linears);
  auto soft = model->SoftTokens(GoldenInput(*golden, model->config()));
  REQUIRE_OK(soft);
  const double err = MaxRelativeError(*soft, ReadDoubles(*golden, "vision_soft_tokens_f64"),
                                      model->config().hidden_size);
  INFO("unclipped soft tokens vs vision_soft_tokens_f64: " << err);
  CHECK(err > 1e-2);
}

std::string CreateError(const std::string& dir, absl::StatusCode code) {
  const auto source = Open(dir);
  auto model = CpuVisionModel::Create(*source, {});
  REQUIRE_STATUS_IS(model, code);
  return std::string(model.status().message());
}

TEST_CASE("CPU vision tower refuses sources it cannot run", "[vision]") {
  SECTION("no vision_config") {
    const auto source = Open(FixtureDir("tiny-31b") + "/f32");
    REQUIRE_FALSE(source->config().vision.has_value());
    REQUIRE_STATUS_IS(CpuVisionModel::Create(*source, {}), absl::StatusCode::kFailedPrecondition);
  }
  SECTION("missing and mis-shaped weights, listed together") {
    TempDir dir;
    WriteModified("tiny-e2b-vision", dir, [](std::vector<Tensor>& t, std::string&) {
      Erase(t, "model.vision_tower.encoder.layers.1.mlp.up_proj.output_max");
      Erase(t, "model.embed_vision.embedding_projection.weight");
      Tensor& norm = Find(t, "model.vision_tower.encoder.layers.0.self_attn.q_norm.weight");
      norm = Renamed(norm, norm.name(), {8});
    });
    const std::string message =
        CreateError(dir.path().string(), absl::StatusCode::kInvalidArgument);
    INFO(message);
    CHECK(message.find("2 missing: vision_tower.encoder.layers.1.mlp.up_proj.output_max, "
                       "embed_vision.embedding_projection.weight") != std::string::npos);
    CHECK(message.find("vision_tower.encoder.layers.0.self_attn.q_norm.weight: expected [16], "
                       "but got [8]") != std::string::npos);
  }
  SECTION("standardize needs std_bias and std_scale") {
    TempDir dir;
    WriteModified("tiny-31b-vision", dir, [](std::vector<Tensor>& t, std::string&) {
      Erase(t, "model.vision_tower.std_scale");
    });
    const std::string message =
        CreateError(dir.path().string(), absl::StatusCode::kInvalidArgument);
    CHECK(message.find("missing: vision_tower.std_scale") != std::string::npos);
  }
  SECTION("clip bounds are required exactly when use_clipped_linears") {
    TempDir dir;
    WriteModified("tiny-31b-vision", dir, [](std::vector<Tensor>& t, std::string& config) {
      const std::string from = "\"use_clipped_linears\": false";
      REQUIRE(config.find(from) != std::string::npos);
      config.replace(config.find(from), from.size(), "\"use_clipped_linears\": true");
      (void)t;
    });
    const std::string message =
        CreateError(dir.path().string(), absl::StatusCode::kInvalidArgument);
    // 7 linears x 4 bounds x 2 layers.
    CHECK(message.find("56 missing: vision_tower.encoder.layers.0.self_attn.q_proj.input_min") !=
          std::string::npos);
  }
  SECTION("an activation other than gelu_pytorch_tanh") {
    TempDir dir;
    WriteModified("tiny-31b-vision", dir, [](std::vector<Tensor>&, std::string& config) {
      // The vision config's entry comes after the text config's.
      const std::string from = "\"hidden_activation\": \"gelu_pytorch_tanh\"";
      const size_t at = config.rfind(from);
      REQUIRE(at != std::string::npos);
      config.replace(at, from.size(), "\"hidden_activation\": \"relu\"");
    });
    CreateError(dir.path().string(), absl::StatusCode::kUnimplemented);
  }
}

TEST_CASE("CPU vision tower refuses malformed inputs", "[vision]") {
  auto golden = SafetensorsFile::Open(FixtureDir("tiny-e2b-vision") + "/golden.safetensors");
  REQUIRE_OK(golden);
  const auto source = Open(FixtureDir("tiny-e2b-vision") + "/f32");
  const auto model = Create(*source);
  const VisionInput good = GoldenInput(*golden, model->config());
  REQUIRE_OK(model->SoftTokens(good));

  // Each edit must come back as InvalidArgument from every entry point,
  // never a crash.
  auto refused = [&](const std::function<void(VisionInput&)>& edit, const std::string& expect) {
    VisionInput input = good;
    edit(input);
    for (int call = 0; call < 3; ++call) {
      const absl::Status status = call == 0   ? model->EncoderStates(input).status()
                                  : call == 1 ? model->SoftTokens(input).status()
                                              : model->EncodeImage(input).status();
      INFO(status.ToString());
      CHECK(status.code() == absl::StatusCode::kInvalidArgument);
      CHECK(status.message().find(expect) != std::string::npos);
    }
  };
  // Rows of 3 * 14^2 values, as for a 14-pixel patch.
  refused([](VisionInput& in) { in.pixel_values.resize(in.max_patches * 3 * 14 * 14); },
          "pixel_values");
  refused([](VisionInput& in) { in.patch_size = 14; }, "patch_size");
  refused([](VisionInput& in) { in.pooling_kernel_size = 2; }, "pooling_kernel_size");
  refused([](VisionInput& in) { in.positions.pop_back(); }, "positions");
  refused([](VisionInput& in) { in.max_patches = 0; }, "max_patches");
  refused(
      [](VisionInput& in) {
        in.max_patches -= 3;  // not a multiple of 9
        in.pixel_values.resize(in.max_patches * 768);
        in.positions.resize(in.max_patches * 2);
      },
      "max_patches");
  // position_embedding_size is 64 in the fixture.
  refused([](VisionInput& in) { in.positions[2 * 5] = 64; }, "position_embedding_size");
  refused([](VisionInput& in) { in.positions[2 * 5 + 1] = 1 << 30; }, "position_embedding_size");
  refused([](VisionInput& in) { in.positions[2 * 5 + 1] = -1; }, "(-1, -1)");
  refused([](VisionInput& in) { std::fill(in.positions.begin(), in.positions.end(), -1); },
          "no real patches");
  // A patch far below the grid pools into a window past the soft tokens.
  refused([](VisionInput& in) { in.positions[2 * 5 + 1] = 63; }, "pooling window");

  REQUIRE_STATUS_IS(model->Embed(std::vector<float>(10), 1), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(model->Embed(std::vector<float>(64), -2), absl::StatusCode::kInvalidArgument);
  auto none = model->Embed({}, 0);
  REQUIRE_OK(none);
  CHECK(none->empty());
}

}  // namespace
}  // namespace gquant::gemma4
