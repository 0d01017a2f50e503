#include "gquant/quantize_checkpoint.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gquant/atomic_file.h"
#include "gquant/checkpoint.h"
#include "gquant/checkpoint_summary.h"
#include "gquant/gemma4/config.h"
#include "gquant/quantized_checkpoint.h"
#include "gquant/safetensors.h"
#include "gquant/status.h"
#include "gquant/thread_pool.h"

namespace gquant {
namespace {

using Json = nlohmann::ordered_json;
namespace fs = std::filesystem;

constexpr std::string_view kLmHead = "lm_head.weight";
constexpr std::string_view kReportFile = "quantize_report.json";
// The resume manifest; it matches the `.<name>.tmp.*` pattern of leftovers.
constexpr std::string_view kManifestFile = ".model.safetensors.tmp.progress.json";
constexpr int kManifestFormat = 1;

// Files copied beside the weights when present (Hugging Face names).
constexpr const char* kAuxiliaryFiles[] = {"config.json",           "generation_config.json",
                                           "tokenizer.json",        "tokenizer_config.json",
                                           "tokenizer.model",       "special_tokens_map.json",
                                           "chat_template.jinja",   "chat_template.json",
                                           "processor_config.json", "preprocessor_config.json"};

// Min-max rows are independent, so they are quantized in blocks of about this
// many elements: small enough to stay in cache-friendly scratch, large enough
// to split across threads.
constexpr int64_t kBlockElements = int64_t{1} << 22;

struct PlannedTensor {
  TensorReport report;
  std::optional<QuantizedLayout> layout;  // set when quantized
};

std::string ConfigToString(const std::optional<QuantConfig>& config) {
  return config ? QuantConfigToString(*config) : "keep";
}

// The model's layer count and whether lm_head is tied, from config.json when
// there is one; else layers from the tensor names and no tie.
struct ModelFacts {
  int num_layers = 0;
  bool tied_embeddings = false;
};
absl::StatusOr<ModelFacts> ReadModelFacts(const Checkpoint& checkpoint) {
  const fs::path config_path = fs::path(checkpoint.directory()) / "config.json";
  ModelFacts facts;
  if (fs::exists(config_path)) {
    GQ_ASSIGN_OR_RETURN(const gemma4::Config config, gemma4::LoadConfig(config_path.string()));
    facts.num_layers = config.text.num_hidden_layers;
    facts.tied_embeddings = config.text.tie_word_embeddings;
    return facts;
  }
  for (const std::string& name : checkpoint.TensorNames()) {
    if (const auto layer = LayerIndexOf(name))
      facts.num_layers = std::max(facts.num_layers, *layer + 1);
  }
  return facts;
}

absl::StatusOr<PlannedTensor> PlanTensor(const Recipe& recipe, const SafetensorsTensorInfo& info,
                                         std::string name, int num_layers) {
  PlannedTensor plan;
  TensorReport& r = plan.report;
  r.source = info.name;
  r.name = std::move(name);
  const RecipeMatch match = recipe.Match(r.name, num_layers);
  r.rule_index = match.rule_index;
  r.config = match.config;
  r.dtype = info.dtype;
  r.shape = info.shape;
  r.bytes_before = r.name == r.source ? static_cast<int64_t>(info.num_bytes()) : 0;
  r.snr_db = std::numeric_limits<double>::infinity();
  if (!r.config) {
    r.bytes_after = static_cast<int64_t>(info.num_bytes());
    return plan;
  }
  const auto context = [&] {
    return absl::StrCat("tensor '", r.name, "' (rule ", r.rule_index, ")");
  };
  if (info.dtype != DType::kBF16 && info.dtype != DType::kF16 && info.dtype != DType::kF32) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: expected a F32, F16 or BF16 weight to quantize, but got %s", context(),
                        DTypeName(info.dtype)));
  }
  auto layout = QuantizedLayout::Create(r.name, r.shape, *r.config);
  if (!layout.ok()) return Annotate(layout.status(), context());
  r.bytes_after = layout->num_bytes();
  plan.layout = std::move(*layout);
  return plan;
}

// ---- memory ----

// Whether matrices go to the quantizer whole: HQQ's stopping rule is global
// over a matrix, and a custom quantizer (the GPU) transfers each matrix once.
bool WholeMatrix(const QuantConfig& config, const QuantizeJobOptions& options) {
  return config.method == QuantMethod::kHqq || static_cast<bool>(options.quantizer);
}

int64_t BlockRows(const QuantizedLayout& layout, bool whole_matrix) {
  return whole_matrix ? layout.rows()
                      : std::clamp<int64_t>(kBlockElements / layout.cols(), 1, layout.rows());
}

// Bound on the bytes held while `p` is written (module comment "Memory"):
//   kept       the input tensor's pages (written from the mapping whole);
//   quantized  the packed tensor, plus per block of rows (a whole matrix for
//              HQQ): its input pages, 1 byte of codes per weight and the
//              float scale and zero per group; plus HQQ's solver state (up
//              to four floats per group, two doubles per row) and each
//              thread's row scratch (a float row, the min-max group arrays).
int64_t WorkingSetBytes(const PlannedTensor& p, bool whole_matrix, int threads) {
  const int64_t element = DTypeSize(p.report.dtype);
  if (!p.layout) {
    int64_t elements = 1;
    for (int64_t d : p.report.shape) elements *= d;
    return elements * element;
  }
  const QuantizedLayout& l = *p.layout;
  const int64_t block_rows = BlockRows(l, whole_matrix);
  int64_t bytes = l.num_bytes() + block_rows * (l.cols() * (element + 1) + l.groups() * 8);
  if (whole_matrix) bytes += l.rows() * (l.groups() * 16 + 24);
  bytes += threads * (l.cols() * 16 + l.groups() * 24);
  return bytes;
}

// What a tensor taken from an interrupted run holds (ReuseFinished): the
// packed tensor twice (the new copy and the old file's pages) and one matrix
// unpacked (codes and float scale and zero).
int64_t ReuseWorkingSetBytes(const QuantizedLayout& l) {
  return 2 * l.num_bytes() + l.rows() * (l.cols() + l.groups() * 8);
}

absl::Status MemoryTooSmall(int64_t max_memory, std::string_view name, int64_t need) {
  return absl::ResourceExhaustedError(absl::StrFormat(
      "--max-memory %d bytes: tensor '%s' needs about %d bytes while it is written (%d MiB, "
      "gquant's %d MiB baseline included); raise the bound or quantize it with min-max",
      max_memory, name, need, need >> 20, kBaselineMemoryBytes >> 20));
}

// Drops the pages of `bytes`, a view into `tensor`'s read-only file mapping,
// from this process; touching them again re-reads the file. Owned (copied)
// tensors are left alone: MADV_DONTNEED would zero anonymous memory.
void ReleaseMappedPages(const Tensor& tensor, std::span<const std::byte> bytes) {
  if (tensor.owns_memory() || bytes.empty()) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(bytes.data()) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(bytes.data()) + bytes.size()) / page * page;
  if (begin < end) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

// ---- quantizing ----

// The element at `p` as a float (for error messages).
float ElementToFloat(DType dtype, const std::byte* p) {
  float value = 0.0f;
  ConvertToFloat(dtype, std::span(p, DTypeSize(dtype)), std::span(&value, 1)).IgnoreError();
  return value;
}

// Quantizes one input tensor into `layout`'s packed form, returning the
// packed weight and accumulating the reconstruction error and the numerical
// edge cases (ScanWeight) of the input. A NaN/Inf is an error naming its
// matrix, row and column in the whole tensor.
absl::StatusOr<PackedWeight> QuantizeTensor(const Tensor& input, const QuantizedLayout& layout,
                                            const QuantizeJobOptions& options, ThreadPool* pool,
                                            ErrorStats* stats, WeightScan* scan) {
  PackedWeight packed(layout);
  const QuantConfig& config = layout.config();
  const int64_t rows = layout.rows(), cols = layout.cols(), groups = layout.groups();
  const int64_t block_rows = BlockRows(layout, WholeMatrix(config, options));
  std::vector<int8_t> codes(block_rows * cols);
  std::vector<float> scale(block_rows * groups), zero(block_rows * groups);
  const int64_t element_bytes = DTypeSize(input.dtype());
  QuantizeOptions quantize_options{options.hqq, pool, stats};
  for (int64_t m = 0; m < layout.matrices(); ++m) {
    for (int64_t r0 = 0; r0 < rows; r0 += block_rows) {
      const int64_t n = std::min(block_rows, rows - r0);
      const auto source =
          input.bytes().subspan((m * rows + r0) * cols * element_bytes, n * cols * element_bytes);
      GQ_ASSIGN_OR_RETURN(const WeightScan block_scan,
                          ScanWeight(config, input.dtype(), source, n, cols, pool));
      if (block_scan.non_finite > 0) {
        const int64_t at = block_scan.first_non_finite;
        return absl::InvalidArgumentError(absl::StrFormat(
            "weight element [matrix %d, row %d, column %d]: expected a finite value, but got %f "
            "(the first of %d NaN/Inf in rows %d..%d)",
            m, r0 + at / cols, at % cols,
            ElementToFloat(input.dtype(), source.data() + at * element_bytes),
            block_scan.non_finite, r0, r0 + n - 1));
      }
      scan->Add(block_scan, 0);
      const QuantizedSpans spans{std::span(codes).first(n * cols),
                                 std::span(scale).first(n * groups),
                                 std::span(zero).first(n * groups)};
      absl::Status status =
          options.quantizer
              ? options.quantizer(config, input.dtype(), source, n, cols, spans, quantize_options)
              : Quantize(config, input.dtype(), source, n, cols, spans, quantize_options);
      if (!status.ok()) {
        return Annotate(status, absl::StrFormat("matrix %d, rows from %d", m, r0));
      }
      GQ_RETURN_IF_ERROR(packed.Pack(m, r0, n, spans.codes, spans.scale, spans.zero_point));
      ReleaseMappedPages(input, source);
    }
  }
  return packed;
}

// Copies the auxiliary files that differ from the output's (so an unchanged
// input rewrites nothing).
absl::Status CopyAuxiliaryFiles(const std::string& from, const std::string& to) {
  const auto read = [](const fs::path& path, std::string* contents) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    *contents = s.str();
    return in.good() || in.eof();
  };
  for (const char* file : kAuxiliaryFiles) {
    const fs::path source = fs::path(from) / file;
    if (!fs::exists(source)) continue;
    std::string contents, existing;
    if (!read(source, &contents)) {
      return absl::InternalError(absl::StrFormat("cannot read '%s'", source.string()));
    }
    const fs::path target = fs::path(to) / file;
    if (fs::exists(target) && read(target, &existing) && existing == contents) continue;
    GQ_RETURN_IF_ERROR(WriteFileAtomically(target.string(), contents));
  }
  return absl::OkStatus();
}

QuantizeReport BuildReport(const Recipe& recipe, std::vector<PlannedTensor>& plan) {
  QuantizeReport report;
  report.recipe = recipe.name();
  for (size_t i = 0; i < recipe.rules().size(); ++i) {
    report.rules.push_back(
        {static_cast<int>(i), recipe.rules()[i].pattern, recipe.rules()[i].config});
  }
  report.rules.push_back({-1, "(no rule)", std::nullopt});
  for (PlannedTensor& p : plan) {
    RuleReport& rule =
        p.report.rule_index < 0 ? report.rules.back() : report.rules[p.report.rule_index];
    rule.tensors += 1;
    rule.bytes_before += p.report.bytes_before;
    rule.bytes_after += p.report.bytes_after;
    report.bytes_before += p.report.bytes_before;
    report.bytes_after += p.report.bytes_after;
    report.memory_bound_bytes =
        std::max(report.memory_bound_bytes, kBaselineMemoryBytes + p.report.working_set_bytes);
    report.tensors.push_back(p.report);
  }
  return report;
}

// ---- the output directory: lock, temporaries, resume manifest ----

// An exclusive flock on the output directory for the job's lifetime: a second
// job into the same directory fails instead of interleaving, and removing
// stale temporaries cannot hit a live job's file. File systems without flock
// (some NFS setups) run unlocked.
class DirectoryLock {
 public:
  static absl::StatusOr<std::unique_ptr<DirectoryLock>> Acquire(const std::string& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      return absl::InternalError(
          absl::StrFormat("cannot open output directory '%s': %s", dir, std::strerror(errno)));
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
      ::close(fd);
      return absl::FailedPreconditionError(
          absl::StrFormat("output directory '%s': another gquant-quantize is writing to it", dir));
    }
    return std::unique_ptr<DirectoryLock>(new DirectoryLock(fd));
  }
  ~DirectoryLock() { ::close(fd_); }
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  explicit DirectoryLock(int fd) : fd_(fd) {}
  int fd_;
};

// Whether `entry` is an AtomicFileWriter temporary of `name`:
// ".<name>.tmp.XXXXXX", six letters or digits from mkstemp.
bool IsTemporaryOf(std::string_view entry, std::string_view name) {
  const std::string prefix = "." + std::string(name) + ".tmp.";
  if (entry.size() != prefix.size() + 6 || !entry.starts_with(prefix)) return false;
  return std::all_of(entry.begin() + prefix.size(), entry.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; });
}

std::vector<std::string> OutputNames() {
  std::vector<std::string> names = {std::string(kSafetensorsSingleFile), std::string(kReportFile),
                                    std::string(kManifestFile)};
  for (const char* file : kAuxiliaryFiles) names.emplace_back(file);
  return names;
}

// Removes what killed runs left: temporaries of every name this job writes,
// except `keep` (the one --resume reads), and the manifest unless kept.
void RemoveStaleFiles(const fs::path& dir, const std::string& keep) {
  const std::vector<std::string> names = OutputNames();
  std::error_code error;
  // The manifest first: a kill in between must not leave it naming a
  // temporary that is gone.
  if (keep.empty()) fs::remove(dir / kManifestFile, error);
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    if (name == keep) continue;
    for (const std::string& output : names) {
      if (IsTemporaryOf(name, output)) stale.push_back(entry.path());
    }
  }
  for (const fs::path& path : stale) fs::remove(path, error);
}

// xxHash64 (seed 0): a fast checksum for the manifest. It catches torn,
// stale or lost writes; it is no defence against someone who can write the
// output directory (they can write the weights too).
uint64_t XxHash64(std::span<const std::byte> data) {
  constexpr uint64_t k1 = 0x9E3779B185EBCA87ull, k2 = 0xC2B2AE3D27D4EB4Full,
                     k3 = 0x165667B19E3779F9ull, k4 = 0x85EBCA77C2B2AE63ull,
                     k5 = 0x27D4EB2F165667C5ull;
  const auto read64 = [](const std::byte* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
  };
  const auto round = [](uint64_t acc, uint64_t input) {
    return std::rotl(acc + input * k2, 31) * k1;
  };
  const auto merge = [&](uint64_t acc, uint64_t v) { return (acc ^ round(0, v)) * k1 + k4; };
  const std::byte* p = data.data();
  const std::byte* const end = p + data.size();
  uint64_t h;
  if (data.size() >= 32) {
    uint64_t v1 = k1 + k2, v2 = k2, v3 = 0, v4 = 0 - k1;
    for (; end - p >= 32; p += 32) {
      v1 = round(v1, read64(p));
      v2 = round(v2, read64(p + 8));
      v3 = round(v3, read64(p + 16));
      v4 = round(v4, read64(p + 24));
    }
    h = std::rotl(v1, 1) + std::rotl(v2, 7) + std::rotl(v3, 12) + std::rotl(v4, 18);
    h = merge(merge(merge(merge(h, v1), v2), v3), v4);
  } else {
    h = k5;
  }
  h += data.size();
  for (; end - p >= 8; p += 8) h = std::rotl(h ^ round(0, read64(p)), 27) * k1 + k4;
  if (end - p >= 4) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    h = std::rotl(h ^ (uint64_t{v} * k1), 23) * k2 + k3;
    p += 4;
  }
  for (; p < end; ++p) h = std::rotl(h ^ (std::to_integer<uint64_t>(*p) * k5), 11) * k1;
  h ^= h >> 33;
  h *= k2;
  h ^= h >> 29;
  h *= k3;
  return h ^ (h >> 32);
}

// The hashes of a packed weight's stored parts (qdata, scale, zero_point).
std::vector<std::string> PartHashes(const PackedWeight& packed) {
  std::vector<std::string> hashes;
  for (std::span<const std::byte> part : {packed.qdata(), packed.scale(), packed.zero_point()}) {
    hashes.push_back(absl::StrFormat("%016x", XxHash64(part)));
  }
  return hashes;
}

// What the report needs of a finished quantized tensor.
struct FinishedTensor {
  std::vector<std::string> hashes;
  ErrorStats stats;
  WeightScan scan;
};

struct Manifest {
  Json identity;
  std::string temporary;  // the model file's temporary, a name in the output directory
  std::map<std::string, FinishedTensor> finished;  // by FQN
};

// What makes two runs produce the same bytes: gquant, the recipe, the
// quantizer and its options, and the input files (path, size, mtime).
absl::StatusOr<Json> JobIdentity(const Recipe& recipe, const QuantizeJobOptions& options,
                                 const Checkpoint& checkpoint) {
  Json inputs = Json::array();
  std::vector<fs::path> files;
  for (const SafetensorsFile& shard : checkpoint.shards()) files.emplace_back(shard.path());
  for (std::string_view name : {kSafetensorsIndexFile, std::string_view("config.json")}) {
    const fs::path path = fs::path(checkpoint.directory()) / name;
    if (fs::exists(path)) files.push_back(path);
  }
  for (const fs::path& file : files) {
    struct stat st;
    if (::stat(file.c_str(), &st) != 0) {
      return absl::InternalError(
          absl::StrFormat("cannot stat '%s': %s", file.string(), std::strerror(errno)));
    }
    std::error_code error;
    const fs::path absolute = fs::absolute(file, error).lexically_normal();
    inputs.push_back({{"path", absolute.string()},
                      {"bytes", static_cast<int64_t>(st.st_size)},
                      {"mtime_ns", static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 +
                                       st.st_mtim.tv_nsec}});
  }
  const HqqOptions& hqq = options.hqq;
  return Json{{"format", kManifestFormat},
              {"gquant_version", std::string(kGquantVersion)},
              {"recipe", recipe.ToJson()},
              {"quantizer", options.quantizer ? options.quantizer_id : std::string("cpu")},
              {"hqq",
               {{"lp_norm", hqq.lp_norm},
                {"beta", hqq.beta},
                {"kappa", hqq.kappa},
                {"iterations", hqq.iterations},
                {"early_stop", hqq.early_stop},
                {"keep_best_iterate", hqq.keep_best_iterate}}},
              {"inputs", inputs}};
}

std::string ManifestToJson(const Manifest& manifest) {
  Json finished = Json::array();
  for (const auto& [name, t] : manifest.finished) {
    finished.push_back({{"name", name},
                        {"hashes", t.hashes},
                        {"reference_sq", t.stats.reference_sq},
                        {"error_sq", t.stats.error_sq},
                        {"subnormal", t.scan.subnormal},
                        {"constant_groups", t.scan.constant_groups},
                        {"zero_groups", t.scan.zero_groups}});
  }
  return Json{
      {"identity", manifest.identity}, {"temporary", manifest.temporary}, {"finished", finished}}
      .dump(1);
}

// The manifest in `dir`, or nullopt when there is none or it cannot be used
// (it is gquant's own file: anything unexpected means "start over"). The
// temporary it names must be a temporary of the model file, so a tampered
// manifest cannot point the job at another file.
std::optional<Manifest> ReadManifest(const fs::path& dir) {
  std::ifstream in(dir / kManifestFile, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  try {
    const Json json = Json::parse(text.str());
    Manifest manifest;
    manifest.identity = json.at("identity");
    manifest.temporary = json.at("temporary").get<std::string>();
    if (!IsTemporaryOf(manifest.temporary, kSafetensorsSingleFile)) return std::nullopt;
    for (const Json& entry : json.at("finished")) {
      FinishedTensor t;
      t.hashes = entry.at("hashes").get<std::vector<std::string>>();
      t.stats.reference_sq = entry.at("reference_sq").get<double>();
      t.stats.error_sq = entry.at("error_sq").get<double>();
      t.scan.subnormal = entry.at("subnormal").get<int64_t>();
      t.scan.constant_groups = entry.at("constant_groups").get<int64_t>();
      t.scan.zero_groups = entry.at("zero_groups").get<int64_t>();
      manifest.finished[entry.at("name").get<std::string>()] = std::move(t);
    }
    return manifest;
  } catch (const Json::exception&) {
    return std::nullopt;
  }
}

// Removes the manifest when the job returns, done or failed (a failed job's
// writer removes its temporary too); only a killed job leaves it, for --resume.
class ManifestGuard {
 public:
  explicit ManifestGuard(fs::path path) : path_(std::move(path)) {}
  ~ManifestGuard() {
    std::error_code error;
    fs::remove(path_, error);
  }

 private:
  fs::path path_;
};

// Reads the finished tensors of `previous` back from its temporary, repacks
// them into `writer` when their bytes hash as recorded, and returns those.
absl::StatusOr<std::map<std::string, FinishedTensor>> ReuseFinished(
    const Manifest& previous, const fs::path& temporary, const std::vector<PlannedTensor>& plan,
    QuantizedCheckpointWriter& writer, std::string* note) {
  std::map<std::string, FinishedTensor> reused;
  absl::StatusOr<QuantizedCheckpoint> old = QuantizedCheckpoint::Open(temporary.string());
  if (!old.ok()) {
    *note = absl::StrCat("the interrupted run's file cannot be read back (", old.status().message(),
                         "); starting over");
    return reused;
  }
  int64_t damaged = 0;
  for (const PlannedTensor& p : plan) {
    if (!p.layout) continue;
    const auto it = previous.finished.find(p.report.name);
    if (it == previous.finished.end()) continue;
    PackedWeight packed(*p.layout);
    bool intact = true;
    for (int64_t m = 0; intact && m < p.layout->matrices(); ++m) {
      absl::StatusOr<UnpackedMatrix> matrix = old->Unpack(p.report.name, m);
      intact = matrix.ok() && matrix->info.rows == p.layout->rows() &&
               packed.Pack(m, 0, p.layout->rows(), matrix->codes, matrix->scale, matrix->zero).ok();
    }
    old->Release(p.report.name);
    if (!intact || PartHashes(packed) != it->second.hashes) {
      ++damaged;
      continue;
    }
    GQ_RETURN_IF_ERROR(writer.WritePacked(packed));
    reused.emplace(p.report.name, it->second);
  }
  *note = absl::StrFormat("reused %d quantized tensors of an interrupted run", reused.size());
  if (damaged > 0) absl::StrAppend(note, absl::StrFormat(" (%d did not verify; redone)", damaged));
  return reused;
}

}  // namespace

absl::StatusOr<QuantizeReport> QuantizeCheckpoint(const Recipe& recipe,
                                                  const QuantizeJobOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  GQ_ASSIGN_OR_RETURN(const Checkpoint checkpoint, Checkpoint::Open(options.input));
  GQ_ASSIGN_OR_RETURN(const ModelFacts facts, ReadModelFacts(checkpoint));
  ThreadPool pool(options.threads);

  // ---- plan: every output tensor, its rule, its stored size and memory ----
  std::vector<PlannedTensor> plan;
  const bool has_lm_head = checkpoint.Find(kLmHead) != nullptr;
  for (const std::string& name : checkpoint.TensorNames()) {
    const SafetensorsTensorInfo& info = *checkpoint.Find(name);
    GQ_ASSIGN_OR_RETURN(PlannedTensor planned, PlanTensor(recipe, info, name, facts.num_layers));
    plan.push_back(std::move(planned));
    // A tied lm_head is absent from HF checkpoints; when the recipe gives it a
    // config, quantize it independently from the embedding (spec §2.5).
    const bool is_embedding = name.ends_with("embed_tokens.weight");
    if (is_embedding && facts.tied_embeddings && !has_lm_head &&
        recipe.Match(kLmHead, facts.num_layers).config) {
      GQ_ASSIGN_OR_RETURN(PlannedTensor head,
                          PlanTensor(recipe, info, std::string(kLmHead), facts.num_layers));
      plan.push_back(std::move(head));
    }
  }
  for (PlannedTensor& p : plan) {
    const bool whole = p.report.config && WholeMatrix(*p.report.config, options);
    p.report.working_set_bytes = WorkingSetBytes(p, whole, pool.num_threads());
    const int64_t need = kBaselineMemoryBytes + p.report.working_set_bytes;
    if (options.max_memory > 0 && need > options.max_memory) {
      return MemoryTooSmall(options.max_memory, p.report.name, need);
    }
  }
  if (options.dry_run) {
    QuantizeReport report = BuildReport(recipe, plan);
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
  }

  // ---- the output directory: lock it, pick up or clear what a killed run left ----
  const fs::path out_dir(options.output_dir);
  std::error_code error;
  fs::create_directories(out_dir, error);
  if (error) {
    return absl::InternalError(absl::StrFormat("cannot create output directory '%s': %s",
                                               options.output_dir, error.message()));
  }
  GQ_ASSIGN_OR_RETURN(const std::unique_ptr<DirectoryLock> lock,
                      DirectoryLock::Acquire(options.output_dir));
  GQ_ASSIGN_OR_RETURN(Json identity, JobIdentity(recipe, options, checkpoint));
  std::optional<Manifest> previous;
  std::string resume_note;
  if (options.resume) {
    previous = ReadManifest(out_dir);
    if (!previous) {
      resume_note = "no interrupted run to resume; starting over";
    } else if (previous->identity != identity) {
      resume_note = "the interrupted run had another recipe, input or quantizer; starting over";
      previous.reset();
    } else if (!fs::exists(out_dir / previous->temporary)) {
      resume_note = "the interrupted run's file is gone; starting over";
      previous.reset();
    }
  }
  if (previous) {
    // Reusing a tensor holds it packed twice and one matrix unpacked.
    for (const PlannedTensor& p : plan) {
      if (!p.layout || !previous->finished.contains(p.report.name)) continue;
      const int64_t need = kBaselineMemoryBytes + ReuseWorkingSetBytes(*p.layout);
      if (options.max_memory > 0 && need > options.max_memory) {
        return MemoryTooSmall(options.max_memory, p.report.name, need);
      }
    }
  }
  RemoveStaleFiles(out_dir, previous ? previous->temporary : std::string());

  // ---- write: header first, then payloads as the input streams by ----
  std::vector<QuantizedCheckpointEntry> entries;
  std::multimap<std::string, size_t> by_source;
  for (size_t i = 0; i < plan.size(); ++i) {
    const TensorReport& r = plan[i].report;
    by_source.emplace(r.source, i);
    entries.push_back({r.name, plan[i].layout, r.dtype, r.shape});
  }
  GQ_ASSIGN_OR_RETURN(
      std::unique_ptr<QuantizedCheckpointWriter> writer,
      QuantizedCheckpointWriter::Create((out_dir / kSafetensorsSingleFile).string(), entries,
                                        {{"gquant.recipe", recipe.ToJson()}}));
  Manifest manifest{identity, fs::path(writer->temp_path()).filename().string(), {}};
  ManifestGuard manifest_guard(out_dir / kManifestFile);
  int64_t resumed = 0;
  if (previous) {
    GQ_ASSIGN_OR_RETURN(manifest.finished, ReuseFinished(*previous, out_dir / previous->temporary,
                                                         plan, *writer, &resume_note));
    resumed = static_cast<int64_t>(manifest.finished.size());
  }
  const auto write_manifest = [&]() -> absl::Status {
    return WriteFileAtomically((out_dir / kManifestFile).string(), ManifestToJson(manifest));
  };
  GQ_RETURN_IF_ERROR(write_manifest());
  if (previous) fs::remove(out_dir / previous->temporary, error);
  auto last_checkpoint = std::chrono::steady_clock::now();

  JobProgress progress;
  progress.tensors_total = static_cast<int64_t>(plan.size());
  progress.bytes_total = SummarizeCheckpoint(checkpoint).total.bytes;
  GQ_RETURN_IF_ERROR(checkpoint.ForEachTensor([&](const Tensor& input) -> absl::Status {
    const auto [first, last] = by_source.equal_range(input.name());
    for (auto it = first; it != last; ++it) {
      PlannedTensor& p = plan[it->second];
      TensorReport& r = p.report;
      progress.current = r.name;
      if (!p.layout) {
        GQ_RETURN_IF_ERROR(writer->WritePlain(r.name, input.bytes()));
      } else if (const auto done = manifest.finished.find(r.name);
                 done != manifest.finished.end()) {
        r.relative_error = done->second.stats.RelativeError();
        r.snr_db = done->second.stats.SnrDb();
        r.subnormal_values = done->second.scan.subnormal;
        r.constant_groups = done->second.scan.constant_groups;
        r.zero_groups = done->second.scan.zero_groups;
      } else {
        FinishedTensor finished;
        auto packed =
            QuantizeTensor(input, *p.layout, options, &pool, &finished.stats, &finished.scan);
        if (!packed.ok()) {
          return Annotate(packed.status(), "tensor '", r.name, "' (rule ", r.rule_index, ")");
        }
        GQ_RETURN_IF_ERROR(writer->WritePacked(*packed));
        r.relative_error = finished.stats.RelativeError();
        r.snr_db = finished.stats.SnrDb();
        r.subnormal_values = finished.scan.subnormal;
        r.constant_groups = finished.scan.constant_groups;
        r.zero_groups = finished.scan.zero_groups;
        finished.hashes = PartHashes(*packed);
        manifest.finished.emplace(r.name, std::move(finished));
        const auto now = std::chrono::steady_clock::now();
        if (std::chrono::duration<double>(now - last_checkpoint).count() >=
            options.checkpoint_seconds) {
          GQ_RETURN_IF_ERROR(write_manifest());
          last_checkpoint = now;
        }
      }
      progress.tensors_done += 1;
      if (options.progress) options.progress(progress);
    }
    progress.bytes_done += static_cast<int64_t>(input.num_bytes());
    return absl::OkStatus();
  }));

  // ---- commit: auxiliary copies, the weights (the commit point), the report ----
  GQ_RETURN_IF_ERROR(CopyAuxiliaryFiles(checkpoint.directory(), options.output_dir));
  GQ_RETURN_IF_ERROR(writer->Commit());
  QuantizeReport report = BuildReport(recipe, plan);
  report.resumed_tensors = resumed;
  report.resume_note = resume_note;
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  GQ_RETURN_IF_ERROR(WriteFileAtomically((out_dir / kReportFile).string(), report.ToJson()));
  return report;  // manifest_guard removes the manifest: nothing is left to resume
}

// ---- report formatting ----

std::string QuantizeReport::ToJson() const {
  auto config_json = [](const std::optional<QuantConfig>& config) -> Json {
    if (!config) return nullptr;
    return Json{{"bits", config->bits},
                {"group_size", config->group_size == kPerRowGroupSize ? Json("per_row")
                                                                      : Json(config->group_size)},
                {"symmetric", config->symmetric},
                {"method", std::string(QuantMethodName(config->method))}};
  };
  Json rules_json = Json::array();
  for (const RuleReport& r : rules) {
    rules_json.push_back({{"rule", r.rule_index},
                          {"pattern", r.pattern},
                          {"config", config_json(r.config)},
                          {"tensors", r.tensors},
                          {"bytes_before", r.bytes_before},
                          {"bytes_after", r.bytes_after}});
  }
  Json tensors_json = Json::array();
  for (const TensorReport& t : tensors) {
    Json entry = {{"name", t.name},
                  {"source", t.source},
                  {"rule", t.rule_index},
                  {"config", config_json(t.config)},
                  {"dtype", std::string(DTypeName(t.dtype))},
                  {"shape", t.shape},
                  {"bytes_before", t.bytes_before},
                  {"bytes_after", t.bytes_after}};
    if (t.config) {
      entry["relative_error"] = t.relative_error;
      entry["snr_db"] = t.snr_db;
      entry["subnormal_values"] = t.subnormal_values;
      entry["constant_groups"] = t.constant_groups;
      entry["zero_groups"] = t.zero_groups;
    }
    entry["working_set_bytes"] = t.working_set_bytes;
    tensors_json.push_back(std::move(entry));
  }
  return Json{{"recipe", recipe},           {"bytes_before", bytes_before},
              {"bytes_after", bytes_after}, {"memory_bound_bytes", memory_bound_bytes},
              {"seconds", seconds},         {"rules", rules_json},
              {"tensors", tensors_json}}
      .dump(1);
}

std::string QuantizeReport::ToText(bool per_tensor) const {
  std::string out = absl::StrFormat(
      "recipe '%s': %d tensors, %s -> %s bytes (%.2fx smaller) in %.2f s\n", recipe, tensors.size(),
      FormatWithThousands(bytes_before), FormatWithThousands(bytes_after),
      bytes_after > 0 ? static_cast<double>(bytes_before) / bytes_after : 0.0, seconds);
  absl::StrAppendFormat(&out, "%4s  %-40s %-24s %7s %15s %15s\n", "rule", "pattern", "config",
                        "tensors", "bytes before", "bytes after");
  for (const RuleReport& r : rules) {
    absl::StrAppendFormat(&out, "%4s  %-40s %-24s %7d %15s %15s\n",
                          r.rule_index < 0 ? "--" : absl::StrCat(r.rule_index), r.pattern,
                          ConfigToString(r.config), r.tensors, FormatWithThousands(r.bytes_before),
                          FormatWithThousands(r.bytes_after));
  }
  int64_t constant = 0, zero = 0, subnormal = 0;
  for (const TensorReport& t : tensors) {
    constant += t.constant_groups;
    zero += t.zero_groups;
    subnormal += t.subnormal_values;
  }
  absl::StrAppendFormat(&out,
                        "numerics: %d constant groups (%d all zero), %d subnormal values "
                        "(kept; see gquant/quantize.h)\n",
                        constant, zero, subnormal);
  absl::StrAppendFormat(&out, "memory bound: %s bytes\n", FormatWithThousands(memory_bound_bytes));
  if (!resume_note.empty()) absl::StrAppendFormat(&out, "resume: %s\n", resume_note);
  if (!per_tensor) return out;
  size_t width = 6;
  for (const TensorReport& t : tensors) width = std::max(width, t.name.size());
  absl::StrAppendFormat(&out, "%-*s  %-24s %10s %8s\n", static_cast<int>(width), "tensor", "config",
                        "rel.error", "SNR dB");
  for (const TensorReport& t : tensors) {
    if (!t.config) continue;
    absl::StrAppendFormat(&out, "%-*s  %-24s %10.5f %8.2f\n", static_cast<int>(width), t.name,
                          ConfigToString(t.config), t.relative_error, t.snr_db);
  }
  return out;
}

}  // namespace gquant
