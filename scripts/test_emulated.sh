#!/usr/bin/env bash
# The GPU test suites without a GPU: builds the emulation variant
# (SPEMBED_EMULATION=ON: the real kernel sources compiled as host C++ against
# the CPU emulator in tests/emulator, docs/emulation.md) once under
# AddressSanitizer + UndefinedBehaviorSanitizer and once under
# ThreadSanitizer, and runs every test labelled `gpu` or `emulator` with
# SPEMBED_REQUIRE_GPU=1 (nothing may skip) and SPEMBED_TEST_SHAPES=small.
#
# The ASan build also compiles the CPU oracle with -march=x86-64-v3 (FMA
# available): the emulated suites compare the kernels with it, bit for bit
# where the summation order is fixed, so a contracted a*b+c in the oracle
# fails them.
#
#   SPEMBED_EMULATION_SANITIZERS="address thread"   which builds (default both)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

sanitizers="${SPEMBED_EMULATION_SANITIZERS:-address thread}"
for san in $sanitizers; do
  dir="$BUILD_DIR-emulated-$san"
  extra=()
  [ "$san" = address ] && extra+=(-DSPEMBED_CPU_ARCH_FLAGS=-march=x86-64-v3)
  start=$(date +%s)
  cmake -S "$SPEMBED_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPEMBED_EMULATION=ON \
    -DSPEMBED_SANITIZER="$san" -DSPEMBED_BUILD_TESTS=ON "${extra[@]}" >/dev/null
  cmake --build "$dir" -j "$JOBS"
  built=$(date +%s)
  # halt_on_error: a race or memory error fails the test that found it.
  SPEMBED_REQUIRE_GPU=1 SPEMBED_TEST_SHAPES=small \
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" \
    UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
    TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}" \
    ctest --test-dir "$dir" -L 'gpu|emulator' --output-on-failure -j "$JOBS" --no-tests=error
  echo "test_emulated: $san build $((built - start)) s, tests $(($(date +%s) - built)) s"
done
