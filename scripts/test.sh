#!/usr/bin/env bash
# The test command: builds spembed for sm_80 and sm_90, checks the kernels'
# resource usage, runs every test (GPU tests skip without a GPU unless
# SPEMBED_REQUIRE_GPU=1), builds and runs a consumer of the installed package,
# installs torch (pinned) and runs the Python package's pytest suite against
# that installed library (scripts/test_python.sh) and again against the newest
# torch release in its own virtual environment, then runs the GPU suites on
# the CPU emulator under ASan + UBSan and under TSan
# (scripts/test_emulated.sh; SPEMBED_SKIP_EMULATION=1 leaves them out).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$SPEMBED_ROOT/scripts/setup_deps.sh"

configure_and_build -DSPEMBED_BUILD_TESTS=ON -DSPEMBED_BUILD_BENCHMARKS=ON
python3 "$SPEMBED_ROOT/scripts/check_kernel_resources.py" "$BUILD_DIR"

# The installed package, used by a separate project through find_package.
prefix="$BUILD_DIR/install"
cmake --install "$BUILD_DIR" --prefix "$prefix" >/dev/null
cmake -S "$SPEMBED_ROOT/examples/consumer" -B "$BUILD_DIR/consumer" \
  -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$BUILD_DIR/consumer" -j "$JOBS" >/dev/null
"$BUILD_DIR/consumer/consumer"

ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS"
bash "$SPEMBED_ROOT/scripts/test_python.sh"
# The newest torch on PyPI when this was written (pyproject.toml states the
# tested range); its headers need C++20, 2.11's do not.
TORCH_VERSION="${TORCH_NEWEST:-2.15.0}" SPEMBED_VENV="$BUILD_DIR/venv-torch-newest" \
  bash "$SPEMBED_ROOT/scripts/test_python.sh"
if [ "${SPEMBED_SKIP_EMULATION:-0}" != 1 ]; then
  bash "$SPEMBED_ROOT/scripts/test_emulated.sh"
fi
