// Internal: JSON parsing that refuses repeated object keys. nlohmann keeps one
// of two equal keys silently; in a recipe a repeated "config" would hide half
// a rule, in a shard index a repeated tensor name would hide a tensor.
// Also the size and depth limits every JSON input of gquant goes through.
#ifndef GQUANT_SRC_STRICT_JSON_H_
#define GQUANT_SRC_STRICT_JSON_H_

#include <cstddef>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace gquant::internal {

// Deepest nesting of arrays and objects accepted. gquant's JSON inputs need at
// most 5 (a recipe's layer ranges); nlohmann parses iteratively, but dump(),
// copies and comparisons of a parsed tree recurse, so a hostile 100000-deep
// document would overflow the stack in an error message or a copy.
inline constexpr int kMaxJsonDepth = 64;
// Largest JSON text accepted: config.json and recipes are a few KB, the shard
// index of a 31B model ~100 KB; nlohmann's tree takes several times the text.
inline constexpr size_t kMaxJsonBytes = size_t{16} << 20;

// InvalidArgument when `text` is longer than kMaxJsonBytes or nests deeper
// than kMaxJsonDepth (brackets inside strings do not count). One pass over the
// text, without allocating: run it before handing the text to nlohmann.
inline absl::Status CheckJsonLimits(std::string_view text) {
  if (text.size() > kMaxJsonBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("JSON text of ", text.size(), " bytes: expected at most ", kMaxJsonBytes));
  }
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character cannot end the string
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) {
        return absl::InvalidArgumentError(absl::StrCat("invalid JSON: expected nesting at most ",
                                                       kMaxJsonDepth,
                                                       " deep, but got deeper at byte ", i));
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return absl::OkStatus();
}

// Parses `text` as nlohmann::json or nlohmann::ordered_json. Returns
// InvalidArgument "invalid JSON: ..." (also for invalid UTF-8), "duplicate key
// '<k>'" (at any depth), or CheckJsonLimits' errors; callers re-code it where
// the input is a file (DataLoss).
template <typename Json>
absl::StatusOr<Json> ParseStrictJson(std::string_view text) {
  if (absl::Status limits = CheckJsonLimits(text); !limits.ok()) return limits;
  std::vector<std::set<std::string>> keys;  // keys seen, per open object depth
  std::string duplicate;
  auto guard = [&](int depth, typename Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) {
      if (keys.size() < static_cast<size_t>(depth) + 2) keys.resize(depth + 2);
      keys[depth + 1].clear();
    } else if (event == Json::parse_event_t::key && duplicate.empty()) {
      if (!keys[depth].insert(parsed.template get<std::string>()).second) {
        duplicate = parsed.template get<std::string>();
      }
    }
    return true;
  };
  Json root;
  try {
    root = Json::parse(text.begin(), text.end(), guard);
  } catch (const typename Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("invalid JSON: ", e.what()));
  }
  if (!duplicate.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("duplicate key '", duplicate, "'"));
  }
  return root;
}

}  // namespace gquant::internal

#endif  // GQUANT_SRC_STRICT_JSON_H_
