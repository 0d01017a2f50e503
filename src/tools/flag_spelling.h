// Lets tools accept "--dry-run" as well as absl's "--dry_run" spelling.
#ifndef GQUANT_TOOLS_FLAG_SPELLING_H_
#define GQUANT_TOOLS_FLAG_SPELLING_H_

#include <cstring>

namespace gquant::tools {

// Rewrites '-' to '_' inside the names (not the values) of "--" flags.
inline void DashesToUnderscoresInFlagNames(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--", 2) != 0) continue;
    for (char* c = argv[i] + 2; *c != '\0' && *c != '='; ++c) {
      if (*c == '-') *c = '_';
    }
  }
}

}  // namespace gquant::tools

#endif  // GQUANT_TOOLS_FLAG_SPELLING_H_
