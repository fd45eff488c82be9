# Sourced by the project scripts: where things are and how to build.
SPEMBED_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="/usr/local/cuda/bin:$PATH"
BUILD_DIR="${BUILD_DIR:-$SPEMBED_ROOT/build}"
# sm_80 and sm_90 unless told otherwise ("native" would become sm_75 without a GPU).
CUDA_ARCHS="${CUDA_ARCHS:-80;90}"
JOBS="${JOBS:-$(nproc)}"

configure_and_build() {
  cmake -S "$SPEMBED_ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS" "$@"
  cmake --build "$BUILD_DIR" -j "$JOBS"
}
