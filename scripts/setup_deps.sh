#!/usr/bin/env bash
# Installs what building and testing spembed needs, when it is missing:
# Debian's CMake, GoogleTest, Google Benchmark and DLPack headers. The CUDA
# toolkit (nvcc, cuSPARSE) is expected under /usr/local/cuda.
set -euo pipefail

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
[ -f /usr/include/gtest/gtest.h ] || need+=(libgtest-dev)
[ -f /usr/include/benchmark/benchmark.h ] || need+=(libbenchmark-dev)
[ -f /usr/include/dlpack/dlpack.h ] || need+=(libdlpack-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if ! command -v nvcc >/dev/null; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then
    echo "setup: add /usr/local/cuda/bin to PATH" >&2
  else
    echo "setup: nvcc not found; spembed needs the CUDA toolkit (13.x) under /usr/local/cuda" >&2
    exit 1
  fi
fi
