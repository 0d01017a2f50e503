// gquant-gguf: GGUF files.
//
//   gquant-gguf inspect FILE
//   gquant-gguf convert FILE.gguf --out DIR [--threads N]
//   gquant-gguf export DIR --out FILE.gguf [--recipe NAME_OR_PATH] [--keep-type f16]
//
// `inspect` prints the header, the metadata, one line per tensor and the bytes
// per ggml type. It reads the header only (the file is memory-mapped; tensor
// data is not touched). `convert` writes a gquant checkpoint without loss
// (gguf_convert.h); `export` writes a GGUF with the types a recipe picks
// (gguf_export.h). Both show progress on stderr and write atomically.
//
// Exit status: 0 on success, 1 when the file cannot be read (the Status is
// printed), 2 on a usage error.
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gquant/checkpoint_summary.h"
#include "gquant/ggml_format.h"
#include "gquant/gguf.h"
#include "gquant/gguf_convert.h"
#include "gquant/gguf_export.h"
#include "gquant/recipe.h"
#include "tools/flag_spelling.h"
#include "tools/progress_printer.h"

ABSL_FLAG(std::string, out, "", "convert: output directory; export: output .gguf file");
ABSL_FLAG(std::string, recipe, "default",
          "export: recipe whose bits pick each tensor's ggml type (bundled name or JSON path)");
ABSL_FLAG(std::string, keep_type, "f16", "export: ggml type of kept matrices (f16, bf16, f32)");
ABSL_FLAG(int, threads, 0, "Worker threads (0: all hardware threads)");
ABSL_FLAG(bool, per_tensor, false, "export: print one line per tensor");

namespace gquant {
namespace {

constexpr char kUsage[] =
    "gquant-gguf inspect FILE\n"
    "       gquant-gguf convert FILE.gguf --out DIR [--threads N]\n"
    "       gquant-gguf export CHECKPOINT_DIR --out FILE.gguf [--recipe NAME_OR_PATH]\n"
    "                          [--keep-type f16|bf16|f32] [--threads N] [--per-tensor]";
// Array elements shown before "...".
constexpr size_t kMaxArrayElements = 8;
// String values longer than this are cut, with "..." and the full length.
constexpr size_t kMaxStringChars = 64;

// `s` quoted, control characters escaped, cut after kMaxStringChars.
std::string QuoteString(std::string_view s) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < kMaxStringChars; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      out += absl::StrFormat("\\x%02x", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
  if (s.size() > kMaxStringChars) out += absl::StrFormat("... (%d chars)", s.size());
  return out;
}

std::string FormatValue(const GgufValue& value);

// "STRING[3]" for an array, "UINT32" otherwise.
std::string FormatType(const GgufValue& value) {
  if (const GgufArray* array = value.array()) {
    return absl::StrFormat("%s[%d]", GgufValueTypeName(array->element_type),
                           array->elements.size());
  }
  return GgufValueTypeName(value.type());
}

std::string FormatValue(const GgufValue& value) {
  return std::visit(
      [](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) {
          return QuoteString(v);
        } else if constexpr (std::is_same_v<T, GgufArray>) {
          std::vector<std::string> parts;
          for (size_t i = 0; i < v.elements.size() && i < kMaxArrayElements; ++i) {
            parts.push_back(FormatValue(v.elements[i]));
          }
          if (v.elements.size() > kMaxArrayElements) parts.push_back("...");
          return absl::StrFormat("[%s]", absl::StrJoin(parts, ", "));
        } else if constexpr (std::is_same_v<T, bool>) {
          return v ? "true" : "false";
        } else if constexpr (std::is_floating_point_v<T>) {
          char buf[32];  // shortest text that reads back as the same value
          const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), v);
          return std::string(buf, r.ptr);
        } else {
          return absl::StrFormat(
              "%d", static_cast<std::conditional_t<std::is_signed_v<T>, int64_t, uint64_t>>(v));
        }
      },
      value.variant());
}

std::string FormatDims(const std::vector<int64_t>& dims, const char* open, const char* close) {
  return absl::StrFormat("%s%s%s", open, absl::StrJoin(dims, ", "), close);
}

int Inspect(const std::string& path) {
  absl::StatusOr<GgufFile> file = GgufFile::Open(path);
  if (!file.ok()) {
    std::fprintf(stderr, "gquant-gguf: %s\n", file.status().ToString().c_str());
    return 1;
  }
  std::printf("%s\n", file->source().c_str());
  std::printf("GGUF version %u, alignment %u, %zu metadata keys, %zu tensors, data at byte %s\n",
              file->version(), file->alignment(), file->metadata().size(), file->tensors().size(),
              FormatWithThousands(static_cast<int64_t>(file->data_start())).c_str());

  std::printf("\nmetadata:\n");
  size_t key_width = 0, type_width = 0;
  for (const auto& [key, value] : file->metadata()) {
    key_width = std::max(key_width, key.size());
    type_width = std::max(type_width, FormatType(value).size());
  }
  for (const auto& [key, value] : file->metadata()) {
    std::printf("  %-*s  %-*s  %s\n", static_cast<int>(key_width), key.c_str(),
                static_cast<int>(type_width), FormatType(value).c_str(),
                FormatValue(value).c_str());
  }

  struct Row {
    std::string name, type, dims, shape, bytes;
  };
  struct Totals {
    int64_t count = 0;
    int64_t bytes = 0;
  };
  std::vector<Row> rows;
  std::map<uint32_t, Totals> by_type;
  Totals total;
  Row widths{"name", "type", "gguf dims", "torch shape", "bytes"};
  for (const GgufTensorInfo& t : file->tensors()) {
    const auto bytes = static_cast<int64_t>(t.num_bytes);
    rows.push_back({t.name, GgmlTypeName(t.type), FormatDims(t.dims, "[", "]"),
                    FormatDims(t.TorchShape(), "(", ")"), FormatWithThousands(bytes)});
    ++by_type[t.type].count;
    by_type[t.type].bytes += bytes;
    ++total.count;
    total.bytes += bytes;
  }
  const auto width = [&](auto field) {
    size_t w = (widths.*field).size();
    for (const Row& row : rows) w = std::max(w, (row.*field).size());
    return static_cast<int>(w);
  };
  const int wn = width(&Row::name), wt = width(&Row::type), wd = width(&Row::dims),
            ws = width(&Row::shape), wb = width(&Row::bytes);
  std::printf("\ntensors:\n");
  rows.insert(rows.begin(), widths);
  for (const Row& row : rows) {
    std::printf("  %-*s  %-*s  %-*s  %-*s  %*s\n", wn, row.name.c_str(), wt, row.type.c_str(), wd,
                row.dims.c_str(), ws, row.shape.c_str(), wb, row.bytes.c_str());
  }

  std::printf("\nby type:\n");
  for (const auto& [type, totals] : by_type) {
    std::printf("  %-8s %s tensor%s, %s bytes\n", (GgmlTypeName(type) + ":").c_str(),
                FormatWithThousands(totals.count).c_str(), totals.count == 1 ? "" : "s",
                FormatWithThousands(totals.bytes).c_str());
  }
  std::printf("total: %s tensors, %s bytes of tensor data\n",
              FormatWithThousands(total.count).c_str(), FormatWithThousands(total.bytes).c_str());
  return 0;
}

}  // namespace
}  // namespace gquant

namespace gquant {
namespace {

int Convert(const std::string& input) {
  tools::ProgressPrinter printer("converted");
  GgufConvertOptions options;
  options.input = input;
  options.output_dir = absl::GetFlag(FLAGS_out);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.progress = [&printer](const JobProgress& p) { printer.Update(p); };
  const absl::StatusOr<GgufConvertReport> report = ConvertGgufToCheckpoint(options);
  if (!report.ok()) {
    std::fprintf(stderr, "gquant-gguf convert: %s\n", report.status().ToString().c_str());
    return 1;
  }
  std::printf("%s", report->ToText().c_str());
  std::printf("wrote %s/model.safetensors and config.json\n", options.output_dir.c_str());
  return 0;
}

int Export(const std::string& input) {
  const absl::StatusOr<Recipe> recipe = Recipe::Load(absl::GetFlag(FLAGS_recipe));
  const absl::StatusOr<GgmlType> keep_type = GgmlTypeFromName(absl::GetFlag(FLAGS_keep_type));
  if (!recipe.ok() || !keep_type.ok()) {
    std::fprintf(stderr, "gquant-gguf export: %s\n",
                 (recipe.ok() ? keep_type.status() : recipe.status()).ToString().c_str());
    return 1;
  }
  tools::ProgressPrinter printer("exported");
  GgufExportOptions options;
  options.input = input;
  options.output_file = absl::GetFlag(FLAGS_out);
  options.keep_type = *keep_type;
  options.threads = absl::GetFlag(FLAGS_threads);
  options.progress = [&printer](const JobProgress& p) { printer.Update(p); };
  const absl::StatusOr<GgufExportReport> report = ExportGguf(*recipe, options);
  if (!report.ok()) {
    std::fprintf(stderr, "gquant-gguf export: %s\n", report.status().ToString().c_str());
    return 1;
  }
  std::printf("%s", report->ToText(absl::GetFlag(FLAGS_per_tensor)).c_str());
  std::printf("wrote %s (recipe '%s')\n", options.output_file.c_str(), recipe->name().c_str());
  return 0;
}

int Usage() {
  std::fprintf(stderr, "usage: %s\n", kUsage);
  return 2;
}

}  // namespace
}  // namespace gquant

int main(int argc, char** argv) {
  gquant::tools::DashesToUnderscoresInFlagNames(argc, argv);
  absl::SetProgramUsageMessage(gquant::kUsage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 3) return gquant::Usage();
  const std::string command = args[1];
  if (command == "inspect") return gquant::Inspect(args[2]);
  if (command != "convert" && command != "export") {
    std::fprintf(stderr, "gquant-gguf: unknown subcommand \"%s\"\n", command.c_str());
    return gquant::Usage();
  }
  if (absl::GetFlag(FLAGS_out).empty()) {
    std::fprintf(stderr, "gquant-gguf %s: --out is required\n", command.c_str());
    return gquant::Usage();
  }
  return command == "convert" ? gquant::Convert(args[2]) : gquant::Export(args[2]);
}
