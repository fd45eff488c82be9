#!/usr/bin/env bash
# One call on a GPU machine: build for sm_90, run the GPU tests, run them again
# under compute-sanitizer memcheck, run spembed_bench and the PyTorch peers
# (embedding bag forward and backward, attention), and write a markdown
# report. Each step runs even if
# an earlier one failed (when it can: no binary, no run); the script exits
# non-zero if any step failed.
#
# Usage: scripts/device_check.sh            (from anywhere; runs in the repo)
# Environment:
#   OUT                 where the report, JSON and logs go (flat); if unset the
#                       report goes to benchmarks/results/<date>-<device>.md
#                       and the logs to <build dir>/device_check/
#   SPEMBED_DEPS        prefix with prebuilt GoogleTest / Google Benchmark /
#                       dlpack headers (see scripts/stage_deps.sh); default
#                       <repo>/.deps when it exists
#   SPEMBED_BUILD_DIR   default build
#   SPEMBED_JOBS        default 16
#   SPEMBED_BUDGET_S    whole-run budget in seconds, default 520 (the machine's
#                       command limit is 600; leave room for the transfers)
#   SPEMBED_SANITIZER_GTEST_FILTER  negative gtest patterns for the memcheck
#                       run, default '*Huge*:*2To31*' (tests sized for the
#                       device's memory, such as TableLargerThan2To31Elements,
#                       take too long under memcheck)
#   SPEMBED_SANITIZER_SHARDS  GoogleTest shards run side by side under
#                       memcheck, default 4
#   SPEMBED_BENCH_ARGS  extra arguments for spembed_bench (e.g. --iters=20)
#   SPEMBED_CMAKE_ARGS  extra configure arguments
set -u -o pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The toolkit's tools (nvcc, compute-sanitizer), after any already on PATH.
export PATH="$PATH:/usr/local/cuda/bin:/usr/local/cuda/compute-sanitizer"
cd "$repo" || exit 2
start_s=$(date +%s)
budget_s=${SPEMBED_BUDGET_S:-520}
build_dir=${SPEMBED_BUILD_DIR:-build}
jobs=${SPEMBED_JOBS:-16}
deps=${SPEMBED_DEPS:-$repo/.deps}
sanitizer_exclude=${SPEMBED_SANITIZER_GTEST_FILTER:-*Huge*:*2To31*}
shards=${SPEMBED_SANITIZER_SHARDS:-4}
read -r -a bench_args <<<"${SPEMBED_BENCH_ARGS:-}"
read -r -a extra_cmake_args <<<"${SPEMBED_CMAKE_ARGS:-}"

elapsed() { echo $(($(date +%s) - start_s)); }
log() { printf '[device_check %4ss] %s\n' "$(elapsed)" "$*"; }

# Seconds a step may take: its cap, or what is left of the budget less
# `reserve` seconds kept for the steps after it (at least 1).
step_limit() {
  local cap=$1 reserve=$2 left
  left=$((budget_s - $(elapsed) - reserve))
  ((left < 1)) && left=1
  if ((left < cap)); then echo "$left"; else echo "$cap"; fi
}

results=()  # "step|status|detail"
failed=0
record() {
  results+=("$1|$2|$3")
  [[ $2 == fail ]] && failed=$((failed + 1))
  log "$1: $2${3:+ ($3)}"
}

gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
gpu_name=${gpu_name:-unknown-gpu}
slug=$(tr '[:upper:] ' '[:lower:]-' <<<"$gpu_name" | tr -cd 'a-z0-9-')
stamp=$(date -u +%Y-%m-%d)
if [[ -n ${OUT:-} ]]; then
  out_dir=$OUT
  report=$OUT/report.md
  bench_json=$OUT/spembed_bench.json
  torch_json=$OUT/torch_embedding_bag.json
  torch_bwd_json=$OUT/torch_embedding_bag_backward.json
  torch_attn_json=$OUT/torch_attention.json
else
  out_dir=$repo/$build_dir/device_check
  report=$repo/benchmarks/results/$stamp-$slug.md
  bench_json=$repo/benchmarks/results/$stamp-$slug-spembed.json
  torch_json=$repo/benchmarks/results/$stamp-$slug-torch.json
  torch_bwd_json=$repo/benchmarks/results/$stamp-$slug-torch-backward.json
  torch_attn_json=$repo/benchmarks/results/$stamp-$slug-torch-attention.json
fi
mkdir -p "$out_dir" "$(dirname "$report")"
build_log=$out_dir/build.log
tests_log=$out_dir/tests.log
bench_log=$out_dir/bench.log
: >"$build_log"
: >"$tests_log"
: >"$bench_log"

# ---- 1. machine ------------------------------------------------------------------
log "machine"
nvidia-smi || record machine fail "nvidia-smi failed"
nvcc_version=$(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*, V[0-9.]*')
log "nvcc: ${nvcc_version:-not found}; cmake: $(cmake --version | head -n 1)"

# ---- 2. dependencies ----------------------------------------------------------------
prefix_path=""
[[ -d $deps ]] && prefix_path=$deps

# dlpack/dlpack.h: the system, the deps prefix, or a copy shipped in a Python
# package (CuPy ships dlpack/dlpack.h; PyTorch ships it as ATen/dlpack.h, which
# gets a dlpack/ shim directory).
find_dlpack() {
  local d
  for d in /usr/include /usr/local/include "$deps/include"; do
    [[ -f $d/dlpack/dlpack.h ]] && { echo "$d"; return 0; }
  done
  python3 - <<'PY'
import importlib.util, os, sys
found = []
for pkg in ("cupy", "torch", "jaxlib"):
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        continue
    for root, _, files in os.walk(spec.submodule_search_locations[0]):
        if "dlpack.h" in files:
            found.append(os.path.join(root, "dlpack.h"))
for f in found:
    if os.path.basename(os.path.dirname(f)) == "dlpack":
        print(os.path.dirname(os.path.dirname(f)))
        sys.exit(0)
if found:
    shim = "/tmp/spembed_dlpack_shim"
    os.makedirs(os.path.join(shim, "dlpack"), exist_ok=True)
    link = os.path.join(shim, "dlpack", "dlpack.h")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(found[0], link)
    print(shim)
    sys.exit(0)
sys.exit(1)
PY
}
dlpack_dir=$(find_dlpack) || dlpack_dir=""
log "dlpack include dir: ${dlpack_dir:-not found}"

probe_dir=$(mktemp -d)
cat >"$probe_dir/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.18)
project(probe LANGUAGES CXX)
find_package(GTest QUIET)
find_package(benchmark QUIET)
message(STATUS "PROBE gtest=${GTest_FOUND} benchmark=${benchmark_FOUND}")
CMAKE
probe=$(cmake -S "$probe_dir" -B "$probe_dir/b" -DCMAKE_PREFIX_PATH="$prefix_path" 2>&1 |
  grep 'PROBE')
rm -rf "$probe_dir"
have_gtest=OFF
have_benchmark=no
[[ $probe == *"gtest=TRUE"* || $probe == *"gtest=1"* ]] && have_gtest=ON
[[ $probe == *"benchmark=1"* || $probe == *"benchmark=TRUE"* ]] && have_benchmark=yes
log "GoogleTest found: $have_gtest; Google Benchmark found: $have_benchmark"

# ---- 3. configure and build -------------------------------------------------------------
built=no
configure_args=(-S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90
  -DSPEMBED_BUILD_TESTS="$have_gtest" -DSPEMBED_BUILD_BENCHMARKS=ON)
command -v ninja >/dev/null && configure_args+=(-G Ninja)
[[ -n $prefix_path ]] && configure_args+=(-DCMAKE_PREFIX_PATH="$prefix_path")
[[ -n $dlpack_dir ]] && configure_args+=(-DDLPACK_INCLUDE_DIR="$dlpack_dir")
configure_args+=("${extra_cmake_args[@]}")
# A build directory made with another generator cannot be reused.
if [[ -f $build_dir/CMakeCache.txt ]]; then
  cached=$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$build_dir/CMakeCache.txt")
  wanted="Unix Makefiles"
  command -v ninja >/dev/null && wanted=Ninja
  [[ $cached != "$wanted" ]] && rm -rf "$build_dir"
fi
log "configure: cmake ${configure_args[*]}"
if timeout -k 5 "$(step_limit 90 300)" cmake "${configure_args[@]}" >>"$build_log" 2>&1; then
  limit=$(step_limit 300 240)
  log "build (-j$jobs, at most ${limit}s)"
  if timeout -k 5 "$limit" cmake --build "$build_dir" -j "$jobs" >>"$build_log" 2>&1; then
    built=yes
    record build pass "sm_90, $(grep -c 'warning' "$build_log") lines mentioning warnings"
  else
    tail -n 40 "$build_log"
    record build fail "see build.log"
  fi
else
  tail -n 40 "$build_log"
  record configure fail "see build.log"
fi

# ---- 4. GPU tests ----------------------------------------------------------------------
tests_passed=0
tests_total=0
cases=""
if [[ $have_gtest == OFF ]]; then
  record tests skip "GoogleTest not found: tests not built (carry a prefix in .deps)"
elif [[ $built != yes ]]; then
  record tests fail "not run: build failed"
else
  limit=$(step_limit 120 200)
  log "ctest -L gpu (SPEMBED_REQUIRE_GPU=1, at most ${limit}s)"
  # -V keeps GoogleTest's own output (a GPU binary is one ctest test holding
  # many cases) in the log, to count the cases as well.
  (cd "$build_dir" && SPEMBED_REQUIRE_GPU=1 timeout -k 5 "$limit" \
    ctest -L gpu -V --timeout "$limit") >>"$tests_log" 2>&1
  rc=$?
  grep -E '^\[  (FAILED|SKIPPED) \]|tests passed|tests failed|^[0-9]+/[0-9]+ Test' "$tests_log" |
    tail -n 30
  summary=$(grep -E 'tests passed, [0-9]+ tests failed out of [0-9]+' "$tests_log" | tail -n 1)
  if [[ $summary =~ ([0-9]+)\ tests\ failed\ out\ of\ ([0-9]+) ]]; then
    tests_total=${BASH_REMATCH[2]}
    tests_passed=$((tests_total - BASH_REMATCH[1]))
  fi
  gtest_counts() { grep -E "^[0-9]+: \[ +$1 +\] [0-9]+ test" "$tests_log" |
    sed -E 's/.*\] ([0-9]+) test.*/\1/' | awk '{s += $1} END {print s + 0}'; }
  cases="GoogleTest cases: $(gtest_counts PASSED) passed, $(gtest_counts FAILED) failed, \
$(gtest_counts SKIPPED) skipped"
  if ((rc == 0 && tests_total > 0)); then
    record tests pass "ctest $tests_passed/$tests_total passed; $cases"
  else
    record tests fail "ctest $tests_passed/$tests_total passed, exit $rc; $cases"
  fi
fi

# ---- 5. compute-sanitizer memcheck on the GPU test binaries ------------------------------
sanitizer_summary="not run"
if [[ $have_gtest == OFF ]]; then
  record memcheck skip "no tests built"
elif [[ $built != yes ]]; then
  record memcheck fail "not run: build failed"
elif ! command -v compute-sanitizer >/dev/null; then
  record memcheck fail "compute-sanitizer not found"
else
  # One line per binary: the binary, then its GPU tests as a gtest filter
  # (empty when ctest runs the binary whole).
  mapfile -t targets < <(cd "$build_dir" && ctest -L gpu --show-only=json-v1 2>/dev/null |
    python3 -c '
import json, sys
tests = json.load(sys.stdin).get("tests", [])
by_binary = {}
for t in tests:
    cmd = t.get("command") or []
    if not cmd:
        continue
    filters = by_binary.setdefault(cmd[0], [])
    for arg in cmd[1:]:
        if arg.startswith("--gtest_filter="):
            filters.append(arg.split("=", 1)[1])
for binary, filters in by_binary.items():
    print(binary + "\t" + ":".join(filters))
')
  if ((${#targets[@]} == 0)); then
    record memcheck fail "no GPU test binaries found by ctest -L gpu"
  else
    clean=0
    dirty=()
    shard_dir=$(mktemp -d)
    for line in "${targets[@]}"; do
      binary=${line%%$'\t'*}
      positive=${line#*$'\t'}
      limit=$(step_limit 150 170)
      if ((limit < 10)); then
        dirty+=("$(basename "$binary") (no time left)")
        continue
      fi
      # memcheck is mostly host-side work: GoogleTest shards run side by side.
      log "memcheck $(basename "$binary"), $shards shards (at most ${limit}s)"
      for ((i = 0; i < shards; i++)); do
        (
          SPEMBED_REQUIRE_GPU=1 GTEST_TOTAL_SHARDS=$shards GTEST_SHARD_INDEX=$i \
            timeout -k 5 "$limit" compute-sanitizer --tool memcheck --error-exitcode 99 \
            --print-limit 20 "$binary" "--gtest_filter=${positive}-${sanitizer_exclude}" \
            >"$shard_dir/$i.log" 2>&1
          echo $? >"$shard_dir/$i.rc"
        ) &
      done
      wait
      worst=0
      for ((i = 0; i < shards; i++)); do
        cat "$shard_dir/$i.log" >>"$tests_log"
        rc=$(cat "$shard_dir/$i.rc")
        ((rc != 0 && worst != 99)) && worst=$rc
      done
      case $worst in
        0) clean=$((clean + 1)) ;;
        99) dirty+=("$(basename "$binary") (memcheck errors)") ;;
        124 | 137) dirty+=("$(basename "$binary") (timed out)") ;;
        *) dirty+=("$(basename "$binary") (exit $worst: tests failed under memcheck)") ;;
      esac
    done
    rm -rf "$shard_dir"
    grep -E '^========= (ERROR SUMMARY|Invalid|Program hit)' "$tests_log" | sort | uniq -c |
      head -n 20
    sanitizer_summary="$clean of ${#targets[@]} binaries clean"
    if ((${#dirty[@]} == 0)); then
      record memcheck pass "$sanitizer_summary"
    else
      sanitizer_summary+="; ${dirty[*]}"
      record memcheck fail "$sanitizer_summary"
    fi
  fi
fi

# ---- 5b. Python package on CUDA ----------------------------------------------------------
# The package is built against this build's installed library and the
# machine's torch; scikit-build-core and pytest come from .deps/wheels when the
# machine cannot reach PyPI (scripts/stage_deps.sh puts them there).
py_tests="not run"
limit=$(step_limit 200 170)
if [[ $built != yes ]]; then
  record python fail "not run: build failed"
elif ! python3 -c "import torch" 2>/dev/null; then
  record python skip "PyTorch not available"
elif ((limit < 60)); then
  record python fail "no time left"
else
  log "python package: install + pytest (SPEMBED_REQUIRE_GPU=1, at most ${limit}s)"
  py_log=$out_dir/python.log
  wheels=""
  [[ -d $deps/wheels ]] && wheels="--no-index --find-links $deps/wheels"
  REPO=$repo BUILD=$build_dir JOBS=$jobs WHEELS=$wheels timeout -k 5 "$limit" bash -c '
    set -e
    python3 -c "import scikit_build_core, pytest" 2>/dev/null ||
      python3 -m pip install -q $WHEELS "scikit-build-core>=0.10" pytest
    cmake --install "$BUILD" --prefix "$BUILD/install" >/dev/null
    SPEMBED_PREFIX="$REPO/$BUILD/install" CMAKE_BUILD_PARALLEL_LEVEL=$JOBS \
      python3 -m pip install -q --no-build-isolation --no-deps "$REPO"
    cd "$REPO/python_bindings/tests"
    SPEMBED_REQUIRE_GPU=1 python3 -m pytest -q -p no:cacheprovider -rs .
  ' >"$py_log" 2>&1
  rc=$?
  py_tests=$(grep -E '[0-9]+ (passed|failed)' "$py_log" | tail -n 1)
  tail -n 30 "$py_log"
  if ((rc == 0)); then
    record python pass "pytest: ${py_tests:-?}"
  else
    record python fail "exit $rc; pytest: ${py_tests:-no summary} (see python.log)"
  fi
fi

# ---- 6. benchmarks ---------------------------------------------------------------------
bench_bin=$build_dir/benchmarks/spembed_bench
if [[ $have_benchmark == no ]]; then
  record spembed_bench skip "Google Benchmark not found: not built (carry a prefix in .deps)"
elif [[ ! -x $bench_bin ]]; then
  record spembed_bench fail "not built"
else
  limit=$(step_limit 240 180)
  log "spembed_bench (at most ${limit}s)"
  timeout -k 5 "$limit" "$bench_bin" --benchmark_out="$bench_json" \
    --benchmark_out_format=json "${bench_args[@]}" 2>&1 | tee -a "$bench_log"
  rc=${PIPESTATUS[0]}
  errors=$(grep -c '"error_occurred": true' "$bench_json" 2>/dev/null)
  if grep -q 'No CUDA GPU found' "$bench_log"; then
    record spembed_bench fail "the binary found no GPU and ran the CPU path"
  elif ((rc == 0)); then
    record spembed_bench pass "${errors:-0} benchmarks reported errors or skips"
  else
    record spembed_bench fail "exit $rc (124: out of time)"
  fi
fi

# A PyTorch peer script: `name` runs benchmarks/<name>.py for at most `cap`
# seconds (keeping `reserve` for the steps after it) and writes `json`;
# no JSON means PyTorch or CUDA was not there. Extra arguments follow; the
# string {limit-10} in them becomes the step's limit less 10 s.
run_torch_script() {
  local name=$1 json=$2 cap=$3 reserve=$4
  shift 4
  limit=$(step_limit "$cap" "$reserve")
  if ((limit < 20)); then
    record "$name" fail "no time left"
    return
  fi
  local extra=()
  (($# > 0)) && extra=("${@//\{limit-10\}/$((limit - 10))}")
  log "$name.py (at most ${limit}s)"
  rm -f "$json"
  PYTHONUNBUFFERED=1 timeout -k 5 "$limit" python3 "benchmarks/$name.py" \
    --json "$json" "${extra[@]}" 2>&1 | tee -a "$bench_log"
  rc=${PIPESTATUS[0]}
  if ((rc != 0)); then
    record "$name" fail "exit $rc (124: out of time)"
  elif [[ ! -f $json ]]; then
    record "$name" skip "PyTorch or CUDA not available to it"
  elif grep -q 'budget-s .* reached' "$bench_log"; then
    record "$name" pass "cut short by its time budget: some cases not run"
  else
    record "$name" pass ""
  fi
}

run_torch_script torch_embedding_bag "$torch_json" 120 95
run_torch_script torch_embedding_bag_backward "$torch_bwd_json" 150 35
# The attention peers stop starting new cases 10 s before their limit, so a
# tight budget still leaves a JSON of the cases that ran.
run_torch_script torch_attention "$torch_attn_json" 90 10 --budget-s "{limit-10}"

limit=$(step_limit 120 10)
if [[ $py_tests == "not run" ]] || ! python3 -c "import spembed" 2>/dev/null; then
  record torch_ops_bench skip "the spembed package is not installed"
elif ((limit < 20)); then
  record torch_ops_bench fail "no time left"
else
  log "torch_ops_bench.py (at most ${limit}s)"
  PYTHONUNBUFFERED=1 timeout -k 5 "$limit" python3 benchmarks/torch_ops_bench.py \
    >"$out_dir/torch_ops.jsonl" 2>>"$bench_log"
  rc=$?
  cat "$out_dir/torch_ops.jsonl"
  if ((rc != 0)); then
    record torch_ops_bench fail "exit $rc"
  elif ! grep -q "^{" "$out_dir/torch_ops.jsonl"; then
    record torch_ops_bench skip "no results (no CUDA device visible to PyTorch)"
  else
    record torch_ops_bench pass ""
  fi
fi

# ---- 7. report -------------------------------------------------------------------------
commit=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo "unknown (no commit / no git metadata)")
dirty_files=$(git -C "$repo" status --porcelain 2>/dev/null | wc -l)
table=""
if [[ -f $bench_json ]]; then
  torch_arg=()
  [[ -f $torch_json ]] && torch_arg=(--torch "$torch_json")
  [[ -f $torch_bwd_json ]] && torch_arg+=(--torch-backward "$torch_bwd_json")
  [[ -f $torch_attn_json ]] && torch_arg+=(--torch-attention "$torch_attn_json")
  table=$(python3 scripts/bench_report.py "$bench_json" "${torch_arg[@]}" 2>&1) ||
    record report fail "bench_report.py failed"
fi
{
  echo "# spembed device check: $stamp, $gpu_name"
  echo
  echo "- date (UTC): $(date -u '+%Y-%m-%d %H:%M')"
  echo "- device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"
  echo "- nvcc: ${nvcc_version:-?}"
  echo "- torch: $(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null || echo 'not available')"
  echo "- commit: $commit ($dirty_files uncommitted paths in the tree)"
  echo "- command: scripts/device_check.sh (build: cmake ${configure_args[*]}; spembed_bench --benchmark_out_format=json ${bench_args[*]})"
  echo "- tests (ctest -L gpu, SPEMBED_REQUIRE_GPU=1): $tests_passed of $tests_total ctest tests passed${cases:+; $cases}"
  echo "- compute-sanitizer memcheck: $sanitizer_summary"
  echo "- Python package (pytest, SPEMBED_REQUIRE_GPU=1): $py_tests"
  echo "- wall time: $(elapsed) s"
  echo
  echo "| step | status | detail |"
  echo "|---|---|---|"
  for r in "${results[@]}"; do
    IFS='|' read -r name status detail <<<"$r"
    echo "| $name | $status | $detail |"
  done
  echo
  echo "## Embedding bag forward and backward; varlen attention"
  echo
  if [[ -n $table ]]; then echo "$table"; else echo "No benchmark results."; fi
  if grep -q "^{" "$out_dir/torch_ops.jsonl" 2>/dev/null; then
    echo
    echo "## spembed torch ops vs torch (torch_ops_bench.py, one JSON line per case)"
    echo
    echo '```'
    cat "$out_dir/torch_ops.jsonl"
    echo '```'
  fi
} >"$report"
log "report: $report"
head -n 40 "$report"

if ((failed > 0)); then
  log "$failed step(s) failed"
  exit 1
fi
log "all steps passed or were skipped"
exit 0
