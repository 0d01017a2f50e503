// Progress of a tool's job on stderr: an updating bar on a terminal, or, when
// stderr is a file or pipe (CI logs), a line per 5% at most every 2 s, and the
// last one.
#ifndef GQUANT_TOOLS_PROGRESS_PRINTER_H_
#define GQUANT_TOOLS_PROGRESS_PRINTER_H_

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"
#include "gquant/progress.h"

namespace gquant::tools {

class ProgressPrinter {
 public:
  // `verb` starts the plain lines: "quantized 3/10 tensors (30%), ...".
  explicit ProgressPrinter(std::string verb)
      : verb_(std::move(verb)),
        tty_(isatty(STDERR_FILENO)),
        start_(std::chrono::steady_clock::now()) {}

  void Update(const JobProgress& p) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double fraction = p.tensors_total > 0 ? double(p.tensors_done) / p.tensors_total : 1.0;
    const std::string rates =
        absl::StrFormat("%.1f tensors/s, %.1f MB/s", p.tensors_done / std::max(seconds, 1e-9),
                        p.bytes_done / 1e6 / std::max(seconds, 1e-9));
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(fraction * kWidth);
      std::fprintf(stderr, "\r\033[K[%s%s] %lld/%lld %s  %s", std::string(filled, '#').c_str(),
                   std::string(kWidth - filled, ' ').c_str(), (long long)p.tensors_done,
                   (long long)p.tensors_total, rates.c_str(), p.current.c_str());
      if (p.tensors_done == p.tensors_total) std::fprintf(stderr, "\n");
    } else if (const int step = static_cast<int>(fraction * 20);
               step > last_step_ && (seconds - last_print_ >= 2.0 || fraction == 1.0)) {
      last_step_ = step;
      last_print_ = seconds;
      std::fprintf(stderr, "%s %lld/%lld tensors (%d%%), %s\n", verb_.c_str(),
                   (long long)p.tensors_done, (long long)p.tensors_total, step * 5, rates.c_str());
    }
    std::fflush(stderr);
  }

 private:
  std::string verb_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  int last_step_ = -1;
  double last_print_ = 0;
};

}  // namespace gquant::tools

#endif  // GQUANT_TOOLS_PROGRESS_PRINTER_H_
