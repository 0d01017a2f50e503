// 8-bit RGB images for image prompts: decoding PNG and JPEG files with
// Debian's libpng and libjpeg-turbo (turned upright by their EXIF
// orientation, as HF's load_image does), and the resize Gemma 4's image
// processor applies (torchvision's antialiased bicubic on 8-bit images).
#ifndef GQUANT_IMAGE_H_
#define GQUANT_IMAGE_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace gquant {

// Row-major [height, width, 3] bytes, R G B.
struct RgbImage {
  int height = 0;
  int width = 0;
  std::vector<uint8_t> pixels;
};

// How DecodeImage and ReadImageFile treat what the file says about itself.
struct DecodeOptions {
  // Turn the image upright by its EXIF Orientation, as PIL's
  // ImageOps.exif_transpose does; HF's load_image applies it to images given
  // as paths or URLs. Set false to keep the stored orientation, as HF does
  // for a PIL image passed in directly.
  bool apply_exif_orientation = true;
};

// Decodes PNG or JPEG `bytes` (told by their signature) into RGB as PIL's
// Image.open(...).convert("RGB") does: gray is replicated, alpha dropped (not
// blended), palettes expanded (tRNS ignored), 1/2/4-bit gray scaled to
// 0..255, 16-bit colour and gray+alpha samples cut to their high byte (PIL's
// "RGB;16B" / "LA;16B" raw modes), and 16-bit gray clipped to 255 (PIL opens
// it as "I;16", whose conversion to RGB clips rather than scales). No gamma
// or ICC handling. JPEG uses libjpeg's defaults (islow IDCT, fancy
// upsampling), as PIL does. `source` names the input in messages.
//
// EXIF orientation (options.apply_exif_orientation, on by default): the
// image is then flipped or rotated as exif_transpose does (Pillow >= 10.2),
// by Orientation (tag 0x0112) in IFD0 of the EXIF block: 2 mirror left-right,
// 3 rotate 180, 4 mirror top-bottom, 5 transpose, 6 rotate 90 clockwise,
// 7 transverse, 8 rotate 90 anticlockwise; 5 to 8 swap height and width.
// The block is, for JPEG, the APP1 segments that start "Exif\0\0" (the first,
// with any later ones appended, as Pillow does), and for PNG the last eXIf
// chunk, before or after the image data. It is read as Pillow reads it:
// leading "Exif\0\0" prefixes skipped; II or MM byte order with magic 42 in
// either byte order; the last Orientation entry wins; entries of a type
// Pillow does not load or with a count of 0 are skipped; an entry running
// past the block, or a value stored past it, ends the directory (entries
// before it still count); the value is the entry's first, of any numeric
// type (a rational or float only when it is a whole number); any value other
// than 2..8 leaves the image as stored. Where Pillow's exif_transpose may
// raise instead (a block shorter than its 8-byte header, an unknown byte
// order or magic, a BigTIFF header) the image is left as stored: EXIF never
// makes a decode fail. Not read: PNG "Raw profile type exif" text, which
// Pillow uses when there is no eXIf chunk, and XMP tiff:Orientation, which
// it uses when the EXIF has no Orientation.
//
// Errors: InvalidArgument for another format or a corrupt or truncated file
// (the decoder's message; PNG is read to IEND and JPEG to EOI, so every
// truncation is an error: slightly stricter than PIL, which accepts a PNG
// without IEND); Unimplemented for a JPEG colour space other than
// gray/RGB/YCbCr (CMYK, YCCK); ResourceExhausted for more than
// kMaxImagePixels pixels (checked from the header, before decoding) or when
// memory runs out.
absl::StatusOr<RgbImage> DecodeImage(std::span<const uint8_t> bytes, std::string_view source,
                                     const DecodeOptions& options = {});

// Reads and decodes the file at `path`; NotFound when it does not exist.
absl::StatusOr<RgbImage> ReadImageFile(const std::string& path, const DecodeOptions& options = {});

// Largest image DecodeImage accepts (width * height): 2^28, a 16384 x 16384
// image, 768 MiB decoded.
inline constexpr int64_t kMaxImagePixels = int64_t{1} << 28;

// Resizes to height x width with torchvision's resize(interpolation=BICUBIC,
// antialias=True) on a uint8 tensor on the CPU, bit for bit: torch keeps the
// image uint8 and runs PIL-SIMD's algorithm. Separable, cubic kernel a = -0.5
// stretched by the scale when shrinking; per axis the normalized weights are
// rounded to int16 fixed point, sums are integers rounded half up and clamped
// to 0..255; rows are resized first into an 8-bit image, then columns (an
// axis whose size is unchanged is skipped). Details and sources in image.cc.
// InvalidArgument for non-positive sizes or an image whose pixels are not
// height * width * 3 bytes (or empty); ResourceExhausted for a target of more
// than kMaxImagePixels pixels.
absl::StatusOr<RgbImage> ResizeBicubicAntialias(const RgbImage& image, int height, int width);

}  // namespace gquant

#endif  // GQUANT_IMAGE_H_
