#!/usr/bin/env bash
# The Python test command: installs torch (pinned) and the test tools from
# PyPI, builds and installs the `spembed` package against that torch, and runs
# its pytest suite (CUDA cases skip without a usable GPU unless
# SPEMBED_REQUIRE_GPU=1).
#
# Reuses a compiled core library when one is installed: SPEMBED_PREFIX, or
# $BUILD_DIR/install (where scripts/test.sh installs it). Otherwise the
# package build compiles the CUDA kernels itself.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# The GPU machine's torch. The default PyPI wheel for Linux is the CUDA 13.0
# build (torch 2.11.0+cu130); with its nvidia-* wheels it is ~2.3 GB,
# installed in ~2 minutes on a cold pip cache.
TORCH_VERSION="${TORCH_VERSION:-2.11.0}"
PY="${PYTHON:-python3}"

if ! "$PY" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" \
    2>/dev/null; then
  "$PY" -m pip install --disable-pip-version-check "torch==$TORCH_VERSION"
fi
"$PY" -m pip install --disable-pip-version-check -q pytest numpy "scikit-build-core>=0.10"

if [ -z "${SPEMBED_PREFIX:-}" ] && [ -d "$BUILD_DIR/install" ]; then
  export SPEMBED_PREFIX="$BUILD_DIR/install"
fi
echo "test_python: torch $("$PY" -c 'import torch; print(torch.__version__)'); core library from ${SPEMBED_PREFIX:-a fresh build}"
# No build isolation: the op library must be built against the torch installed above.
CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" "$PY" -m pip install --disable-pip-version-check \
  --no-build-isolation --no-deps "$SPEMBED_ROOT"

# From outside the source tree, so that `import spembed` is the installed package.
cd "$SPEMBED_ROOT/python_bindings/tests"
"$PY" -m pytest -q -p no:cacheprovider -rs .
