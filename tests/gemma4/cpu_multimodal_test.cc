// The CPU reference forward on image prompts against Hugging Face's goldens
// (tests/data/tiny-{31b,e2b}-vision, make_fixtures.py make_vision_fixture):
// the image's embedder rows replace its placeholder tokens (spec §5.5), the
// 31B-style model lets one image's tokens see each other on sliding layers,
// and the E2B-style one takes the pad id's per-layer embeddings there.
//
// The text side is checked with HF's own image rows (image_embeddings_f64),
// so a mismatch here is the merge or the mask, not the vision tower; the end
// to end test from the PNG lives in cpu_vision_test.cc.
//
// Error norm ("relative error"): per position ||ours - golden||_inf /
// ||golden||_inf over the vocabulary, then the maximum over positions.
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "golden_util.h"
#include "gquant/gemma4/cpu_model.h"
#include "gquant/gemma4/image_prompt.h"
#include "gquant/safetensors.h"
#include "test_util.h"

namespace gquant::gemma4 {
namespace {

using gquant::testing::FixtureDir;
using gquant::testing::MaxRelativeError;

using MultimodalGolden = gquant::testing::ModelGolden;

MultimodalGolden ReadMultimodalGolden(const std::string& fixture) {
  MultimodalGolden g = gquant::testing::ReadModelGolden(fixture);
  REQUIRE(!g.image_rows.empty());
  return g;
}

std::unique_ptr<CpuModel> LoadModel(const std::string& fixture) {
  auto model = CpuModel::Load(FixtureDir(fixture) + "/f32", {});
  REQUIRE_OK(model);
  return *std::move(model);
}

int ImageToken(const CpuModel& model) {
  REQUIRE(model.source().config().image_token_id.has_value());
  return *model.source().config().image_token_id;
}

std::vector<float> Prefill(const CpuModel& model, const MultimodalGolden& g, int chunk) {
  KvCache cache = model.NewCache(static_cast<int64_t>(g.input_ids.size()), chunk);
  auto logits = model.Prefill(cache, g.input_ids, chunk, g.image_rows);
  REQUIRE_OK(logits);
  return *std::move(logits);
}

TEST_CASE("CPU multimodal forward: prefill logits and hidden states match HF", "[gemma4_model]") {
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b-vision", "tiny-e2b-vision");
  INFO(fixture);
  const MultimodalGolden g = ReadMultimodalGolden(fixture);
  auto model = LoadModel(fixture);
  const TextConfig& c = model->plan().config;
  const int64_t t = g.input_ids.size(), h = c.hidden_size;
  const int64_t images = std::count(g.input_ids.begin(), g.input_ids.end(), ImageToken(*model));
  REQUIRE(images * h == static_cast<int64_t>(g.image_rows.size()));
  REQUIRE(images > c.sliding_window);  // an image wider than the window: both mask rules matter

  auto hidden = model->HiddenStates(g.input_ids, g.image_rows);
  REQUIRE_OK(hidden);
  for (int64_t l = 0; l <= c.num_hidden_layers; ++l) {
    const double err = MaxRelativeError(std::span(*hidden).subspan(l * t * h, t * h),
                                        std::span(g.hidden).subspan(l * t * h, t * h), h);
    INFO("hidden state " << l << ": relative error " << err);
    CHECK(err <= 1e-4);  // float32 against float64 through a few layers
  }
  const std::vector<float> logits = Prefill(*model, g, static_cast<int>(t));
  const double err = MaxRelativeError(logits, g.prefill, c.vocab_size);
  INFO("prefill logits: relative error " << err);
  CHECK(err <= 1e-4);
}

TEST_CASE("CPU multimodal forward: chunked prefill keeps images whole and matches one shot",
          "[gemma4_model]") {
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b-vision", "tiny-e2b-vision");
  INFO(fixture);
  const MultimodalGolden g = ReadMultimodalGolden(fixture);
  auto model = LoadModel(fixture);
  const int t = static_cast<int>(g.input_ids.size());
  const std::vector<float> one_shot = Prefill(*model, g, t);
  // 64 holds the 60-token image, but not with the 5 tokens before it: the
  // first chunk ends before the image. 61 and 66 likewise, 5 splits the text
  // around it (the E2B model, causal, also splits the image itself).
  for (int chunk : {64, 61, 66, 70}) {
    INFO("chunk " << chunk);
    CHECK(Prefill(*model, g, chunk) == one_shot);
  }
  if (fixture == "tiny-e2b-vision") {
    CHECK(Prefill(*model, g, 5) == one_shot);  // causal: an image may be split
  } else {
    KvCache cache = model->NewCache(t, 5);
    auto too_small = model->Prefill(cache, g.input_ids, 5, g.image_rows);
    REQUIRE_STATUS_IS(too_small, absl::StatusCode::kInvalidArgument);
    CHECK(cache.length() == 0);  // refused before any work
  }
}

TEST_CASE("CPU multimodal forward: greedy and forced decoding after an image match HF",
          "[gemma4_model]") {
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b-vision", "tiny-e2b-vision");
  INFO(fixture);
  const MultimodalGolden g = ReadMultimodalGolden(fixture);
  auto model = LoadModel(fixture);
  const int64_t v = model->plan().config.vocab_size;
  const int t = static_cast<int>(g.input_ids.size());
  for (const bool greedy : {true, false}) {
    INFO((greedy ? "greedy" : "forced"));
    const std::vector<int>& tokens = greedy ? g.decode_tokens : g.forced_tokens;
    const std::vector<double>& golden = greedy ? g.decode : g.forced;
    KvCache cache = model->NewCache(t + static_cast<int64_t>(tokens.size()), t);
    auto prompt = model->Prefill(cache, g.input_ids, t, g.image_rows);
    REQUIRE_OK(prompt);
    std::vector<float> last(prompt->end() - v, prompt->end());
    double worst = 0;
    for (size_t s = 0; s < tokens.size(); ++s) {
      if (greedy) {
        INFO("step " << s);
        CHECK(std::max_element(last.begin(), last.end()) - last.begin() == tokens[s]);
      }
      auto step = model->Forward(cache, std::span(&tokens[s], 1));
      REQUIRE_OK(step);
      worst = std::max(worst, MaxRelativeError(*step, std::span(golden).subspan(s * v, v), v));
      last = *std::move(step);
    }
    INFO("decode logits: relative error " << worst);
    CHECK(worst <= 1e-4);
  }
}

TEST_CASE("CPU multimodal forward: image rows must match the placeholders", "[gemma4_model]") {
  const MultimodalGolden g = ReadMultimodalGolden("tiny-31b-vision");
  auto model = LoadModel("tiny-31b-vision");
  const int t = static_cast<int>(g.input_ids.size());
  const int64_t h = model->plan().config.hidden_size;
  KvCache cache = model->NewCache(t, t);
  // No rows, one row short, one row too many.
  for (const int64_t values : {int64_t{0}, static_cast<int64_t>(g.image_rows.size()) - h,
                               static_cast<int64_t>(g.image_rows.size()) + h}) {
    INFO("values " << values);
    std::vector<float> rows(values, 0.5f);
    std::copy_n(g.image_rows.begin(), std::min<int64_t>(values, g.image_rows.size()), rows.begin());
    REQUIRE_STATUS_IS(model->Forward(cache, g.input_ids, rows), absl::StatusCode::kInvalidArgument);
    REQUIRE_STATUS_IS(model->Prefill(cache, g.input_ids, t, rows),
                      absl::StatusCode::kInvalidArgument);
    CHECK(cache.length() == 0);
  }
  // Rows without placeholders (a text-only model has none).
  auto text = CpuModel::Load(FixtureDir("tiny-31b") + "/f32", {});
  REQUIRE_OK(text);
  KvCache text_cache = (*text)->NewCache(8, 8);
  const std::vector<int> ids = {2, 10, 11};
  REQUIRE_STATUS_IS((*text)->Forward(text_cache, ids, std::vector<float>(h, 1.0f)),
                    absl::StatusCode::kInvalidArgument);

  // With bidirectional image attention, an image cut across two calls is refused.
  const auto first_image =
      std::find(g.input_ids.begin(), g.input_ids.end(), ImageToken(*model)) - g.input_ids.begin();
  const std::span<const int> ids_span(g.input_ids);
  auto head =
      model->Forward(cache, ids_span.first(first_image + 2), std::span(g.image_rows).first(2 * h));
  REQUIRE_OK(head);
  auto rest = model->Forward(cache, ids_span.subspan(first_image + 2, 4),
                             std::span(g.image_rows).subspan(2 * h, 4 * h));
  REQUIRE_STATUS_IS(rest, absl::StatusCode::kInvalidArgument);
  CHECK(cache.length() == first_image + 2);
}

TEST_CASE("Image prompts: each placeholder becomes BOI, N placeholders, EOI", "[gemma4_model]") {
  Config config;
  config.boi_token_id = 500;
  config.image_token_id = 501;
  config.eoi_token_id = 502;
  const std::vector<int> prompt = {2, 7, 501, 8, 501, 9};
  const std::vector<int> counts = {2, 3};
  auto expanded = ExpandImagePlaceholders(prompt, config, counts);
  REQUIRE_OK(expanded);
  CHECK(*expanded == std::vector<int>{2, 7, 500, 501, 501, 502, 8, 500, 501, 501, 501, 502, 9});
  // The golden prompt is this expansion of its own collapsed form.
  const MultimodalGolden g = ReadMultimodalGolden("tiny-31b-vision");
  auto model = LoadModel("tiny-31b-vision");
  const Config& real = model->source().config();
  std::vector<int> collapsed;
  for (size_t i = 0; i < g.input_ids.size(); ++i) {
    const int id = g.input_ids[i];
    if (id == *real.boi_token_id || id == *real.eoi_token_id) continue;
    if (id == *real.image_token_id && !collapsed.empty() && collapsed.back() == id) continue;
    collapsed.push_back(id);
  }
  const int soft = static_cast<int>(g.image_rows.size() / model->plan().config.hidden_size);
  auto again = ExpandImagePlaceholders(collapsed, real, std::vector<int>{soft});
  REQUIRE_OK(again);
  CHECK(*again == g.input_ids);

  REQUIRE_STATUS_IS(ExpandImagePlaceholders(prompt, config, std::vector<int>{2}),
                    absl::StatusCode::kInvalidArgument);  // two placeholders, one image
  REQUIRE_STATUS_IS(ExpandImagePlaceholders(prompt, config, std::vector<int>{2, 0}),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(ExpandImagePlaceholders(prompt, Config{}, counts),
                    absl::StatusCode::kInvalidArgument);  // text-only: no ids
}

}  // namespace
}  // namespace gquant::gemma4
