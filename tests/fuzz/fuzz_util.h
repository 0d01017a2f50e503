// Helpers shared by the libFuzzer targets: an invariant check that crashes
// (so libFuzzer records the input), and a reader of selector bytes.
#ifndef GQUANT_TESTS_FUZZ_FUZZ_UTIL_H_
#define GQUANT_TESTS_FUZZ_FUZZ_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string_view>

#include "absl/status/status.h"

// A broken invariant of a successfully parsed result is a bug, like a crash.
#define FUZZ_CHECK(cond)                                                                 \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

namespace gquant::fuzz {

inline std::span<const std::byte> AsBytes(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const std::byte*>(data), size};
}

inline std::string_view AsText(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// A parser error must carry a message that names its source (the contract of
// every parser's doc comment): checked on every rejected input.
inline void CheckErrorNames(const absl::Status& status, std::string_view source) {
  FUZZ_CHECK(!status.ok());
  // Debian's Abseil has its own string_view.
  const std::string_view message(status.message().data(), status.message().size());
  FUZZ_CHECK(message.find(source) != std::string_view::npos);
}

// Takes selector bytes off the front of the input; zeros once it runs out.
class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  uint8_t Byte() {
    if (size_ == 0) return 0;
    --size_;
    return *data_++;
  }
  uint32_t Uint16() { return Byte() | (uint32_t{Byte()} << 8); }
  // The bytes not consumed yet.
  std::span<const std::byte> Rest() const { return AsBytes(data_, size_); }

 private:
  const uint8_t* data_;
  size_t size_;
};

}  // namespace gquant::fuzz

#endif  // GQUANT_TESTS_FUZZ_FUZZ_UTIL_H_
