// gquant-generate: generate token ids with the CPU reference model.
//
//   gquant-generate MODEL_PATH --prompt="2 45 99" | --prompt-file=FILE
//       [--max-new-tokens=N] [--temperature=T --top-k=K --top-p=P --seed=S]
//       [--chunk=N] [--threads=N]
//
// MODEL_PATH is anything CpuModel::Load opens: a Hugging Face checkpoint
// directory (config.json beside the weights), a gquant quantized checkpoint,
// or a .gguf file. Prompts are token ids (no tokenizer here), separated by
// spaces or commas; a prompt file holds one prompt per line, and each is
// generated in turn. Generation stops after N tokens or at one of the
// config's eos ids (printed as the last id). The generated ids go to stdout,
// one line per prompt; timings go to stderr.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gquant/gemma4/cpu_model.h"
#include "gquant/gemma4/quality.h"
#include "gquant/sampler.h"
#include "gquant/status.h"
#include "tools/flag_spelling.h"

ABSL_FLAG(std::string, prompt, "", "Prompt token ids, e.g. \"2 45 99\"");
ABSL_FLAG(std::string, prompt_file, "", "File of prompts, one line of token ids each");
ABSL_FLAG(int, max_new_tokens, 32, "Tokens to generate per prompt (fewer at an eos id)");
ABSL_FLAG(float, temperature, 0.0f, "Sampling temperature (0: greedy)");
ABSL_FLAG(int, top_k, 0, "Keep the K most likely tokens (0: all)");
ABSL_FLAG(float, top_p, 1.0f, "Keep the smallest set of tokens with this much probability");
ABSL_FLAG(uint64_t, seed, 0, "Sampler seed");
ABSL_FLAG(int, chunk, 512, "Prefill chunk size in tokens");
ABSL_FLAG(int, threads, 0, "Worker threads (0: all hardware threads)");

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// Prefills `prompt`, then samples and decodes until max_new_tokens or an eos
// id; prints the ids (stdout) and the rates (stderr).
absl::Status Generate(const gquant::gemma4::CpuModel& model, gquant::Sampler& sampler,
                      const std::vector<int>& prompt, int max_new_tokens, int chunk) {
  const std::vector<int>& eos = model.source().config().eos_token_ids;
  const int vocab = model.source().config().text.vocab_size;
  gquant::gemma4::KvCache cache =
      model.NewCache(static_cast<int64_t>(prompt.size()) + max_new_tokens, chunk);

  const Clock::time_point prefill_start = Clock::now();
  GQ_ASSIGN_OR_RETURN(std::vector<float> logits, model.Prefill(cache, prompt, chunk));
  const double prefill_s = Seconds(prefill_start);
  if (logits.size() != prompt.size() * vocab) {
    return absl::InternalError(absl::StrFormat("Prefill: expected %d x %d logits, but got %d",
                                               prompt.size(), vocab, logits.size()));
  }

  std::vector<int> generated;
  bool stopped_at_eos = false;
  const Clock::time_point decode_start = Clock::now();
  std::span<const float> last(logits.data() + logits.size() - vocab, vocab);
  while (static_cast<int>(generated.size()) < max_new_tokens) {
    GQ_ASSIGN_OR_RETURN(const int token, sampler.Sample(last));
    generated.push_back(token);
    if (std::find(eos.begin(), eos.end(), token) != eos.end()) {
      stopped_at_eos = true;
      break;
    }
    if (static_cast<int>(generated.size()) == max_new_tokens) break;
    const int step[] = {token};
    GQ_ASSIGN_OR_RETURN(logits, model.Forward(cache, step));
    last = std::span<const float>(logits.data(), vocab);
  }
  // Decode rate: Forward calls after the prefill (the first token comes from
  // the prefill's logits).
  const double decode_s = Seconds(decode_start);
  const int decode_steps = static_cast<int>(generated.size()) - 1;

  std::printf("%s\n", absl::StrJoin(generated, " ").c_str());
  std::fflush(stdout);
  std::fprintf(stderr,
               "prompt %zu tokens, prefill %.1f tokens/s; generated %zu tokens, decode %.1f "
               "tokens/s%s\n",
               prompt.size(), prompt.size() / std::max(prefill_s, 1e-9), generated.size(),
               decode_steps > 0 ? decode_steps / std::max(decode_s, 1e-9) : 0.0,
               stopped_at_eos ? "; stopped at eos" : "");
  return absl::OkStatus();
}

absl::Status Run(const std::string& path) {
  const std::string prompt = absl::GetFlag(FLAGS_prompt);
  const std::string prompt_file = absl::GetFlag(FLAGS_prompt_file);
  if (prompt.empty() == prompt_file.empty()) {
    return absl::InvalidArgumentError("expected exactly one of --prompt and --prompt-file");
  }
  std::vector<std::vector<int>> prompts;
  if (!prompt.empty()) {
    absl::StatusOr<std::vector<int>> ids = gquant::gemma4::ParsePromptIds(prompt);
    if (!ids.ok()) return gquant::Annotate(ids.status(), "--prompt");
    prompts.push_back(*std::move(ids));
  } else {
    GQ_ASSIGN_OR_RETURN(prompts, gquant::gemma4::ReadPromptFile(prompt_file));
  }
  const int max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  const int chunk = absl::GetFlag(FLAGS_chunk);
  if (max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--max-new-tokens: expected >= 1, but got %d", max_new_tokens));
  }
  if (chunk < 1) {
    return absl::InvalidArgumentError(absl::StrFormat("--chunk: expected >= 1, but got %d", chunk));
  }
  // The sampler's config errors come before the (slow) model load.
  GQ_ASSIGN_OR_RETURN(
      gquant::Sampler sampler,
      gquant::Sampler::Create({absl::GetFlag(FLAGS_temperature), absl::GetFlag(FLAGS_top_k),
                               absl::GetFlag(FLAGS_top_p), absl::GetFlag(FLAGS_seed)}));

  const Clock::time_point load_start = Clock::now();
  GQ_ASSIGN_OR_RETURN(
      const std::unique_ptr<gquant::gemma4::CpuModel> model,
      gquant::gemma4::CpuModel::Load(path, {.threads = absl::GetFlag(FLAGS_threads)}));
  std::fprintf(stderr, "loaded %s in %.2f s\n", model->source().description().c_str(),
               Seconds(load_start));
  for (const std::vector<int>& ids : prompts) {
    GQ_RETURN_IF_ERROR(Generate(*model, sampler, ids, max_new_tokens, chunk));
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  gquant::tools::DashesToUnderscoresInFlagNames(argc, argv);
  absl::SetProgramUsageMessage(
      "gquant-generate MODEL_PATH --prompt=\"2 45 99\" | --prompt-file=FILE "
      "[--max-new-tokens=N] [--temperature=T] [--top-k=K] [--top-p=P] [--seed=S] [--chunk=N] "
      "[--threads=N]");
  const std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    std::fprintf(stderr, "usage: %s\n", absl::ProgramUsageMessage().data());
    return 2;
  }
  if (const absl::Status status = Run(args[1]); !status.ok()) {
    std::fprintf(stderr, "gquant-generate: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
