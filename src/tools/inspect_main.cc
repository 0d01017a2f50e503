// gquant-inspect: what a checkpoint holds. Reads headers only, so it is quick
// on a 60 GB checkpoint.
//
//   gquant-inspect [--tensors=false] CHECKPOINT
//
// CHECKPOINT is a Hugging Face checkpoint directory (model.safetensors or a
// sharded index) or one .safetensors file. With a config.json beside it, the
// Gemma 4 configuration is summarised too.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "gquant/checkpoint.h"
#include "gquant/checkpoint_summary.h"
#include "gquant/gemma4/config.h"

ABSL_FLAG(bool, tensors, true, "List every tensor with its dtype and shape");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("gquant-inspect [--tensors=false] CHECKPOINT_DIR_OR_FILE");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    std::fprintf(stderr, "usage: %s\n", absl::ProgramUsageMessage().data());
    return 2;
  }
  const std::string path = args[1];
  absl::StatusOr<gquant::Checkpoint> checkpoint = gquant::Checkpoint::Open(path);
  if (!checkpoint.ok()) {
    std::fprintf(stderr, "gquant-inspect: %s\n", checkpoint.status().ToString().c_str());
    return 1;
  }
  const gquant::CheckpointSummary summary = gquant::SummarizeCheckpoint(*checkpoint);

  const std::filesystem::path config_path =
      std::filesystem::path(checkpoint->directory()) / "config.json";
  if (std::filesystem::exists(config_path)) {
    absl::StatusOr<gquant::gemma4::Config> config =
        gquant::gemma4::LoadConfig(config_path.string());
    if (!config.ok()) {
      std::fprintf(stderr, "gquant-inspect: %s\n", config.status().ToString().c_str());
      return 1;
    }
    std::printf("%s\n", gquant::gemma4::DescribeConfig(*config).c_str());
  } else {
    std::printf("no config.json beside the checkpoint: tensors only\n");
  }
  std::printf(
      "%s",
      gquant::FormatCheckpointReport(*checkpoint, summary, absl::GetFlag(FLAGS_tensors)).c_str());
  return 0;
}
