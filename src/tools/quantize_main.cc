// gquant-quantize: quantize a Hugging Face Gemma 4 checkpoint with a recipe
// and save a quantized checkpoint (see gquant/quantize_checkpoint.h).
//
//   gquant-quantize --recipe=default --output=OUT_DIR [--threads=N] [--dry-run] INPUT
//
// Flag names take dashes or underscores (--dry-run, --dry_run).
//
// INPUT is a checkpoint directory (model.safetensors or a sharded index) or
// one .safetensors file. --recipe takes a bundled name (default, sensitive) or
// a JSON path. Progress goes to stderr: a bar on a terminal, plain lines
// otherwise; the report goes to stdout and OUT_DIR/quantize_report.json.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gquant/quantize_checkpoint.h"
#include "gquant/recipe.h"

ABSL_FLAG(std::string, recipe, "default",
          "Bundled recipe name (default, sensitive) or path to a recipe JSON file");
ABSL_FLAG(std::string, output, "", "Output directory (created if missing)");
ABSL_FLAG(int, threads, 0, "Worker threads (0: all hardware threads)");
ABSL_FLAG(bool, dry_run, false, "Print the rule each tensor matches; write nothing");
ABSL_FLAG(bool, per_tensor, true, "Print per-tensor error and SNR in the report");
ABSL_FLAG(bool, hqq_best_iterate, false,
          "HQQ: keep the best iterate's zero instead of the reference's one-past-best");

namespace {

// Renders progress on stderr: an updating bar on a terminal, or, when stderr
// is a file or pipe (CI logs), a line per 5% at most every 2 s, and the last.
class ProgressPrinter {
 public:
  ProgressPrinter() : tty_(isatty(STDERR_FILENO)), start_(std::chrono::steady_clock::now()) {}

  void Update(const gquant::QuantizeProgress& p) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double fraction = p.tensors_total > 0 ? double(p.tensors_done) / p.tensors_total : 1.0;
    const std::string rates =
        absl::StrFormat("%.1f tensors/s, %.1f MB/s", p.tensors_done / std::max(seconds, 1e-9),
                        p.bytes_done / 1e6 / std::max(seconds, 1e-9));
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(fraction * kWidth);
      std::fprintf(stderr, "\r\033[K[%s%s] %lld/%lld %s  %s", std::string(filled, '#').c_str(),
                   std::string(kWidth - filled, ' ').c_str(), (long long)p.tensors_done,
                   (long long)p.tensors_total, rates.c_str(), p.current.c_str());
      if (p.tensors_done == p.tensors_total) std::fprintf(stderr, "\n");
    } else if (const int step = static_cast<int>(fraction * 20);
               step > last_step_ && (seconds - last_print_ >= 2.0 || fraction == 1.0)) {
      last_step_ = step;
      last_print_ = seconds;
      std::fprintf(stderr, "quantized %lld/%lld tensors (%d%%), %s\n", (long long)p.tensors_done,
                   (long long)p.tensors_total, step * 5, rates.c_str());
    }
    std::fflush(stderr);
  }

 private:
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  int last_step_ = -1;
  double last_print_ = 0;
};

void PrintDryRun(const gquant::Recipe& recipe, const gquant::QuantizeReport& report) {
  for (const gquant::TensorReport& t : report.tensors) {
    const std::string rule =
        t.rule_index < 0
            ? "no rule"
            : absl::StrFormat("rule %d '%s'", t.rule_index, recipe.rules()[t.rule_index].pattern);
    std::printf("%-60s %-44s %s\n", t.name.c_str(), rule.c_str(),
                t.config ? gquant::QuantConfigToString(*t.config).c_str() : "keep");
  }
}

// Accepts --dry-run as well as absl's --dry_run spelling.
void DashesToUnderscoresInFlagNames(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--", 2) != 0) continue;
    for (char* c = argv[i] + 2; *c != '\0' && *c != '='; ++c) {
      if (*c == '-') *c = '_';
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  DashesToUnderscoresInFlagNames(argc, argv);
  absl::SetProgramUsageMessage(
      "gquant-quantize --recipe=NAME_OR_PATH --output=DIR [--threads=N] [--dry-run] INPUT");
  const std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  const bool dry_run = absl::GetFlag(FLAGS_dry_run);
  if (args.size() != 2 || (!dry_run && absl::GetFlag(FLAGS_output).empty())) {
    std::fprintf(stderr, "usage: %s\n", absl::ProgramUsageMessage().data());
    return 2;
  }
  const absl::StatusOr<gquant::Recipe> recipe = gquant::Recipe::Load(absl::GetFlag(FLAGS_recipe));
  if (!recipe.ok()) {
    std::fprintf(stderr, "gquant-quantize: %s\n", recipe.status().ToString().c_str());
    return 1;
  }
  ProgressPrinter printer;
  gquant::QuantizeJobOptions options;
  options.input = args[1];
  options.output_dir = absl::GetFlag(FLAGS_output);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.dry_run = dry_run;
  options.hqq.keep_best_iterate = absl::GetFlag(FLAGS_hqq_best_iterate);
  options.progress = [&printer](const gquant::QuantizeProgress& p) { printer.Update(p); };

  const absl::StatusOr<gquant::QuantizeReport> report =
      gquant::QuantizeCheckpoint(*recipe, options);
  if (!report.ok()) {
    std::fprintf(stderr, "\ngquant-quantize: %s\n", report.status().ToString().c_str());
    return 1;
  }
  if (dry_run) PrintDryRun(*recipe, *report);
  std::printf("%s", report->ToText(!dry_run && absl::GetFlag(FLAGS_per_tensor)).c_str());
  if (!dry_run) {
    std::printf("wrote %s/model.safetensors and quantize_report.json\n",
                options.output_dir.c_str());
  }
  return 0;
}
