#!/usr/bin/env bash
# The Python test command: installs torch (pinned) and the test tools from
# PyPI, builds and installs the `spembed` package against that torch, and runs
# its pytest suite (CUDA cases skip without a usable GPU unless
# SPEMBED_REQUIRE_GPU=1).
#
# Reuses a compiled core library when one is installed: SPEMBED_PREFIX, or
# $BUILD_DIR/install (where scripts/test.sh installs it). Otherwise the
# package build compiles the CUDA kernels itself.
#
# Which torch, in which Python:
#   TORCH_VERSION  torch to test against (default 2.11.0, the GPU machine's);
#                  installed from PyPI when the Python has another version.
#   SPEMBED_VENV   a virtual environment to do it all in (created with
#                  `python3 -m venv` when missing); the package is then built
#                  in $SPEMBED_VENV/spembed-build, so environments with
#                  different torches never share a CMake build directory.
#                  Unset: the current Python (PYTHON, default python3).
# e.g. TORCH_VERSION=2.15.0 SPEMBED_VENV=build/venv-torch-2.15 bash scripts/test_python.sh
# pip's own cache stays on (no --no-cache-dir), so where the index's responses
# are cacheable a second environment with the same torch needs no download.
# (The index CI reaches sends no cache headers, so there every new
# environment downloads torch again: 2-2.5 minutes.)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# The GPU machine's torch. The default PyPI wheel for Linux is the CUDA 13.0
# build (torch 2.11.0+cu130); with its nvidia-* wheels it is ~2.3 GB,
# installed in ~2 minutes on a cold pip cache.
TORCH_VERSION="${TORCH_VERSION:-2.11.0}"
PY="${PYTHON:-python3}"
build_dir_args=()
if [ -n "${SPEMBED_VENV:-}" ]; then
  case "$SPEMBED_VENV" in /*) ;; *) SPEMBED_VENV="$PWD/$SPEMBED_VENV" ;; esac
  if [ ! -x "$SPEMBED_VENV/bin/python" ]; then
    echo "test_python: creating the virtual environment $SPEMBED_VENV"
    "$PY" -m venv "$SPEMBED_VENV"
  fi
  PY="$SPEMBED_VENV/bin/python"
  build_dir_args=(--config-settings="build-dir=$SPEMBED_VENV/spembed-build")
fi
t0=$SECONDS

if ! "$PY" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" \
    2>/dev/null; then
  "$PY" -m pip install --disable-pip-version-check "torch==$TORCH_VERSION"
fi
"$PY" -m pip install --disable-pip-version-check -q pytest numpy "scikit-build-core>=0.10"
t_install=$((SECONDS - t0))

if [ -z "${SPEMBED_PREFIX:-}" ] && [ -d "$BUILD_DIR/install" ]; then
  export SPEMBED_PREFIX="$BUILD_DIR/install"
fi
echo "test_python: torch $("$PY" -c 'import torch; print(torch.__version__)'); core library from ${SPEMBED_PREFIX:-a fresh build}"
# No build isolation: the op library must be built against the torch installed above.
t0=$SECONDS
CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" "$PY" -m pip install --disable-pip-version-check \
  --no-build-isolation --no-deps ${build_dir_args[@]+"${build_dir_args[@]}"} "$SPEMBED_ROOT"
t_build=$((SECONDS - t0))

# From outside the source tree, so that `import spembed` is the installed package.
cd "$SPEMBED_ROOT/python_bindings/tests"
echo "test_python: torch $TORCH_VERSION: install ${t_install}s, package build ${t_build}s"
"$PY" -m pytest -q -p no:cacheprovider -rs .

# The sharded training example on 2 CPU ranks (gloo): rank 0 trains the
# unsharded model beside it and the run fails unless the losses match.
echo "test_python: examples/distributed_train.py under torchrun, 2 CPU ranks"
example_log=$("$PY" -m torch.distributed.run --standalone --nproc_per_node=2 \
  "$SPEMBED_ROOT/examples/distributed_train.py" 2>&1) || { echo "$example_log"; exit 1; }
echo "$example_log" | grep -E "^step|losses"
echo "$example_log" | grep -q "^losses match$"
