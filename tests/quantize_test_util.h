// Small exact helpers shared by the quantizer tests' reference formulas.
#ifndef GQUANT_TESTS_QUANTIZE_TEST_UTIL_H_
#define GQUANT_TESTS_QUANTIZE_TEST_UTIL_H_

#include <cmath>

#include "gquant/dtype.h"

namespace gquant::testing {

// Round half to even, by hand (no nearbyint), so the reference does not
// share the library's rounding call.
inline double RoundHalfEven(double v) {
  const double f = std::floor(v);
  const double frac = v - f;
  if (frac > 0.5) return f + 1;
  if (frac < 0.5) return f;
  return std::fmod(f, 2.0) == 0 ? f : f + 1;
}

// v rounded to the nearest bf16 value.
inline float Bf16(float v) { return BFloat16ToFloat(FloatToBFloat16(v)); }

}  // namespace gquant::testing

#endif  // GQUANT_TESTS_QUANTIZE_TEST_UTIL_H_
