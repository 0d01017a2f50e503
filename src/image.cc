// PNG and JPEG decoding to 8-bit RGB, turned upright by the EXIF
// orientation, and torchvision's antialiased bicubic resize of 8-bit images
// (see gquant/image.h).
//
// libpng and libjpeg report errors by longjmp. Each setjmp below sits in a
// small function whose own locals are plain C data, and every C++ object
// (buffers, the RgbImage) lives in the caller's frame, so no destructor is
// skipped by the jump; the decoder structs are freed by RAII guards there.
#include "gquant/image.h"

#include <png.h>
#include <setjmp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <span>
#include <string>
#include <utility>
#include <vector>

// jpeglib.h needs FILE and size_t declared first.
#include <jerror.h>
#include <jpeglib.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gquant/mapped_file.h"
#include "gquant/status.h"

namespace gquant {
namespace {

constexpr uint8_t kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
constexpr uint8_t kJpegSignature[3] = {0xFF, 0xD8, 0xFF};  // SOI, then a marker

bool StartsWith(std::span<const uint8_t> bytes, std::span<const uint8_t> prefix) {
  return bytes.size() >= prefix.size() && std::equal(prefix.begin(), prefix.end(), bytes.begin());
}

absl::Status CheckPixelCount(int64_t width, int64_t height, const std::string& source) {
  if (width * height > kMaxImagePixels) {
    return absl::ResourceExhaustedError(absl::StrCat("image '", source, "': ", width, " x ", height,
                                                     " pixels is more than the ", kMaxImagePixels,
                                                     " (kMaxImagePixels) gquant decodes"));
  }
  return absl::OkStatus();
}

// Allocates `image` as height x width; ResourceExhausted if memory runs out.
absl::Status AllocateImage(int height, int width, const std::string& what, RgbImage* image) {
  image->height = height;
  image->width = width;
  try {
    image->pixels.assign(static_cast<size_t>(height) * width * 3, 0);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": out of memory for ", height, " x ", width, " RGB pixels"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// EXIF orientation, read as Pillow >= 10.2 reads it for exif_transpose:
// Image.Exif.load strips "Exif\0\0" prefixes and hands the rest to
// TiffImagePlugin.ImageFileDirectory_v2, whose load() reads IFD0; the
// Orientation is then looked up with exif.get(0x0112) and matched against
// the integers 2..8 (so 6, 6.0 and the rational 12/2 all match).

constexpr uint8_t kExifPrefix[6] = {'E', 'x', 'i', 'f', 0, 0};
constexpr uint16_t kOrientationTag = 0x0112;

// Reads of the block in its byte order. Callers check ranges first; a read
// past the end still gives 0 rather than touching memory outside the block.
class TiffReader {
 public:
  TiffReader(std::span<const uint8_t> data, bool big_endian)
      : data_(data), big_endian_(big_endian) {}

  uint64_t Unsigned(size_t offset, int bytes) const {
    if (offset > data_.size() || data_.size() - offset < static_cast<size_t>(bytes)) return 0;
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) {
      const uint64_t b = data_[offset + (big_endian_ ? i : bytes - 1 - i)];
      v = (v << 8) | b;
    }
    return v;
  }
  uint16_t U16(size_t offset) const { return static_cast<uint16_t>(Unsigned(offset, 2)); }
  uint32_t U32(size_t offset) const { return static_cast<uint32_t>(Unsigned(offset, 4)); }

 private:
  std::span<const uint8_t> data_;
  bool big_endian_;
};

// Bytes per value of each TIFF type Pillow loads (its _load_dispatch); 0
// for types it skips.
int TiffTypeSize(uint16_t type) {
  switch (type) {
    case 1:  // BYTE
    case 2:  // ASCII
    case 6:  // SBYTE
    case 7:  // UNDEFINED
      return 1;
    case 3:  // SHORT
    case 8:  // SSHORT
      return 2;
    case 4:   // LONG
    case 9:   // SLONG
    case 11:  // FLOAT
    case 13:  // IFD
      return 4;
    case 5:   // RATIONAL
    case 10:  // SRATIONAL
    case 12:  // DOUBLE
    case 16:  // LONG8
      return 8;
    default:
      return 0;
  }
}

// The orientation an entry's first value stands for: 2..8 when it equals
// one of those integers, else 1 (no change). BYTE, ASCII and UNDEFINED load
// as bytes or text in Pillow, which never equal an integer.
int OrientationFromValue(const TiffReader& tiff, uint16_t type, size_t at) {
  auto integer = [](int64_t v) { return v >= 2 && v <= 8 ? static_cast<int>(v) : 1; };
  auto ratio = [&](int64_t num, int64_t den) {
    return den != 0 && num % den == 0 ? integer(num / den) : 1;
  };
  auto whole = [&](double v) {
    return v >= 2 && v <= 8 && v == std::floor(v) ? integer(static_cast<int64_t>(v)) : 1;
  };
  switch (type) {
    case 3:
      return integer(tiff.U16(at));
    case 8:
      return integer(static_cast<int16_t>(tiff.U16(at)));
    case 4:
    case 13:
      return integer(tiff.U32(at));
    case 9:
      return integer(static_cast<int32_t>(tiff.U32(at)));
    case 6:
      return integer(static_cast<int8_t>(tiff.Unsigned(at, 1)));
    case 16: {
      const uint64_t v = tiff.Unsigned(at, 8);
      return v <= 8 ? integer(static_cast<int64_t>(v)) : 1;
    }
    case 5:
      return ratio(tiff.U32(at), tiff.U32(at + 4));
    case 10:
      return ratio(static_cast<int32_t>(tiff.U32(at)), static_cast<int32_t>(tiff.U32(at + 4)));
    case 11:
      return whole(std::bit_cast<float>(tiff.U32(at)));
    case 12:
      return whole(std::bit_cast<double>(tiff.Unsigned(at, 8)));
    default:
      return 1;
  }
}

// The Orientation in IFD0 of an EXIF block (a JPEG APP1 payload or a PNG
// eXIf chunk), 1 when there is none or it is unusable. Every read is checked
// against the block; the loop runs at most 65535 times.
int ExifOrientation(std::span<const uint8_t> exif) {
  while (StartsWith(exif, kExifPrefix)) exif = exif.subspan(sizeof(kExifPrefix));
  if (exif.size() < 8) return 1;
  bool big_endian;
  if (exif[0] == 'I' && exif[1] == 'I') {
    big_endian = false;
  } else if (exif[0] == 'M' && exif[1] == 'M') {
    big_endian = true;
  } else {
    return 1;
  }
  const TiffReader tiff(exif, big_endian);
  // 42, or 42 byte-swapped, which Pillow accepts too ("II\0*", "MM*\0").
  if (const uint16_t magic = tiff.U16(2); magic != 0x002A && magic != 0x2A00) return 1;
  const size_t size = exif.size();
  const size_t ifd = tiff.U32(4);  // may point anywhere, even into the header
  if (ifd > size || size - ifd < 2) return 1;
  const int entries = tiff.U16(ifd);
  int orientation = 1;
  size_t entry = ifd + 2;
  for (int i = 0; i < entries; ++i, entry += 12) {
    if (size - entry < 12) break;  // Pillow stops at a short read, keeping what it has
    const uint16_t tag = tiff.U16(entry);
    const uint16_t type = tiff.U16(entry + 2);
    const uint64_t count = tiff.U32(entry + 4);
    const int type_size = TiffTypeSize(type);
    if (type_size == 0) continue;  // unknown type: skipped
    const uint64_t bytes = count * type_size;
    size_t value = entry + 8;  // values of up to 4 bytes sit in the entry
    if (bytes > 4) {
      value = tiff.U32(entry + 8);
      if (value > size || size - value < bytes) break;  // a short read ends the directory
    }
    if (bytes == 0) continue;  // no value: skipped
    if (tag == kOrientationTag) orientation = OrientationFromValue(tiff, type, value);
  }
  return orientation;
}

// The image upright for `orientation`, as PIL's Image.transpose with the
// method exif_transpose picks for 2..8 (any other value leaves the image as
// it is). Output pixel (x, y) reads input pixel start + x * step_x +
// y * step_y (counted in pixels) of the w x h input, which is:
//   2 FLIP_LEFT_RIGHT (w-1-x, y)    3 ROTATE_180 (w-1-x, h-1-y)
//   4 FLIP_TOP_BOTTOM (x, h-1-y)    5 TRANSPOSE (y, x)
//   6 ROTATE_270      (y, h-1-x)    7 TRANSVERSE (w-1-y, h-1-x)
//   8 ROTATE_90       (w-1-y, x)
absl::StatusOr<RgbImage> Reorient(RgbImage image, int orientation, const std::string& source) {
  const int64_t w = image.width, h = image.height;
  int64_t start = 0, step_x = 0, step_y = 0;
  switch (orientation) {
    case 2:
      start = w - 1, step_x = -1, step_y = w;
      break;
    case 3:
      start = h * w - 1, step_x = -1, step_y = -w;
      break;
    case 4:
      start = (h - 1) * w, step_x = 1, step_y = -w;
      break;
    case 5:
      start = 0, step_x = w, step_y = 1;
      break;
    case 6:
      start = (h - 1) * w, step_x = -w, step_y = 1;
      break;
    case 7:
      start = h * w - 1, step_x = -w, step_y = -1;
      break;
    case 8:
      start = w - 1, step_x = w, step_y = -1;
      break;
    default:  // 1, or a value Pillow leaves alone
      return image;
  }
  const bool swap = orientation >= 5;
  RgbImage out;
  GQ_RETURN_IF_ERROR(
      AllocateImage(static_cast<int>(swap ? w : h), static_cast<int>(swap ? h : w), source, &out));
  const uint8_t* in = image.pixels.data();
  uint8_t* dst = out.pixels.data();
  for (int64_t y = 0; y < out.height; ++y) {
    int64_t from = start + y * step_y;
    for (int64_t x = 0; x < out.width; ++x, from += step_x, dst += 3) {
      std::memcpy(dst, in + 3 * from, 3);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// PNG (libpng 1.6)

struct PngSource {
  const uint8_t* data;
  size_t size;
  size_t offset;
};

struct PngErrorMessage {
  char text[256];
};

void PngReadFromMemory(png_structp png, png_bytep out, png_size_t length) {
  auto* source = static_cast<PngSource*>(png_get_io_ptr(png));
  if (length > source->size - source->offset) png_error(png, "file is truncated");
  std::memcpy(out, source->data + source->offset, length);
  source->offset += length;
}

// Keeps the message and jumps to the caller's setjmp. It must not return:
// libpng would then print the message to stderr before jumping itself.
[[noreturn]] void PngStoreError(png_structp png, png_const_charp message) {
  auto* error = static_cast<PngErrorMessage*>(png_get_error_ptr(png));
  std::snprintf(error->text, sizeof(error->text), "%s", message);
  png_longjmp(png, 1);
}

void PngIgnoreWarning(png_structp, png_const_charp) {}

class PngReadGuard {
 public:
  PngReadGuard(png_structp png, png_infop info) : png_(png), info_(info) {}
  ~PngReadGuard() { png_destroy_read_struct(&png_, info_ != nullptr ? &info_ : nullptr, nullptr); }
  PngReadGuard(const PngReadGuard&) = delete;
  PngReadGuard& operator=(const PngReadGuard&) = delete;

 private:
  png_structp png_;
  png_infop info_;
};

// The rows libpng hands back after the transforms ReadPngHeader asks for:
// 8-bit gray, gray+alpha, RGB or RGBA, or 16-bit big-endian gray.
struct PngLayout {
  png_uint_32 width;
  png_uint_32 height;
  int channels;
  int bit_depth;
  int passes;  // 7 when Adam7-interlaced, else 1
  size_t row_bytes;
};

// Reads the header and chooses transforms that give PIL's samples: palettes
// and sub-byte gray expanded to 8 bits (1-bit gray -> 0/255, as PIL's "1"),
// 16-bit colour and gray+alpha cut to their high byte (PIL's "RGB;16B",
// "LA;16B" raw modes). 16-bit gray stays 16-bit: PIL opens it as "I;16" and
// convert("RGB") clips it (ConvertPngRow). No gamma or colour management, as PIL.
bool ReadPngHeader(png_structp png, png_infop info, bool keep_exif, PngLayout* layout) {
  if (setjmp(png_jmpbuf(png))) return false;
  if (keep_exif) {
    // libpng's own eXIf handler keeps the first chunk and drops one whose
    // payload does not start II/MM; Pillow keeps the last and strips an
    // "Exif\0\0" prefix. Taking eXIf as an unknown chunk keeps them all.
    static constexpr png_byte kExifChunk[5] = "eXIf";
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_ALWAYS, kExifChunk, 1);
  }
  png_read_info(png, info);
  const int color_type = png_get_color_type(png, info);
  const int bit_depth = png_get_bit_depth(png, info);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (bit_depth == 16 && color_type != PNG_COLOR_TYPE_GRAY) png_set_strip_16(png);
  layout->passes = png_set_interlace_handling(png);
  png_read_update_info(png, info);
  layout->width = png_get_image_width(png, info);
  layout->height = png_get_image_height(png, info);
  layout->channels = png_get_channels(png, info);
  layout->bit_depth = png_get_bit_depth(png, info);
  layout->row_bytes = png_get_rowbytes(png, info);
  return true;
}

// One decoded row to RGB: gray replicated, alpha dropped; 16-bit gray is
// clipped to 255 as PIL's "I;16" -> "RGB" conversion does (I16_RGB in
// Pillow's Convert.c), not scaled.
void ConvertPngRow(const uint8_t* in, const PngLayout& layout, uint8_t* out) {
  for (png_uint_32 x = 0; x < layout.width; ++x, out += 3) {
    if (layout.bit_depth == 16) {  // gray only (see ReadPngHeader)
      const uint8_t v = in[2 * x] != 0 ? 255 : in[2 * x + 1];
      out[0] = out[1] = out[2] = v;
    } else if (layout.channels <= 2) {
      out[0] = out[1] = out[2] = in[x * layout.channels];
    } else {
      std::memcpy(out, in + x * layout.channels, 3);
    }
  }
}

// Decodes the rows into `rgb` (width * height * 3 bytes) through `scratch`:
// one row for a plain image, all rows for an interlaced one, whose passes
// fill each row in several visits. Reads up to IEND, so truncation anywhere
// is an error.
bool ReadPngPixels(png_structp png, png_infop info, const PngLayout* layout, uint8_t* scratch,
                   uint8_t* rgb) {
  if (setjmp(png_jmpbuf(png))) return false;
  const size_t rgb_row = static_cast<size_t>(layout->width) * 3;
  if (layout->passes == 1) {
    for (png_uint_32 y = 0; y < layout->height; ++y) {
      png_read_row(png, scratch, nullptr);
      ConvertPngRow(scratch, *layout, rgb + y * rgb_row);
    }
  } else {
    for (int pass = 0; pass < layout->passes; ++pass) {
      for (png_uint_32 y = 0; y < layout->height; ++y) {
        png_read_row(png, scratch + y * layout->row_bytes, nullptr);
      }
    }
    for (png_uint_32 y = 0; y < layout->height; ++y) {
      ConvertPngRow(scratch + y * layout->row_bytes, *layout, rgb + y * rgb_row);
    }
  }
  png_read_end(png, info);
  return true;
}

// The payload of the last eXIf chunk, before or after the image data (read
// after png_read_end); empty when there is none.
std::span<const uint8_t> LastPngExif(png_structp png, png_infop info) {
  png_unknown_chunkp chunks = nullptr;
  const int count = png_get_unknown_chunks(png, info, &chunks);
  std::span<const uint8_t> exif;
  for (int i = 0; i < count; ++i) {
    if (std::memcmp(chunks[i].name, "eXIf", 4) == 0) exif = {chunks[i].data, chunks[i].size};
  }
  return exif;
}

absl::StatusOr<RgbImage> DecodePng(std::span<const uint8_t> bytes, const std::string& source,
                                   const DecodeOptions& options) {
  PngErrorMessage error{};
  png_structp png =
      png_create_read_struct(PNG_LIBPNG_VER_STRING, &error, PngStoreError, PngIgnoreWarning);
  if (png == nullptr) return absl::ResourceExhaustedError("png_create_read_struct failed");
  png_infop info = png_create_info_struct(png);
  PngReadGuard guard(png, info);
  if (info == nullptr) return absl::ResourceExhaustedError("png_create_info_struct failed");
  PngSource input{bytes.data(), bytes.size(), 0};
  png_set_read_fn(png, &input, PngReadFromMemory);
  // libpng's own 1,000,000-pixel side limit would turn a large but legal
  // image into a decode error; kMaxImagePixels is checked below instead.
  png_set_user_limits(png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
  auto invalid = [&] {
    return absl::InvalidArgumentError(absl::StrCat("PNG '", source, "': ", error.text));
  };

  PngLayout layout{};
  if (!ReadPngHeader(png, info, options.apply_exif_orientation, &layout)) return invalid();
  GQ_RETURN_IF_ERROR(CheckPixelCount(layout.width, layout.height, source));
  RgbImage image;
  GQ_RETURN_IF_ERROR(AllocateImage(static_cast<int>(layout.height), static_cast<int>(layout.width),
                                   source, &image));
  std::vector<uint8_t> scratch;
  try {
    scratch.resize(layout.row_bytes * (layout.passes == 1 ? 1 : layout.height));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("PNG '", source, "': out of memory"));
  }
  if (!ReadPngPixels(png, info, &layout, scratch.data(), image.pixels.data())) return invalid();
  if (!options.apply_exif_orientation) return image;  // no eXIf was kept
  return Reorient(std::move(image), ExifOrientation(LastPngExif(png, info)), source);
}

// ---------------------------------------------------------------------------
// JPEG (libjpeg-turbo, libjpeg 6.2 API)

struct JpegErrorManager {
  jpeg_error_mgr manager;  // first, so a j_common_ptr's err converts to this
  jmp_buf jump;
  char text[JMSG_LENGTH_MAX];
};

void JpegErrorExit(j_common_ptr cinfo) {
  auto* error = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, error->text);
  longjmp(error->jump, 1);
}

// Warnings (e.g. "Corrupt JPEG data: extraneous bytes") do not stop PIL
// either; they are only kept off stderr.
void JpegIgnoreMessage(j_common_ptr) {}

// jpeg_mem_src's refill pads a truncated file with a fake EOI and decodes on
// (a warning only); PIL refuses truncated files, so running out is an error.
boolean JpegFailPastEnd(j_decompress_ptr cinfo) {
  ERREXIT(cinfo, JERR_INPUT_EOF);
  return FALSE;
}

class JpegDecompressGuard {
 public:
  explicit JpegDecompressGuard(jpeg_decompress_struct* cinfo) : cinfo_(cinfo) {}
  // Safe on a struct jpeg_create_decompress never finished: it is
  // zero-initialized, and jpeg_destroy skips a null memory manager.
  ~JpegDecompressGuard() { jpeg_destroy_decompress(cinfo_); }
  JpegDecompressGuard(const JpegDecompressGuard&) = delete;
  JpegDecompressGuard& operator=(const JpegDecompressGuard&) = delete;

 private:
  jpeg_decompress_struct* cinfo_;
};

bool ReadJpegHeader(jpeg_decompress_struct* cinfo, JpegErrorManager* error, const uint8_t* data,
                    size_t size, bool keep_exif) {
  if (setjmp(error->jump)) return false;
  jpeg_create_decompress(cinfo);
  jpeg_mem_src(cinfo, data, static_cast<unsigned long>(size));
  cinfo->src->fill_input_buffer = JpegFailPastEnd;
  // Whole APP1 segments (at most 65533 bytes each), kept until destruction.
  if (keep_exif) jpeg_save_markers(cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(cinfo, TRUE);
  return true;
}

// Decodes to RGB with libjpeg's defaults (islow IDCT, fancy upsampling), the
// settings PIL decodes with; gray is replicated by libjpeg-turbo, as PIL's
// "L" -> "RGB" does. Reads up to EOI, so truncation is an error.
bool ReadJpegPixels(jpeg_decompress_struct* cinfo, JpegErrorManager* error, uint8_t* rgb) {
  if (setjmp(error->jump)) return false;
  cinfo->out_color_space = JCS_RGB;
  jpeg_start_decompress(cinfo);
  if (cinfo->output_components != 3 || cinfo->output_width != cinfo->image_width ||
      cinfo->output_height != cinfo->image_height) {
    std::snprintf(error->text, sizeof(error->text), "unexpected output layout");
    return false;
  }
  const size_t row_bytes = static_cast<size_t>(cinfo->output_width) * 3;
  while (cinfo->output_scanline < cinfo->output_height) {
    JSAMPROW row = rgb + cinfo->output_scanline * row_bytes;
    jpeg_read_scanlines(cinfo, &row, 1);
  }
  jpeg_finish_decompress(cinfo);
  return true;
}

const char* JpegColorSpaceName(J_COLOR_SPACE space) {
  switch (space) {
    case JCS_CMYK:
      return "CMYK";
    case JCS_YCCK:
      return "YCCK";
    case JCS_UNKNOWN:
      return "unknown";
    default:
      return "unsupported";
  }
}

// The orientation in the EXIF block as Pillow >= 10.2 assembles it: the
// first APP1 segment that starts "Exif\0\0", whole, followed by the payload
// of every later one without its prefix (Pillow 10.1 and older keep only
// the first). Read after jpeg_read_header: jpeg_finish_decompress frees the
// saved markers.
absl::StatusOr<int> JpegExifOrientation(const jpeg_decompress_struct& cinfo,
                                        const std::string& source) {
  std::vector<uint8_t> exif;
  try {
    for (jpeg_saved_marker_ptr m = cinfo.marker_list; m != nullptr; m = m->next) {
      const std::span<const uint8_t> payload(m->data, m->data_length);
      if (m->marker != JPEG_APP0 + 1 || !StartsWith(payload, kExifPrefix)) continue;
      exif.insert(exif.end(), payload.begin() + (exif.empty() ? 0 : sizeof(kExifPrefix)),
                  payload.end());
    }
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("JPEG '", source, "': out of memory for the EXIF segments"));
  }
  return ExifOrientation(exif);
}

absl::StatusOr<RgbImage> DecodeJpeg(std::span<const uint8_t> bytes, const std::string& source,
                                    const DecodeOptions& options) {
  JpegErrorManager error{};
  jpeg_decompress_struct cinfo{};
  cinfo.err = jpeg_std_error(&error.manager);
  error.manager.error_exit = JpegErrorExit;
  error.manager.output_message = JpegIgnoreMessage;
  JpegDecompressGuard guard(&cinfo);
  auto invalid = [&] {
    return absl::InvalidArgumentError(absl::StrCat("JPEG '", source, "': ", error.text));
  };

  if (!ReadJpegHeader(&cinfo, &error, bytes.data(), bytes.size(), options.apply_exif_orientation)) {
    return invalid();
  }
  const J_COLOR_SPACE space = cinfo.jpeg_color_space;
  if (space != JCS_GRAYSCALE && space != JCS_YCbCr && space != JCS_RGB) {
    return absl::UnimplementedError(
        absl::StrCat("JPEG '", source, "': colour space ", JpegColorSpaceName(space), " (",
                     cinfo.num_components, " components) is not gray, RGB or YCbCr"));
  }
  GQ_RETURN_IF_ERROR(CheckPixelCount(cinfo.image_width, cinfo.image_height, source));
  int orientation = 1;
  if (options.apply_exif_orientation) {
    GQ_ASSIGN_OR_RETURN(orientation, JpegExifOrientation(cinfo, source));
  }
  RgbImage image;
  GQ_RETURN_IF_ERROR(AllocateImage(static_cast<int>(cinfo.image_height),
                                   static_cast<int>(cinfo.image_width), source, &image));
  if (!ReadJpegPixels(&cinfo, &error, image.pixels.data())) return invalid();
  return Reorient(std::move(image), orientation, source);
}

// ---------------------------------------------------------------------------
// Resize: torch's antialiased bicubic for uint8 images on the CPU.
//
// torchvision 0.26's resize_image (transforms/v2/functional/_geometry.py),
// which HF's Gemma4ImageProcessor calls on the uint8 tensor of the image
// (TorchvisionBackend.process_image: pil_to_tensor), keeps it uint8 on the CPU for
// BICUBIC (_do_native_uint8_resize_on_cpu) and calls
// interpolate(mode="bicubic", antialias=True), i.e. ATen's
// _upsample_bicubic2d_aa. For uint8 with <= 4 channels that runs the
// PIL-SIMD port in aten/src/ATen/native/cpu/UpSampleKernelAVXAntialias.h
// (upsample_avx_bilinear_bicubic_uint8; the non-AVX fallback
// basic_loop_aa_*<uint8_t> in UpSampleKernel.cpp does the same integer math):
//  - per axis, weights from HelperInterpBase::_compute_indices_min_size_weights_aa
//    in double: scale = in / out, support = 2 * scale when shrinking (else 2),
//    center = scale * (i + 0.5), first tap = max(trunc(center - support + 0.5), 0),
//    taps up to min(trunc(center + support + 0.5), in), weight of tap j =
//    cubic((j - center + 0.5) / max(scale, 1)) with Keys' a = -0.5, each
//    divided by the sum of the output's weights;
//  - _compute_index_ranges_int16_weights: one precision p per axis, the first
//    p (at most 22) at which round(max weight of the axis * 2^(p + 1)) would
//    reach 2^15; each weight * 2^p rounded half away from zero to an int16;
//  - the horizontal pass first (skipped when the width is unchanged) into an
//    8-bit image, then the vertical pass; each output is
//    clamp((sum of pixel * weight + 2^(p - 1)) >> p, 0, 255).
// The result is therefore exact integer arithmetic from the weights on:
// no float accumulation order to match.

double KeysCubic(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2.0) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0.0;
}

// Fixed-point taps of one axis: output i reads input first[i] + k for
// k < count[i], with weights[i * max_taps + k] / 2^precision.
struct AxisTaps {
  int max_taps = 0;
  int precision = 0;
  std::vector<int64_t> first;
  std::vector<int64_t> count;
  std::vector<int32_t> weights;
};

AxisTaps ComputeAxisTaps(int64_t in_size, int64_t out_size) {
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  constexpr double kHalfKernel = 4 * 0.5;  // bicubic interp_size 4
  const double support = scale >= 1.0 ? kHalfKernel * scale : kHalfKernel;
  const double inv_scale = scale >= 1.0 ? 1.0 / scale : 1.0;
  AxisTaps taps;
  taps.max_taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.first.resize(out_size);
  taps.count.resize(out_size);
  std::vector<double> weights(static_cast<size_t>(out_size) * taps.max_taps, 0.0);
  double max_weight = 0.0;
  for (int64_t i = 0; i < out_size; ++i) {
    const double center = scale * (static_cast<double>(i) + 0.5);
    const int64_t first = std::max(static_cast<int64_t>(center - support + 0.5), int64_t{0});
    int64_t count = std::min(static_cast<int64_t>(center + support + 0.5), in_size) - first;
    count = std::clamp(count, int64_t{0}, static_cast<int64_t>(taps.max_taps));
    double* w = &weights[i * taps.max_taps];
    double total = 0.0;
    for (int64_t j = 0; j < count; ++j) {
      w[j] = KeysCubic((static_cast<double>(j + first) - center + 0.5) * inv_scale);
      total += w[j];
    }
    if (total != 0.0) {
      for (int64_t j = 0; j < count; ++j) {
        w[j] /= total;
        max_weight = std::max(max_weight, w[j]);
      }
    }
    taps.first[i] = first;
    taps.count[i] = count;
  }
  for (taps.precision = 0; taps.precision < 22; ++taps.precision) {
    const int next = static_cast<int>(0.5 + max_weight * (1 << (taps.precision + 1)));
    if (next >= (1 << 15)) break;
  }
  taps.weights.resize(weights.size());
  for (size_t k = 0; k < weights.size(); ++k) {
    const double v = weights[k] * (1 << taps.precision);
    taps.weights[k] =
        static_cast<int16_t>(v < 0 ? static_cast<int>(-0.5 + v) : static_cast<int>(0.5 + v));
  }
  return taps;
}

uint8_t FixedPointToByte(int64_t sum, int precision) {
  const int64_t rounded = (sum + (int64_t{1} << precision >> 1)) >> precision;
  return static_cast<uint8_t>(std::clamp<int64_t>(rounded, 0, 255));
}

// [height, in_width, 3] -> [height, out_width, 3].
std::vector<uint8_t> ResampleRows(const std::vector<uint8_t>& in, int64_t height, int64_t in_width,
                                  int64_t out_width) {
  const AxisTaps taps = ComputeAxisTaps(in_width, out_width);
  std::vector<uint8_t> out(static_cast<size_t>(height) * out_width * 3);
  for (int64_t y = 0; y < height; ++y) {
    const uint8_t* row = &in[y * in_width * 3];
    for (int64_t x = 0; x < out_width; ++x) {
      const int32_t* w = &taps.weights[x * taps.max_taps];
      const uint8_t* src = row + taps.first[x] * 3;
      for (int c = 0; c < 3; ++c) {
        int64_t sum = 0;
        for (int64_t k = 0; k < taps.count[x]; ++k) sum += int64_t{src[k * 3 + c]} * w[k];
        out[(y * out_width + x) * 3 + c] = FixedPointToByte(sum, taps.precision);
      }
    }
  }
  return out;
}

// [in_height, width, 3] -> [out_height, width, 3].
std::vector<uint8_t> ResampleColumns(const std::vector<uint8_t>& in, int64_t in_height,
                                     int64_t out_height, int64_t width) {
  const AxisTaps taps = ComputeAxisTaps(in_height, out_height);
  const int64_t row_bytes = width * 3;
  std::vector<uint8_t> out(static_cast<size_t>(out_height) * row_bytes);
  std::vector<int64_t> sums(row_bytes);
  for (int64_t y = 0; y < out_height; ++y) {
    const int32_t* w = &taps.weights[y * taps.max_taps];
    std::fill(sums.begin(), sums.end(), 0);
    for (int64_t k = 0; k < taps.count[y]; ++k) {
      const uint8_t* src = &in[(taps.first[y] + k) * row_bytes];
      for (int64_t i = 0; i < row_bytes; ++i) sums[i] += int64_t{src[i]} * w[k];
    }
    for (int64_t i = 0; i < row_bytes; ++i) {
      out[y * row_bytes + i] = FixedPointToByte(sums[i], taps.precision);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<RgbImage> DecodeImage(std::span<const uint8_t> bytes, std::string_view source,
                                     const DecodeOptions& options) {
  const std::string name(source);  // this Abseil's StrCat takes no std::string_view
  if (StartsWith(bytes, kPngSignature)) return DecodePng(bytes, name, options);
  if (StartsWith(bytes, kJpegSignature)) return DecodeJpeg(bytes, name, options);
  return absl::InvalidArgumentError(
      absl::StrCat("image '", name, "': expected a PNG or JPEG file, but got ",
                   bytes.empty() ? std::string("an empty file")
                                 : absl::StrCat(bytes.size(), " bytes with neither signature")));
}

absl::StatusOr<RgbImage> ReadImageFile(const std::string& path, const DecodeOptions& options) {
  GQ_ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
  const std::span<const std::byte> bytes = file->bytes();
  return DecodeImage({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, path, options);
}

absl::StatusOr<RgbImage> ResizeBicubicAntialias(const RgbImage& image, int height, int width) {
  if (image.height <= 0 || image.width <= 0 ||
      image.pixels.size() != static_cast<size_t>(image.height) * image.width * 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("ResizeBicubicAntialias: expected a non-empty image with height * width * 3 "
                     "bytes, but got ",
                     image.height, " x ", image.width, " with ", image.pixels.size(), " bytes"));
  }
  if (height <= 0 || width <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ResizeBicubicAntialias: expected a positive target size, but got ", height, " x ", width));
  }
  GQ_RETURN_IF_ERROR(CheckPixelCount(width, height, "resize target"));
  RgbImage out{height, width, image.pixels};
  try {
    if (width != image.width)
      out.pixels = ResampleRows(out.pixels, image.height, image.width, width);
    if (height != image.height) {
      out.pixels = ResampleColumns(out.pixels, image.height, height, width);
    }
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("ResizeBicubicAntialias: out of memory for ", height, " x ", width));
  }
  return out;
}

}  // namespace gquant
