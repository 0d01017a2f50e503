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
#include "tools/flag_spelling.h"
#include "tools/progress_printer.h"

ABSL_FLAG(std::string, recipe, "default",
          "Bundled recipe name (default, sensitive) or path to a recipe JSON file");
ABSL_FLAG(std::string, output, "", "Output directory (created if missing)");
ABSL_FLAG(int, threads, 0, "Worker threads (0: all hardware threads)");
ABSL_FLAG(bool, dry_run, false, "Print the rule each tensor matches; write nothing");
ABSL_FLAG(bool, per_tensor, true, "Print per-tensor error and SNR in the report");
ABSL_FLAG(bool, hqq_best_iterate, false,
          "HQQ: keep the best iterate's zero instead of the reference's one-past-best");

namespace {

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

}  // namespace

int main(int argc, char** argv) {
  gquant::tools::DashesToUnderscoresInFlagNames(argc, argv);
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
  gquant::tools::ProgressPrinter printer("quantized");
  gquant::QuantizeJobOptions options;
  options.input = args[1];
  options.output_dir = absl::GetFlag(FLAGS_output);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.dry_run = dry_run;
  options.hqq.keep_best_iterate = absl::GetFlag(FLAGS_hqq_best_iterate);
  options.progress = [&printer](const gquant::JobProgress& p) { printer.Update(p); };

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
