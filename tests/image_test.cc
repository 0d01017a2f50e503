// Image decoding (PNG and JPEG written here with libpng and libjpeg, plus
// PIL's decode of the fixture JPEG), hostile input, and the antialiased
// bicubic resize against a float64 reference written independently.
#include "gquant/image.h"

#include <png.h>
#include <setjmp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

// jpeglib.h needs FILE and size_t declared first.
#include <jpeglib.h>

#include "absl/strings/str_cat.h"
#include "golden_util.h"
#include "test_util.h"

namespace gquant {
namespace {

using testing::MakeRng;

std::vector<uint8_t> RandomBytes(std::mt19937_64& rng, size_t n) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::vector<uint8_t> out(n);
  for (auto& b : out) b = static_cast<uint8_t>(byte(rng));
  return out;
}

int RandomInt(std::mt19937_64& rng, int lo, int hi) {
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

// A smooth random image (a sum of random ramps and a little noise), so a
// JPEG of it stays close to the source.
RgbImage SmoothImage(std::mt19937_64& rng, int height, int width) {
  std::uniform_real_distribution<double> u(0, 1);
  RgbImage image{height, width, std::vector<uint8_t>(size_t{3} * height * width)};
  for (int c = 0; c < 3; ++c) {
    const double a = u(rng) * 100, b = u(rng) * 100, fx = u(rng) * 0.3, fy = u(rng) * 0.3;
    for (int y = 0; y < height; ++y) {
      for (int x = 0; x < width; ++x) {
        const double v = 128 + a * std::sin(fx * x) + b * std::cos(fy * y) + 8 * (u(rng) - 0.5);
        image.pixels[(size_t{3} * (y * width + x)) + c] =
            static_cast<uint8_t>(std::clamp(std::lround(v), 0L, 255L));
      }
    }
  }
  return image;
}

// ---------------------------------------------------------------------------
// Writing PNGs with libpng.

// Rows exactly as PNG stores them: sub-byte samples packed from the high bit,
// 16-bit samples big-endian.
struct PngSpec {
  int width = 0;
  int height = 0;
  int color_type = PNG_COLOR_TYPE_RGB;
  int bit_depth = 8;
  bool interlaced = false;
  std::vector<uint8_t> rows;
  std::vector<png_color> palette;
  std::vector<uint8_t> palette_alpha;  // tRNS of a palette image

  size_t RowBytes() const {
    const int channels = color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_PALETTE
                             ? 1
                         : color_type == PNG_COLOR_TYPE_GRAY_ALPHA ? 2
                         : color_type == PNG_COLOR_TYPE_RGB        ? 3
                                                                   : 4;
    return (size_t{static_cast<size_t>(width)} * channels * bit_depth + 7) / 8;
  }
};

void AppendToVector(png_structp png, png_bytep data, png_size_t length) {
  auto* out = static_cast<std::vector<uint8_t>*>(png_get_io_ptr(png));
  out->insert(out->end(), data, data + length);
}

void FlushNothing(png_structp) {}

// libpng's default error handler longjmps here; no C++ object is created
// between setjmp and the libpng calls.
bool WritePngTo(const PngSpec* spec, png_bytep* row_pointers, std::vector<uint8_t>* out) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png != nullptr ? png_create_info_struct(png) : nullptr;
  if (info == nullptr) return false;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_set_write_fn(png, out, AppendToVector, FlushNothing);
  png_set_IHDR(png, info, spec->width, spec->height, spec->bit_depth, spec->color_type,
               spec->interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (!spec->palette.empty()) {
    png_set_PLTE(png, info, spec->palette.data(), static_cast<int>(spec->palette.size()));
  }
  if (!spec->palette_alpha.empty()) {
    png_set_tRNS(png, info, spec->palette_alpha.data(),
                 static_cast<int>(spec->palette_alpha.size()), nullptr);
  }
  png_write_info(png, info);
  png_write_image(png, row_pointers);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return true;
}

std::vector<uint8_t> EncodePng(PngSpec spec) {
  REQUIRE(spec.rows.size() == spec.RowBytes() * spec.height);
  std::vector<png_bytep> row_pointers(spec.height);
  for (int y = 0; y < spec.height; ++y) row_pointers[y] = &spec.rows[y * spec.RowBytes()];
  std::vector<uint8_t> out;
  REQUIRE(WritePngTo(&spec, row_pointers.data(), &out));
  return out;
}

PngSpec RandomRgbPng(std::mt19937_64& rng, int height, int width) {
  PngSpec spec{width, height, PNG_COLOR_TYPE_RGB, 8};
  spec.rows = RandomBytes(rng, spec.RowBytes() * height);
  return spec;
}

// The CRC of a PNG chunk (ISO 3309 / ITU-T V.42, bit by bit).
uint32_t Crc32(const uint8_t* data, size_t n) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    crc ^= data[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return crc ^ 0xFFFFFFFFu;
}

void PutBigEndian32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (24 - 8 * i));
}

// ---------------------------------------------------------------------------
// Writing and reading JPEGs with libjpeg directly.

struct TestJpegError {
  jpeg_error_mgr manager;
  jmp_buf jump;
};

void TestJpegErrorExit(j_common_ptr cinfo) {
  longjmp(reinterpret_cast<TestJpegError*>(cinfo->err)->jump, 1);
}

struct JpegBuffer {
  unsigned char* data = nullptr;
  unsigned long size = 0;
};

bool WriteJpegTo(const uint8_t* pixels, int height, int width, int components, J_COLOR_SPACE space,
                 int quality, bool progressive, jpeg_compress_struct* cinfo, TestJpegError* error,
                 JpegBuffer* out) {
  if (setjmp(error->jump)) return false;
  jpeg_create_compress(cinfo);
  jpeg_mem_dest(cinfo, &out->data, &out->size);
  cinfo->image_width = width;
  cinfo->image_height = height;
  cinfo->input_components = components;
  cinfo->in_color_space = space;
  jpeg_set_defaults(cinfo);
  jpeg_set_quality(cinfo, quality, TRUE);
  if (progressive) jpeg_simple_progression(cinfo);
  jpeg_start_compress(cinfo, TRUE);
  while (cinfo->next_scanline < cinfo->image_height) {
    JSAMPROW row = const_cast<uint8_t*>(pixels) + size_t{cinfo->next_scanline} * width * components;
    jpeg_write_scanlines(cinfo, &row, 1);
  }
  jpeg_finish_compress(cinfo);
  return true;
}

std::vector<uint8_t> EncodeJpeg(const std::vector<uint8_t>& pixels, int height, int width,
                                int components, J_COLOR_SPACE space, int quality = 90,
                                bool progressive = false) {
  TestJpegError error{};
  jpeg_compress_struct cinfo{};
  cinfo.err = jpeg_std_error(&error.manager);
  error.manager.error_exit = TestJpegErrorExit;
  JpegBuffer buffer;
  const bool ok = WriteJpegTo(pixels.data(), height, width, components, space, quality, progressive,
                              &cinfo, &error, &buffer);
  jpeg_destroy_compress(&cinfo);
  std::vector<uint8_t> out(buffer.data, buffer.data + (ok ? buffer.size : 0));
  std::free(buffer.data);
  REQUIRE(ok);
  return out;
}

bool ReadJpegGrayTo(const std::vector<uint8_t>* bytes, jpeg_decompress_struct* cinfo,
                    TestJpegError* error, std::vector<uint8_t>* gray) {
  if (setjmp(error->jump)) return false;
  jpeg_create_decompress(cinfo);
  jpeg_mem_src(cinfo, bytes->data(), bytes->size());
  jpeg_read_header(cinfo, TRUE);
  cinfo->out_color_space = JCS_GRAYSCALE;
  jpeg_start_decompress(cinfo);
  gray->resize(size_t{cinfo->output_width} * cinfo->output_height);
  while (cinfo->output_scanline < cinfo->output_height) {
    JSAMPROW row = gray->data() + size_t{cinfo->output_scanline} * cinfo->output_width;
    jpeg_read_scanlines(cinfo, &row, 1);
  }
  jpeg_finish_decompress(cinfo);
  return true;
}

// libjpeg's own grayscale decode, to compare DecodeImage's RGB against.
std::vector<uint8_t> DecodeJpegGray(const std::vector<uint8_t>& bytes) {
  TestJpegError error{};
  jpeg_decompress_struct cinfo{};
  cinfo.err = jpeg_std_error(&error.manager);
  error.manager.error_exit = TestJpegErrorExit;
  std::vector<uint8_t> gray;
  const bool ok = ReadJpegGrayTo(&bytes, &cinfo, &error, &gray);
  jpeg_destroy_decompress(&cinfo);
  REQUIRE(ok);
  return gray;
}

absl::StatusOr<RgbImage> Decode(const std::vector<uint8_t>& bytes) {
  return DecodeImage(bytes, "test image");
}

// ---------------------------------------------------------------------------

TEST_CASE("DecodeImage reads the fixture JPEG exactly as PIL does", "[image]") {
  const std::string dir = testing::FixtureDir("tiny-e2b-vision");
  auto golden = SafetensorsFile::Open(dir + "/golden.safetensors");
  REQUIRE_OK(golden);
  const std::vector<uint8_t> expected = testing::ReadBytes(*golden, "jpeg_pixels_u8");
  auto image = ReadImageFile(dir + "/image.jpg");
  REQUIRE_OK(image);
  REQUIRE(image->height == 100);
  REQUIRE(image->width == 150);
  REQUIRE(image->pixels.size() == expected.size());
  // Both are libjpeg-turbo with the islow IDCT and fancy upsampling, which
  // are integer algorithms: the bytes must agree exactly.
  int64_t differing = 0;
  for (size_t i = 0; i < expected.size(); ++i) differing += image->pixels[i] != expected[i];
  CAPTURE(differing);
  CHECK(differing == 0);
}

TEST_CASE("ReadImageFile reads the fixture PNGs", "[image]") {
  for (auto [name, height, width] :
       {std::tuple{"tiny-31b-vision", 360, 540}, std::tuple{"tiny-e2b-vision", 100, 150}}) {
    CAPTURE(name);
    auto image = ReadImageFile(testing::FixtureDir(name) + "/image.png");
    REQUIRE_OK(image);
    CHECK(image->height == height);
    CHECK(image->width == width);
    REQUIRE(image->pixels.size() == size_t{3} * height * width);
    CHECK(*std::max_element(image->pixels.begin(), image->pixels.end()) > 0);
  }
}

TEST_CASE("DecodeImage converts every PNG colour type to RGB as PIL does", "[image]") {
  auto rng = MakeRng();
  const int height = RandomInt(rng, 1, 23), width = RandomInt(rng, 1, 37);
  CAPTURE(height, width);
  const size_t pixels = size_t{static_cast<size_t>(height)} * width;

  // Checks the decode of `spec` against expected(pixel index, channel).
  auto check = [&](const PngSpec& spec, auto expected) {
    auto image = Decode(EncodePng(spec));
    REQUIRE_OK(image);
    REQUIRE(image->height == height);
    REQUIRE(image->width == width);
    int64_t wrong = 0;
    for (size_t p = 0; p < pixels; ++p) {
      for (int c = 0; c < 3; ++c) wrong += image->pixels[3 * p + c] != expected(p, c);
    }
    CHECK(wrong == 0);
  };

  SECTION("8-bit gray is replicated") {
    PngSpec spec{width, height, PNG_COLOR_TYPE_GRAY, 8};
    spec.rows = RandomBytes(rng, spec.RowBytes() * height);
    check(spec,
          [&](size_t p, int) { return spec.rows[(p / width) * spec.RowBytes() + p % width]; });
  }
  SECTION("1-, 2- and 4-bit gray are scaled to 0..255") {
    for (int depth : {1, 2, 4}) {
      CAPTURE(depth);
      PngSpec spec{width, height, PNG_COLOR_TYPE_GRAY, depth};
      const int max = (1 << depth) - 1;
      std::vector<int> samples(pixels);
      for (auto& s : samples) s = RandomInt(rng, 0, max);
      spec.rows.assign(spec.RowBytes() * height, 0);
      for (size_t p = 0; p < pixels; ++p) {
        const size_t bit = (p % width) * depth;
        spec.rows[(p / width) * spec.RowBytes() + bit / 8] |=
            static_cast<uint8_t>(samples[p] << (8 - depth - bit % 8));
      }
      check(spec, [&](size_t p, int) { return samples[p] * (255 / max); });
    }
  }
  SECTION("gray + alpha drops the alpha; 16-bit keeps the high byte") {
    for (int depth : {8, 16}) {
      CAPTURE(depth);
      PngSpec spec{width, height, PNG_COLOR_TYPE_GRAY_ALPHA, depth};
      spec.rows = RandomBytes(rng, spec.RowBytes() * height);
      const int sample_bytes = depth / 8;
      check(spec, [&](size_t p, int) {
        return spec.rows[(p / width) * spec.RowBytes() + (p % width) * 2 * sample_bytes];
      });
    }
  }
  SECTION("16-bit gray clips to 255 (PIL's I;16 -> RGB), it is not scaled") {
    PngSpec spec{width, height, PNG_COLOR_TYPE_GRAY, 16};
    std::vector<int> samples(pixels);
    for (auto& s : samples)
      s = RandomInt(rng, 0, 1) ? RandomInt(rng, 0, 255) : RandomInt(rng, 0, 65535);
    spec.rows.resize(spec.RowBytes() * height);
    for (size_t p = 0; p < pixels; ++p) {
      uint8_t* at = &spec.rows[(p / width) * spec.RowBytes() + (p % width) * 2];
      at[0] = static_cast<uint8_t>(samples[p] >> 8);
      at[1] = static_cast<uint8_t>(samples[p] & 0xFF);
    }
    check(spec, [&](size_t p, int) { return std::min(samples[p], 255); });
  }
  SECTION("palettes expand, with or without tRNS, at 8 and 4 bits") {
    for (int depth : {8, 4}) {
      CAPTURE(depth);
      PngSpec spec{width, height, PNG_COLOR_TYPE_PALETTE, depth};
      const int entries = RandomInt(rng, 1, 1 << depth);
      const auto colours = RandomBytes(rng, size_t{3} * entries);
      for (int i = 0; i < entries; ++i) {
        spec.palette.push_back({colours[3 * i], colours[3 * i + 1], colours[3 * i + 2]});
      }
      if (depth == 8) spec.palette_alpha = RandomBytes(rng, RandomInt(rng, 1, entries));
      std::vector<int> index(pixels);
      for (auto& i : index) i = RandomInt(rng, 0, entries - 1);
      spec.rows.assign(spec.RowBytes() * height, 0);
      for (size_t p = 0; p < pixels; ++p) {
        const size_t bit = (p % width) * depth;
        spec.rows[(p / width) * spec.RowBytes() + bit / 8] |=
            static_cast<uint8_t>(index[p] << (8 - depth - bit % 8));
      }
      check(spec, [&](size_t p, int c) { return colours[3 * index[p] + c]; });
    }
  }
  SECTION("RGB, interlaced RGB and RGBA; 16-bit keeps the high byte") {
    for (auto [type, channels, depth, interlaced] :
         {std::tuple{PNG_COLOR_TYPE_RGB, 3, 8, false}, std::tuple{PNG_COLOR_TYPE_RGB, 3, 8, true},
          std::tuple{PNG_COLOR_TYPE_RGB_ALPHA, 4, 8, false},
          std::tuple{PNG_COLOR_TYPE_RGB, 3, 16, false},
          std::tuple{PNG_COLOR_TYPE_RGB_ALPHA, 4, 16, true}}) {
      CAPTURE(type, depth, interlaced);
      PngSpec spec{width, height, type, depth, interlaced};
      spec.rows = RandomBytes(rng, spec.RowBytes() * height);
      const int sample_bytes = depth / 8;
      const int pixel_channels = channels;  // clang 14 cannot capture a structured binding
      check(spec, [&](size_t p, int c) {
        return spec.rows[(p / width) * spec.RowBytes() +
                         ((p % width) * pixel_channels + c) * sample_bytes];
      });
    }
  }
}

TEST_CASE("DecodeImage reads gray and colour JPEGs and refuses CMYK", "[image]") {
  auto rng = MakeRng();
  const int height = RandomInt(rng, 8, 40), width = RandomInt(rng, 8, 40);
  CAPTURE(height, width);
  const RgbImage source = SmoothImage(rng, height, width);

  SECTION("grayscale: libjpeg's gray decode, replicated") {
    std::vector<uint8_t> gray(size_t{static_cast<size_t>(height)} * width);
    for (size_t p = 0; p < gray.size(); ++p) gray[p] = source.pixels[3 * p];
    const auto jpeg = EncodeJpeg(gray, height, width, 1, JCS_GRAYSCALE, 95);
    const auto expected = DecodeJpegGray(jpeg);
    auto image = Decode(jpeg);
    REQUIRE_OK(image);
    REQUIRE(image->height == height);
    REQUIRE(image->width == width);
    int64_t wrong = 0, far_from_source = 0;
    for (size_t p = 0; p < gray.size(); ++p) {
      for (int c = 0; c < 3; ++c) wrong += image->pixels[3 * p + c] != expected[p];
      // Quality 95 on a smooth image: within a few levels of the source.
      far_from_source += std::abs(int{image->pixels[3 * p]} - int{gray[p]}) > 16;
    }
    CHECK(wrong == 0);
    CHECK(far_from_source == 0);
  }
  SECTION("YCbCr, baseline and progressive: close to the source") {
    for (bool progressive : {false, true}) {
      CAPTURE(progressive);
      auto image = Decode(EncodeJpeg(source.pixels, height, width, 3, JCS_RGB, 95, progressive));
      REQUIRE_OK(image);
      REQUIRE(image->pixels.size() == source.pixels.size());
      double abs_error = 0;
      for (size_t i = 0; i < source.pixels.size(); ++i) {
        abs_error += std::abs(int{image->pixels[i]} - int{source.pixels[i]});
      }
      // Chroma is subsampled 2x2; the mean error of a smooth image at
      // quality 95 stays a few levels.
      CHECK(abs_error / source.pixels.size() < 6.0);
    }
  }
  SECTION("CMYK is Unimplemented") {
    const auto cmyk = RandomBytes(rng, size_t{4} * height * width);
    auto image = Decode(EncodeJpeg(cmyk, height, width, 4, JCS_CMYK));
    REQUIRE_STATUS_IS(image, absl::StatusCode::kUnimplemented);
    CHECK_THAT(std::string(image.status().message()), Catch::Matchers::Contains("CMYK"));
  }
}

TEST_CASE("DecodeImage fails cleanly on truncated files", "[image]") {
  auto rng = MakeRng();
  const int height = RandomInt(rng, 5, 16), width = RandomInt(rng, 5, 16);
  CAPTURE(height, width);
  const RgbImage source = SmoothImage(rng, height, width);
  PngSpec interlaced = RandomRgbPng(rng, height, width);
  interlaced.interlaced = true;
  const std::vector<std::vector<uint8_t>> files = {
      EncodePng(RandomRgbPng(rng, height, width)), EncodePng(interlaced),
      EncodeJpeg(source.pixels, height, width, 3, JCS_RGB),
      EncodeJpeg(source.pixels, height, width, 3, JCS_RGB, 90, /*progressive=*/true)};
  for (size_t f = 0; f < files.size(); ++f) {
    CAPTURE(f, files[f].size());
    REQUIRE_OK(Decode(files[f]));
    // Every proper prefix, down to the empty file: PNG is read to IEND and
    // JPEG to EOI, so each one is an error.
    for (size_t n = 0; n < files[f].size(); ++n) {
      CAPTURE(n);
      const std::vector<uint8_t> prefix(files[f].begin(), files[f].begin() + n);
      REQUIRE_STATUS_IS(Decode(prefix), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST_CASE("DecodeImage rejects garbage, foreign formats and huge headers", "[image]") {
  auto rng = MakeRng();
  SECTION("empty, random and foreign bytes") {
    auto empty = Decode({});
    REQUIRE_STATUS_IS(empty, absl::StatusCode::kInvalidArgument);
    CHECK_THAT(std::string(empty.status().message()), Catch::Matchers::Contains("empty"));
    const std::string gif = "GIF89a\x01\x00\x01\x00\x00\x00\x00;";
    REQUIRE_STATUS_IS(Decode(std::vector<uint8_t>(gif.begin(), gif.end())),
                      absl::StatusCode::kInvalidArgument);
    const std::string text = "hello, this is not an image\n";
    auto not_image = Decode(std::vector<uint8_t>(text.begin(), text.end()));
    REQUIRE_STATUS_IS(not_image, absl::StatusCode::kInvalidArgument);
    CHECK_THAT(std::string(not_image.status().message()), Catch::Matchers::Contains("test image"));
    for (int trial = 0; trial < 50; ++trial) {
      auto bytes = RandomBytes(rng, RandomInt(rng, 1, 2000));
      if (trial % 3 == 1)
        bytes.insert(bytes.begin(), {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'});
      if (trial % 3 == 2) bytes.insert(bytes.begin(), {0xFF, 0xD8, 0xFF});
      CAPTURE(trial, bytes.size());
      REQUIRE_STATUS_IS(Decode(bytes), absl::StatusCode::kInvalidArgument);
    }
  }
  SECTION("a PNG header claiming 100000 x 100000 pixels") {
    auto png = EncodePng(RandomRgbPng(rng, 4, 4));
    // IHDR: length (4) "IHDR" (4) width (4) height (4) ... crc, right after
    // the 8-byte signature.
    REQUIRE(std::memcmp(&png[12], "IHDR", 4) == 0);
    PutBigEndian32(&png[16], 100000);
    PutBigEndian32(&png[20], 100000);
    PutBigEndian32(&png[29], Crc32(&png[12], 17));
    auto image = Decode(png);
    REQUIRE_STATUS_IS(image, absl::StatusCode::kResourceExhausted);
    CHECK_THAT(std::string(image.status().message()), Catch::Matchers::Contains("100000"));
  }
  SECTION("a JPEG header claiming 65000 x 65000 pixels") {
    const RgbImage source = SmoothImage(rng, 8, 8);
    auto jpeg = EncodeJpeg(source.pixels, 8, 8, 3, JCS_RGB);
    size_t sof = 2;
    while (sof + 9 < jpeg.size() && !(jpeg[sof] == 0xFF && jpeg[sof + 1] == 0xC0)) ++sof;
    REQUIRE(sof + 9 < jpeg.size());
    for (size_t at : {sof + 5, sof + 7}) {  // height, then width, big-endian
      jpeg[at] = 65000 >> 8;
      jpeg[at + 1] = 65000 & 0xFF;
    }
    REQUIRE_STATUS_IS(Decode(jpeg), absl::StatusCode::kResourceExhausted);
  }
  SECTION("single-byte corruptions never crash") {
    const RgbImage source = SmoothImage(rng, 16, 16);
    for (const auto& file :
         {EncodePng(RandomRgbPng(rng, 9, 11)), EncodeJpeg(source.pixels, 16, 16, 3, JCS_RGB)}) {
      for (int trial = 0; trial < 300; ++trial) {
        auto bytes = file;
        bytes[RandomInt(rng, 3, static_cast<int>(bytes.size()) - 1)] ^=
            static_cast<uint8_t>(RandomInt(rng, 1, 255));
        auto image = Decode(bytes);
        if (image.ok()) {
          CHECK(image->pixels.size() == size_t{3} * image->height * image->width);
        } else {
          const auto code = image.status().code();
          CHECK((code == absl::StatusCode::kInvalidArgument ||
                 code == absl::StatusCode::kUnimplemented ||
                 code == absl::StatusCode::kResourceExhausted));
        }
      }
    }
  }
}

TEST_CASE("ReadImageFile reports missing files and decode errors with the path", "[image]") {
  testing::TempDir dir;
  REQUIRE_STATUS_IS(ReadImageFile(dir.File("missing.png")), absl::StatusCode::kNotFound);
  const std::string path = dir.File("text.png");
  std::ofstream(path) << "not a png";
  auto image = ReadImageFile(path);
  REQUIRE_STATUS_IS(image, absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(image.status().message()), Catch::Matchers::Contains(path));
}

// ---------------------------------------------------------------------------
// Resize

// Keys' cubic convolution kernel with a = -0.5, in expanded form.
double CubicKernel(double x) {
  x = std::abs(x);
  if (x < 1) return 1.5 * x * x * x - 2.5 * x * x + 1;
  if (x < 2) return -0.5 * x * x * x + 2.5 * x * x - 4 * x + 2;
  return 0;
}

// [out, in] weights of antialiased bicubic resampling: output i is centred at
// (i + 0.5) * in / out in input coordinates, every input pixel (centred at
// j + 0.5) weighs cubic(distance / max(in / out, 1)), and each output's
// weights are normalized over the pixels inside the image.
std::vector<double> ReferenceWeights(int in, int out) {
  const double scale = static_cast<double>(in) / out;
  const double stretch = std::max(scale, 1.0);
  std::vector<double> w(size_t{static_cast<size_t>(out)} * in);
  for (int i = 0; i < out; ++i) {
    double sum = 0;
    for (int j = 0; j < in; ++j) {
      w[size_t{static_cast<size_t>(i)} * in + j] =
          CubicKernel((j + 0.5 - (i + 0.5) * scale) / stretch);
      sum += w[size_t{static_cast<size_t>(i)} * in + j];
    }
    for (int j = 0; j < in; ++j) w[size_t{static_cast<size_t>(i)} * in + j] /= sum;
  }
  return w;
}

// The same resize in float64: rows first, the intermediate clamped to
// 0..255 (it is an 8-bit image in torch), columns, then rounded. No pass
// runs on an axis whose size does not change.
std::vector<double> ReferenceResize(const RgbImage& image, int height, int width) {
  const int h0 = image.height, w0 = image.width;
  std::vector<double> mid(size_t{3} * h0 * width);
  if (width == w0) {
    std::copy(image.pixels.begin(), image.pixels.end(), mid.begin());
  } else {
    const auto w = ReferenceWeights(w0, width);
    for (int y = 0; y < h0; ++y)
      for (int x = 0; x < width; ++x)
        for (int c = 0; c < 3; ++c) {
          double v = 0;
          for (int j = 0; j < w0; ++j)
            v += w[size_t{static_cast<size_t>(x)} * w0 + j] *
                 image.pixels[(size_t{static_cast<size_t>(y)} * w0 + j) * 3 + c];
          mid[(size_t{static_cast<size_t>(y)} * width + x) * 3 + c] = std::clamp(v, 0.0, 255.0);
        }
  }
  if (height == h0) return mid;
  std::vector<double> out(size_t{3} * height * width);
  const auto w = ReferenceWeights(h0, height);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < 3; ++c) {
        double v = 0;
        for (int j = 0; j < h0; ++j)
          v += w[size_t{static_cast<size_t>(y)} * h0 + j] *
               mid[(size_t{static_cast<size_t>(j)} * width + x) * 3 + c];
        out[(size_t{static_cast<size_t>(y)} * width + x) * 3 + c] = v;
      }
  return out;
}

RgbImage RandomImage(std::mt19937_64& rng, int height, int width) {
  return {height, width, RandomBytes(rng, size_t{3} * height * width)};
}

TEST_CASE("ResizeBicubicAntialias keeps identity sizes and constant images", "[image]") {
  auto rng = MakeRng();
  const RgbImage image = RandomImage(rng, RandomInt(rng, 1, 50), RandomInt(rng, 1, 50));
  CAPTURE(image.height, image.width);
  auto same = ResizeBicubicAntialias(image, image.height, image.width);
  REQUIRE_OK(same);
  CHECK(same->pixels == image.pixels);

  const auto colour = RandomBytes(rng, 3);
  for (int trial = 0; trial < 8; ++trial) {
    const int h0 = RandomInt(rng, 1, 90), w0 = RandomInt(rng, 1, 90);
    const int h1 = RandomInt(rng, 1, 120), w1 = RandomInt(rng, 1, 120);
    CAPTURE(h0, w0, h1, w1);
    RgbImage flat{h0, w0, {}};
    for (int p = 0; p < h0 * w0; ++p)
      flat.pixels.insert(flat.pixels.end(), colour.begin(), colour.end());
    auto resized = ResizeBicubicAntialias(flat, h1, w1);
    REQUIRE_OK(resized);
    REQUIRE(resized->height == h1);
    REQUIRE(resized->width == w1);
    int64_t changed = 0;
    for (size_t i = 0; i < resized->pixels.size(); ++i)
      changed += resized->pixels[i] != colour[i % 3];
    // The int16 weights of an output sum to 2^precision within a few units,
    // far less than the half level that would move a constant.
    CHECK(changed == 0);
  }
}

TEST_CASE("ResizeBicubicAntialias is within one level of a float64 reference", "[image]") {
  auto rng = MakeRng();
  // Down, up, and one axis each way, on random noise (the worst case for
  // the 8-bit intermediate and the fixed-point weights).
  for (int trial = 0; trial < 6; ++trial) {
    const int h0 = RandomInt(rng, 20, 90), w0 = RandomInt(rng, 20, 90);
    int h1 = 0, w1 = 0;
    switch (trial % 3) {
      case 0:
        h1 = RandomInt(rng, 1, h0), w1 = RandomInt(rng, 1, w0);
        break;
      case 1:
        h1 = RandomInt(rng, h0, 3 * h0), w1 = RandomInt(rng, w0, 3 * w0);
        break;
      default:
        h1 = RandomInt(rng, 1, h0), w1 = RandomInt(rng, w0, 2 * w0);
    }
    CAPTURE(h0, w0, h1, w1);
    const RgbImage image = RandomImage(rng, h0, w0);
    auto resized = ResizeBicubicAntialias(image, h1, w1);
    REQUIRE_OK(resized);
    REQUIRE(resized->pixels.size() == size_t{3} * h1 * w1);
    const auto reference = ReferenceResize(image, h1, w1);
    // Ours rounds the intermediate (error <= 0.5 before the column pass,
    // which multiplies it by the sum of |weights| <= ~1.2) and quantizes the
    // weights (< 0.05 level): within 1.1 of the exact value, so the rounded
    // results differ by at most one level.
    int64_t exact = 0;
    int worst = 0;
    for (size_t i = 0; i < reference.size(); ++i) {
      const int want = static_cast<int>(std::clamp(std::round(reference[i]), 0.0, 255.0));
      const int diff = std::abs(int{resized->pixels[i]} - want);
      worst = std::max(worst, diff);
      exact += diff == 0;
    }
    CAPTURE(exact, reference.size());
    CHECK(worst <= 1);
  }
}

TEST_CASE("ResizeBicubicAntialias rejects bad sizes and images", "[image]") {
  auto rng = MakeRng();
  const RgbImage image = RandomImage(rng, 4, 5);
  REQUIRE_STATUS_IS(ResizeBicubicAntialias(image, 0, 5), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(ResizeBicubicAntialias(image, 4, -1), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(ResizeBicubicAntialias(RgbImage{}, 4, 4), absl::StatusCode::kInvalidArgument);
  RgbImage short_pixels = image;
  short_pixels.pixels.pop_back();
  REQUIRE_STATUS_IS(ResizeBicubicAntialias(short_pixels, 4, 4), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(ResizeBicubicAntialias(image, 1 << 15, 1 << 15),
                    absl::StatusCode::kResourceExhausted);
}

// ---------------------------------------------------------------------------
// EXIF orientation

// The upright image for EXIF `orientation`, from the EXIF specification's
// table of where the stored 0th row and 0th column are seen (CIPA DC-008,
// tag 0x0112): 1 top/left, 2 top/right, 3 bottom/right, 4 bottom/left,
// 5 left/top, 6 right/top, 7 right/bottom, 8 left/bottom. Written from that
// table, not from the transpose methods image.cc picks.
RgbImage Upright(const RgbImage& stored, int orientation) {
  constexpr bool kRowFirst[9] = {true, true, true, false, false, true, false, false, true};
  constexpr bool kColumnFirst[9] = {true, true, false, false, true, true, true, false, false};
  const int h = stored.height, w = stored.width;
  const bool rows_are_columns = orientation >= 5;  // the 0th row is seen as a side
  RgbImage out{rows_are_columns ? w : h, rows_are_columns ? h : w,
               std::vector<uint8_t>(stored.pixels.size())};
  for (int r = 0; r < h; ++r) {
    for (int c = 0; c < w; ++c) {
      const int along_rows = kRowFirst[orientation] ? r : h - 1 - r;
      const int along_columns = kColumnFirst[orientation] ? c : w - 1 - c;
      const int y = rows_are_columns ? along_columns : along_rows;
      const int x = rows_are_columns ? along_rows : along_columns;
      for (int k = 0; k < 3; ++k) {
        out.pixels[(size_t{static_cast<size_t>(y)} * out.width + x) * 3 + k] =
            stored.pixels[(size_t{static_cast<size_t>(r)} * w + c) * 3 + k];
      }
    }
  }
  return out;
}

bool SameImage(const RgbImage& a, const RgbImage& b) {
  return a.height == b.height && a.width == b.width && a.pixels == b.pixels;
}

// An unsigned value as `bytes` bytes in the block's byte order.
std::vector<uint8_t> Field(bool big_endian, uint64_t value, int bytes) {
  std::vector<uint8_t> out(bytes);
  for (int i = 0; i < bytes; ++i)
    out[big_endian ? bytes - 1 - i : i] = static_cast<uint8_t>(value >> (8 * i));
  return out;
}

std::vector<uint8_t> Concat(std::initializer_list<std::vector<uint8_t>> parts) {
  std::vector<uint8_t> out;
  for (const auto& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

std::vector<uint8_t> Text(std::string_view text) { return {text.begin(), text.end()}; }

// One IFD entry. Values of up to 4 bytes sit in the entry, longer ones after
// the IFD; `offset`, when set, is written instead and nothing is stored.
struct TiffEntry {
  uint16_t tag = 0;
  uint16_t type = 0;
  uint32_t count = 0;
  std::vector<uint8_t> value;
  std::optional<uint32_t> offset = std::nullopt;
};

struct TiffLayout {
  uint16_t magic = 42;
  uint32_t ifd_offset = 8;                             // >= 8; the gap is zero-filled
  std::optional<uint16_t> entry_count = std::nullopt;  // else the number of entries
};

// A TIFF block as EXIF stores it: header, IFD0, then the long values.
std::vector<uint8_t> BuildTiff(bool big, const std::vector<TiffEntry>& entries,
                               const TiffLayout& layout = {}) {
  std::vector<uint8_t> out = Text(big ? "MM" : "II");
  for (const auto& part : {Field(big, layout.magic, 2), Field(big, layout.ifd_offset, 4)}) {
    out.insert(out.end(), part.begin(), part.end());
  }
  out.resize(layout.ifd_offset, 0);
  const auto count = Field(big, layout.entry_count.value_or(entries.size()), 2);
  out.insert(out.end(), count.begin(), count.end());
  const size_t data_start = out.size() + 12 * entries.size() + 4;
  std::vector<uint8_t> data;
  for (const TiffEntry& e : entries) {
    std::vector<uint8_t> value_field = e.value;
    if (e.offset.has_value()) {
      value_field = Field(big, *e.offset, 4);
    } else if (e.value.size() > 4) {
      value_field = Field(big, data_start + data.size(), 4);
      data.insert(data.end(), e.value.begin(), e.value.end());
      if (data.size() % 2 != 0) data.push_back(0);
    }
    value_field.resize(4, 0);
    const auto entry =
        Concat({Field(big, e.tag, 2), Field(big, e.type, 2), Field(big, e.count, 4), value_field});
    out.insert(out.end(), entry.begin(), entry.end());
  }
  const auto next_ifd = Field(big, 0, 4);
  out.insert(out.end(), next_ifd.begin(), next_ifd.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

constexpr uint16_t kOrientation = 0x0112;
enum TiffType : uint16_t {
  kByte = 1,
  kAscii = 2,
  kShort = 3,
  kLong = 4,
  kRational = 5,
  kSByte = 6,
  kUndefined = 7,
  kSShort = 8,
  kSLong = 9,
  kSRational = 10,
  kFloat = 11,
  kDouble = 12,
  kIfd = 13,
  kLong8 = 16,
};

TiffEntry OrientationShort(bool big, uint16_t value) {
  return {kOrientation, kShort, 1, Field(big, value, 2)};
}

// IFD0 of a camera: sizes, `middle` (the orientation entries), resolution,
// software and an Exif IFD pointer, with values in and after the IFD.
std::vector<TiffEntry> CameraEntries(bool big, std::vector<TiffEntry> middle) {
  std::vector<TiffEntry> entries = {{0x0100, kLong, 1, Field(big, 4032, 4)},
                                    {0x0101, kLong, 1, Field(big, 3024, 4)}};
  entries.insert(entries.end(), middle.begin(), middle.end());
  entries.push_back({0x011A, kRational, 1, Concat({Field(big, 72, 4), Field(big, 1, 4)})});
  entries.push_back({0x0131, kAscii, 12, Text(std::string_view("gquant test\0", 12))});
  entries.push_back({0x8769, kLong, 1, Field(big, 0, 4)});
  return entries;
}

std::vector<uint8_t> ExifPayload(const std::vector<uint8_t>& tiff) {
  return Concat({Text(std::string_view("Exif\0\0", 6)), tiff});
}

// `jpeg` with APP1 segments carrying `payloads`, after its JFIF APP0.
std::vector<uint8_t> JpegWithApp1(const std::vector<uint8_t>& jpeg,
                                  const std::vector<std::vector<uint8_t>>& payloads) {
  REQUIRE((jpeg[2] == 0xFF && jpeg[3] == 0xE0));
  const size_t at = 4 + (size_t{jpeg[4]} << 8 | jpeg[5]);
  std::vector<uint8_t> out(jpeg.begin(), jpeg.begin() + at);
  for (const auto& payload : payloads) {
    const size_t length = payload.size() + 2;
    REQUIRE(length <= 0xFFFF);
    out.insert(out.end(), {0xFF, 0xE1, static_cast<uint8_t>(length >> 8),
                           static_cast<uint8_t>(length & 0xFF)});
    out.insert(out.end(), payload.begin(), payload.end());
  }
  out.insert(out.end(), jpeg.begin() + at, jpeg.end());
  return out;
}

// `png` with a chunk `type` holding `data`, right after IHDR or, when
// `after_image`, right before IEND.
std::vector<uint8_t> PngWithChunk(const std::vector<uint8_t>& png, std::string_view type,
                                  const std::vector<uint8_t>& data, bool after_image) {
  const size_t at = after_image ? png.size() - 12 : 8 + 25;
  REQUIRE(std::memcmp(&png[at + 4], after_image ? "IEND" : "IDAT", 4) == 0);
  std::vector<uint8_t> chunk(12 + data.size());
  PutBigEndian32(&chunk[0], static_cast<uint32_t>(data.size()));
  std::memcpy(&chunk[4], type.data(), 4);
  if (!data.empty()) std::memcpy(&chunk[8], data.data(), data.size());
  PutBigEndian32(&chunk[8 + data.size()], Crc32(&chunk[4], 4 + data.size()));
  std::vector<uint8_t> out(png.begin(), png.begin() + at);
  out.insert(out.end(), chunk.begin(), chunk.end());
  out.insert(out.end(), png.begin() + at, png.end());
  return out;
}

// A small non-square image with random pixels, as a PNG and a JPEG, and the
// pixels each one stores.
struct OrientationFixture {
  RgbImage stored_png;
  RgbImage stored_jpeg;
  std::vector<uint8_t> png;
  std::vector<uint8_t> jpeg;

  explicit OrientationFixture(std::mt19937_64& rng) {
    int height = RandomInt(rng, 2, 9), width = RandomInt(rng, 2, 9);
    while (width == height) width = RandomInt(rng, 2, 9);
    PngSpec spec = RandomRgbPng(rng, height, width);
    stored_png = {height, width, spec.rows};
    png = EncodePng(spec);
    jpeg = EncodeJpeg(RandomBytes(rng, size_t{3} * height * width), height, width, 3, JCS_RGB);
    auto decoded = DecodeImage(jpeg, "plain JPEG");
    REQUIRE_OK(decoded);
    stored_jpeg = *std::move(decoded);
  }
};

// Decodes `file` with and without the orientation: kept, it must be
// `stored`; applied, `stored` turned upright for `expected`.
void CheckOrientation(const std::vector<uint8_t>& file, const RgbImage& stored, int expected) {
  const char* format = file[0] == 0x89 ? "PNG" : "JPEG";
  CAPTURE(format, expected, stored.height, stored.width);
  auto as_stored = DecodeImage(file, "kept", DecodeOptions{.apply_exif_orientation = false});
  REQUIRE_OK(as_stored);
  CHECK(SameImage(*as_stored, stored));
  auto upright = DecodeImage(file, "upright");
  REQUIRE_OK(upright);
  CHECK(upright->height == (expected >= 5 ? stored.width : stored.height));
  CHECK(SameImage(*upright, Upright(stored, expected)));
}

TEST_CASE("DecodeImage turns JPEG and PNG upright by their EXIF orientation", "[image][exif]") {
  auto rng = MakeRng();
  const OrientationFixture fixture(rng);
  for (bool big : {false, true}) {
    for (int orientation = 1; orientation <= 8; ++orientation) {
      CAPTURE(big, orientation);
      const auto tiff = BuildTiff(big, CameraEntries(big, {OrientationShort(big, orientation)}));
      // PNG's eXIf holds the TIFF block itself, before or after the pixels.
      CheckOrientation(PngWithChunk(fixture.png, "eXIf", tiff, /*after_image=*/big),
                       fixture.stored_png, orientation);
      CheckOrientation(JpegWithApp1(fixture.jpeg, {ExifPayload(tiff)}), fixture.stored_jpeg,
                       orientation);
    }
  }

  SECTION("ReadImageFile applies it too") {
    testing::TempDir dir;
    const std::string path = dir.File("rotated.jpg");
    const auto tiff = BuildTiff(true, CameraEntries(true, {OrientationShort(true, 6)}));
    const auto jpeg = JpegWithApp1(fixture.jpeg, {ExifPayload(tiff)});
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(jpeg.data()),
               static_cast<std::streamsize>(jpeg.size()));
    auto upright = ReadImageFile(path);
    REQUIRE_OK(upright);
    CHECK(SameImage(*upright, Upright(fixture.stored_jpeg, 6)));
    auto kept = ReadImageFile(path, {.apply_exif_orientation = false});
    REQUIRE_OK(kept);
    CHECK(SameImage(*kept, fixture.stored_jpeg));
  }
}

// One EXIF block and the orientation Pillow's exif_transpose takes from it
// (1: the image stays as stored).
struct ExifCase {
  std::string name;
  std::vector<uint8_t> tiff;
  int expected;
};

// Blocks that probe how Pillow (10.2 and later) reads the tag: see
// Image.Exif.load and TiffImagePlugin.ImageFileDirectory_v2.load.
std::vector<ExifCase> PillowReadingCases(bool big) {
  auto block = [&](std::vector<TiffEntry> middle) {
    return BuildTiff(big, CameraEntries(big, std::move(middle)));
  };
  auto value = [&](uint64_t v, int bytes) { return Field(big, v, bytes); };
  auto pair = [&](uint32_t a, uint32_t b) { return Concat({value(a, 4), value(b, 4)}); };
  std::vector<ExifCase> cases = {
      {"SHORT 6", block({OrientationShort(big, 6)}), 6},
      {"no orientation", block({}), 1},
      {"SHORT 1", block({OrientationShort(big, 1)}), 1},
      {"SHORT 0", block({OrientationShort(big, 0)}), 1},
      {"SHORT 9", block({OrientationShort(big, 9)}), 1},
      {"SHORT 65535", block({OrientationShort(big, 65535)}), 1},
      {"SHORT 262 (6 + 256)", block({OrientationShort(big, 262)}), 1},
      // Any numeric type loads as a number that equals the integer.
      {"LONG 8", block({{kOrientation, kLong, 1, value(8, 4)}}), 8},
      {"SSHORT 2", block({{kOrientation, kSShort, 1, value(2, 2)}}), 2},
      {"SSHORT -6", block({{kOrientation, kSShort, 1, value(0xFFFA, 2)}}), 1},
      {"SLONG 7", block({{kOrientation, kSLong, 1, value(7, 4)}}), 7},
      {"SBYTE 4", block({{kOrientation, kSByte, 1, value(4, 1)}}), 4},
      {"IFD 5", block({{kOrientation, kIfd, 1, value(5, 4)}}), 5},
      {"LONG8 3", block({{kOrientation, kLong8, 1, value(3, 8)}}), 3},
      {"RATIONAL 12/2", block({{kOrientation, kRational, 1, pair(12, 2)}}), 6},
      {"RATIONAL 13/2", block({{kOrientation, kRational, 1, pair(13, 2)}}), 1},
      {"RATIONAL 6/0", block({{kOrientation, kRational, 1, pair(6, 0)}}), 1},
      {"SRATIONAL -16/-2", block({{kOrientation, kSRational, 1, pair(-16u, -2u)}}), 8},
      {"FLOAT 3.0", block({{kOrientation, kFloat, 1, value(std::bit_cast<uint32_t>(3.0f), 4)}}), 3},
      {"FLOAT 6.5", block({{kOrientation, kFloat, 1, value(std::bit_cast<uint32_t>(6.5f), 4)}}), 1},
      {"DOUBLE 5.0", block({{kOrientation, kDouble, 1, value(std::bit_cast<uint64_t>(5.0), 8)}}),
       5},
      // Bytes and text never equal an integer.
      {"BYTE 6", block({{kOrientation, kByte, 1, {6}}}), 1},
      {"ASCII \"6\"", block({{kOrientation, kAscii, 2, Text(std::string_view("6\0", 2))}}), 1},
      {"UNDEFINED 6", block({{kOrientation, kUndefined, 1, {6}}}), 1},
      // The first of several values counts.
      {"SHORT x2 [6, 3]", block({{kOrientation, kShort, 2, Concat({value(6, 2), value(3, 2)})}}),
       6},
      {"SHORT x3 [7, 2, 2], stored after the IFD",
       block({{kOrientation, kShort, 3, Concat({value(7, 2), value(2, 2), value(2, 2)})}}), 7},
      // Entries repeat: the last one loaded wins; unknown types and empty
      // values are not loaded.
      {"6 then 3", block({OrientationShort(big, 6), OrientationShort(big, 3)}), 3},
      {"6 then type 14", block({OrientationShort(big, 6), {kOrientation, 14, 1, value(8, 2)}}), 6},
      {"6 then count 0", block({OrientationShort(big, 6), {kOrientation, kShort, 0, {}}}), 6},
      {"6 then BYTE 8", block({OrientationShort(big, 6), {kOrientation, kByte, 1, {8}}}), 1},
      {"type 0", block({{kOrientation, 0, 1, value(6, 2)}}), 1},
      {"type 99", block({{kOrientation, 99, 1, value(6, 2)}}), 1},
      {"count 0", block({{kOrientation, kShort, 0, value(6, 2)}}), 1},
      // Header variants Pillow accepts.
      {"byte-swapped magic",
       BuildTiff(big, CameraEntries(big, {OrientationShort(big, 8)}), {.magic = 0x2A00}), 8},
      {"IFD0 at offset 30",
       BuildTiff(big, CameraEntries(big, {OrientationShort(big, 5)}), {.ifd_offset = 30}), 5},
      {"an Exif\\0\\0 prefix inside", ExifPayload(block({OrientationShort(big, 7)})), 7},
  };
  // Only IFD0 counts: an orientation in IFD1 (the thumbnail's) does not.
  {
    std::vector<uint8_t> tiff = block({});
    const size_t next_field = 8 + 2 + 12 * CameraEntries(big, {}).size();
    const auto next = value(tiff.size(), 4);
    std::copy(next.begin(), next.end(), tiff.begin() + next_field);
    const auto ifd1 = Concat({value(1, 2), value(kOrientation, 2), value(kShort, 2), value(1, 4),
                              value(6, 2), value(0, 2), value(0, 4)});
    tiff.insert(tiff.end(), ifd1.begin(), ifd1.end());
    cases.push_back({"orientation in IFD1 only", tiff, 1});
  }
  return cases;
}

// Malformed blocks: never an error; Pillow either raises (a bad header,
// which gquant reads as no orientation) or stops reading IFD0 where the
// block ends, keeping the entries it has.
std::vector<ExifCase> MalformedCases(bool big) {
  const auto good = BuildTiff(big, CameraEntries(big, {OrientationShort(big, 6)}));
  const uint32_t size = static_cast<uint32_t>(good.size());
  auto with_layout = [&](const TiffLayout& layout) {
    return BuildTiff(big, CameraEntries(big, {OrientationShort(big, 6)}), layout);
  };
  auto value = [&](uint64_t v, int bytes) { return Field(big, v, bytes); };
  auto with_ifd0_at = [&](uint32_t offset) {
    auto t = good;
    const auto field = value(offset, 4);
    std::copy(field.begin(), field.end(), t.begin() + 4);
    return t;
  };
  std::vector<ExifCase> cases = {
      {"empty", {}, 1},
      {"Exif\\0\\0 only", Text(std::string_view("Exif\0\0", 6)), 1},
      {"BigTIFF magic", with_layout({.magic = 43}), 1},
      {"magic 0", with_layout({.magic = 0}), 1},
      {"IFD0 at 2^32 - 1", with_ifd0_at(0xFFFFFFFFu), 1},
      {"IFD0 at the block's end", with_ifd0_at(size), 1},
      {"IFD0 one byte before the end", with_ifd0_at(size - 1), 1},
      {"IFD0 at 0 (the header read as entries)", with_ifd0_at(0), 1},
      // 65535 entries claimed: those present are read, as Pillow does.
      {"65535 entries, the orientation present", with_layout({.entry_count = 65535}), 6},
      {"65535 entries, cut before the orientation",
       [&] {
         auto t = with_layout({.entry_count = 65535});
         t.resize(8 + 2 + 2 * 12 + 6);  // into the orientation entry
         return t;
       }(),
       1},
      // A value stored outside the block ends the directory there.
      {"a value at 2^32 - 16 before the orientation",
       BuildTiff(big, CameraEntries(
                          big, {{0x0110, kAscii, 40, {}, 0xFFFFFFF0u}, OrientationShort(big, 6)})),
       1},
      {"a value at 2^32 - 16 after the orientation",
       BuildTiff(big, CameraEntries(
                          big, {OrientationShort(big, 6), {0x0110, kAscii, 40, {}, 0xFFFFFFF0u}})),
       6},
      {"a value overlapping the block's end before the orientation",
       BuildTiff(big, CameraEntries(
                          big, {{0x0110, kAscii, 40, {}, size - 20}, OrientationShort(big, 6)})),
       1},
      {"count 2^32 - 1 before the orientation",
       BuildTiff(big, CameraEntries(
                          big, {{0x0110, kLong, 0xFFFFFFFFu, {}, 8}, OrientationShort(big, 6)})),
       1},
      {"the orientation with count 2^30",
       BuildTiff(big, CameraEntries(big, {{kOrientation, kShort, 1u << 30, {}, 8}})), 1},
  };
  for (size_t n = 1; n < 8; ++n) {
    cases.push_back({absl::StrCat("header cut to ", n, " bytes"),
                     std::vector<uint8_t>(good.begin(), good.begin() + n), 1});
  }
  for (const char* order : {"IM", "ii", "\0\0"}) {
    auto t = good;
    std::memcpy(t.data(), order, 2);
    cases.push_back({absl::StrCat("byte order ", std::string(order, 2)), t, 1});
  }
  return cases;
}

TEST_CASE("DecodeImage reads the EXIF orientation as Pillow does", "[image][exif]") {
  auto rng = MakeRng();
  const OrientationFixture fixture(rng);
  for (bool big : {false, true}) {
    std::vector<ExifCase> cases = PillowReadingCases(big);
    for (auto& c : MalformedCases(big)) cases.push_back(std::move(c));
    for (const ExifCase& c : cases) {
      CAPTURE(big, c.name, c.tiff.size());
      CheckOrientation(PngWithChunk(fixture.png, "eXIf", c.tiff, false), fixture.stored_png,
                       c.expected);
      CheckOrientation(JpegWithApp1(fixture.jpeg, {ExifPayload(c.tiff)}), fixture.stored_jpeg,
                       c.expected);
    }
  }
}

TEST_CASE("DecodeImage picks the EXIF block as Pillow does", "[image][exif]") {
  auto rng = MakeRng();
  const OrientationFixture fixture(rng);
  const bool big = RandomInt(rng, 0, 1) == 1;
  CAPTURE(big);
  auto tiff = [&](int orientation) {
    return BuildTiff(big, CameraEntries(big, {OrientationShort(big, orientation)}));
  };

  SECTION("JPEG: later Exif segments are appended to the first") {
    CheckOrientation(JpegWithApp1(fixture.jpeg, {ExifPayload(tiff(6)), ExifPayload(tiff(3))}),
                     fixture.stored_jpeg, 6);
    // IFD0 split over two segments: read across the join (Pillow >= 10.2).
    const auto whole = tiff(8);
    const size_t cut = 8 + 2 + 2 * 12 + 5;  // inside the orientation entry
    const std::vector<uint8_t> first(whole.begin(), whole.begin() + cut);
    const std::vector<uint8_t> second(whole.begin() + cut, whole.end());
    CheckOrientation(JpegWithApp1(fixture.jpeg, {ExifPayload(first), ExifPayload(second)}),
                     fixture.stored_jpeg, 8);
  }
  SECTION("JPEG: other APP1 segments are not EXIF") {
    const auto xmp = Concat({Text(std::string_view("http://ns.adobe.com/xap/1.0/\0", 29)),
                             Text("<x:xmpmeta tiff:Orientation=\"3\"/>")});
    CheckOrientation(JpegWithApp1(fixture.jpeg, {xmp, ExifPayload(tiff(5))}), fixture.stored_jpeg,
                     5);
    CheckOrientation(JpegWithApp1(fixture.jpeg, {xmp}), fixture.stored_jpeg, 1);
    const auto not_exif = Concat({Text(std::string_view("Exif\0\1", 6)), tiff(6)});
    CheckOrientation(JpegWithApp1(fixture.jpeg, {not_exif}), fixture.stored_jpeg, 1);
    CheckOrientation(JpegWithApp1(fixture.jpeg, {Text("Exif")}), fixture.stored_jpeg, 1);
  }
  SECTION("PNG: the last eXIf chunk counts, with any Exif prefix stripped") {
    const auto two =
        PngWithChunk(PngWithChunk(fixture.png, "eXIf", tiff(6), false), "eXIf", tiff(3), true);
    CheckOrientation(two, fixture.stored_png, 3);
    const auto prefixed = ExifPayload(ExifPayload(tiff(7)));
    CheckOrientation(PngWithChunk(fixture.png, "eXIf", prefixed, true), fixture.stored_png, 7);
    CheckOrientation(PngWithChunk(fixture.png, "eXIf", {}, false), fixture.stored_png, 1);
  }
}

TEST_CASE("DecodeImage survives corrupted EXIF blocks", "[image][exif]") {
  auto rng = MakeRng();
  const OrientationFixture fixture(rng);
  // Every decode must succeed and give the stored image turned by one of
  // the eight orientations.
  auto check = [](const std::vector<uint8_t>& file, const RgbImage& stored) {
    auto image = DecodeImage(file, "corrupted EXIF");
    REQUIRE_OK(image);
    bool matched = false;
    for (int o = 1; o <= 8 && !matched; ++o) matched = SameImage(*image, Upright(stored, o));
    CHECK(matched);
  };
  for (int trial = 0; trial < 400; ++trial) {
    const bool big = RandomInt(rng, 0, 1) == 1;
    auto tiff = BuildTiff(big, CameraEntries(big, {OrientationShort(big, RandomInt(rng, 1, 8))}));
    switch (trial % 4) {
      case 0:  // a few random bytes
        for (int k = RandomInt(rng, 1, 4); k > 0; --k) {
          tiff[RandomInt(rng, 0, static_cast<int>(tiff.size()) - 1)] =
              uint8_t(RandomInt(rng, 0, 255));
        }
        break;
      case 1:  // cut anywhere
        tiff.resize(RandomInt(rng, 0, static_cast<int>(tiff.size())));
        break;
      case 2:  // a 16- or 32-bit field set to an extreme, at an even offset
      case 3: {
        const int bytes = trial % 4 == 2 ? 2 : 4;
        const size_t at = 2 * RandomInt(rng, 0, static_cast<int>(tiff.size() - bytes) / 2);
        const uint64_t extreme = std::vector<uint64_t>{
            0, 1, 0x7FFF, 0xFFFF, 0xFFFFFFFF, tiff.size(), tiff.size() - 1}[RandomInt(rng, 0, 6)];
        const auto field = Field(big, extreme, bytes);
        std::copy(field.begin(), field.end(), tiff.begin() + at);
        break;
      }
    }
    CAPTURE(trial, big, tiff);
    check(PngWithChunk(fixture.png, "eXIf", tiff, trial % 2 == 0), fixture.stored_png);
    check(JpegWithApp1(fixture.jpeg, {ExifPayload(tiff)}), fixture.stored_jpeg);
  }
}

}  // namespace
}  // namespace gquant
