// Lookups over the ggml type registry and the size-checked entry points to the
// reference row functions (the functions themselves live in
// ggml_dequantize.cc and ggml_quantize.cc).
#include "gquant/ggml_format.h"

#include <string>

#include "absl/strings/str_format.h"
#include "gquant/status.h"

namespace gquant {
namespace {

// The live traits of `type`, or InvalidArgument naming the caller.
absl::StatusOr<const GgmlTypeTraits*> LiveTraits(GgmlType type, std::string_view what) {
  const GgmlTypeTraits* traits = FindGgmlType(static_cast<uint32_t>(type));
  if (traits == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: ggml type id %d is unknown or retired",
                                                      std::string(what),
                                                      static_cast<uint32_t>(type)));
  }
  return traits;
}

}  // namespace

const GgmlTypeTraits* FindGgmlType(uint32_t id) {
  if (id >= kGgmlTypeIdCount) return nullptr;
  const GgmlTypeTraits& traits = kGgmlTypeTraits[id];
  return traits.block_elements == 0 ? nullptr : &traits;
}

std::string GgmlTypeName(uint32_t id) {
  const GgmlTypeTraits* traits = FindGgmlType(id);
  return traits != nullptr ? std::string(traits->name) : absl::StrFormat("type %d", id);
}

absl::StatusOr<GgmlType> GgmlTypeFromName(std::string_view name) {
  for (const GgmlTypeTraits& traits : kGgmlTypeTraits) {
    if (traits.block_elements != 0 && traits.name == name) return traits.type;
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("ggml type name '%s': expected a ggml type such as 'q4_K', but it is unknown",
                      std::string(name)));
}

absl::StatusOr<uint64_t> GgmlRowBytes(GgmlType type, int64_t elements) {
  GQ_ASSIGN_OR_RETURN(const GgmlTypeTraits* traits, LiveTraits(type, "GgmlRowBytes"));
  if (elements < 0 || elements % traits->block_elements != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("row of %s: expected a non-negative multiple of %d elements, but got %d",
                        std::string(traits->name), traits->block_elements, elements));
  }
  return static_cast<uint64_t>(elements / traits->block_elements) *
         static_cast<uint64_t>(traits->block_bytes);
}

absl::Status DequantizeGgml(GgmlType type, std::span<const std::byte> blocks,
                            std::span<float> out) {
  GQ_ASSIGN_OR_RETURN(const GgmlTypeTraits* traits, LiveTraits(type, "DequantizeGgml"));
  if (traits->dequantize_row == nullptr) {
    return absl::UnimplementedError(absl::StrFormat("DequantizeGgml: no decoder for ggml type '%s'",
                                                    std::string(traits->name)));
  }
  const uint64_t block_bytes = static_cast<uint64_t>(traits->block_bytes);
  if (blocks.size() % block_bytes != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s blocks: expected a multiple of %d bytes, but got %d bytes",
                        std::string(traits->name), block_bytes, blocks.size()));
  }
  const uint64_t elements = blocks.size() / block_bytes * traits->block_elements;
  if (out.size() != elements) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s output: expected %d floats for %d bytes of blocks, but got %d",
                        std::string(traits->name), elements, blocks.size(), out.size()));
  }
  if (elements > 0) {
    traits->dequantize_row(blocks.data(), out.data(), static_cast<int64_t>(elements));
  }
  return absl::OkStatus();
}

absl::Status QuantizeGgmlRef(GgmlType type, std::span<const float> in, std::span<std::byte> out) {
  GQ_ASSIGN_OR_RETURN(const GgmlTypeTraits* traits, LiveTraits(type, "QuantizeGgmlRef"));
  if (traits->quantize_row_ref == nullptr) {
    return absl::UnimplementedError(absl::StrFormat(
        "QuantizeGgmlRef: no reference encoder for ggml type '%s'", std::string(traits->name)));
  }
  GQ_ASSIGN_OR_RETURN(const uint64_t bytes, GgmlRowBytes(type, static_cast<int64_t>(in.size())));
  if (out.size() != bytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s output: expected %d bytes for %d elements, but got %d",
                        std::string(traits->name), bytes, in.size(), out.size()));
  }
  if (!in.empty()) {
    traits->quantize_row_ref(in.data(), out.data(), static_cast<int64_t>(in.size()));
  }
  return absl::OkStatus();
}

}  // namespace gquant
