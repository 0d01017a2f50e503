// Internal: JSON parsing that refuses repeated object keys. nlohmann keeps one
// of two equal keys silently; in a recipe a repeated "config" would hide half
// a rule, in a shard index a repeated tensor name would hide a tensor.
#ifndef GQUANT_SRC_STRICT_JSON_H_
#define GQUANT_SRC_STRICT_JSON_H_

#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace gquant::internal {

// Parses `text` as nlohmann::json or nlohmann::ordered_json. Returns
// InvalidArgument "invalid JSON: ..." or "duplicate key '<k>'" (at any depth);
// callers re-code it where the input is a file (DataLoss).
template <typename Json>
absl::StatusOr<Json> ParseStrictJson(std::string_view text) {
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
