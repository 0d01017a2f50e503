#!/usr/bin/env bash
# Installs gquant's build and test dependencies from Debian 12's packages.
# Runs apt-get only for what is missing, so repeated runs are quick. As root.
set -euo pipefail
# With the argument "sanitizers", also clang 14 and its runtimes (ASan, UBSan,
# libFuzzer) for tests/run_sanitized.sh and tests/fuzz/run_fuzzers.sh.
packages=(cmake ninja-build g++ pkg-config libabsl-dev libeigen3-dev libre2-dev
          nlohmann-json3-dev catch2 libbenchmark-dev libpng-dev libjpeg62-turbo-dev)
if [ "${1:-}" = sanitizers ]; then packages+=(clang-14 libclang-rt-14-dev); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "gquant: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
