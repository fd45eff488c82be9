#!/usr/bin/env bash
# The GPU machine's check, sized for one lease: one H200 with 16 cores, lent for
# 15 minutes of device time in all (the machine's start, a minute or more,
# included), one command at most 10 minutes. Everything that needs no GPU is
# done beforehand, here (--prepare); the device command then runs in stages,
# by priority, each under its own time limit inside a global deadline (8
# minutes), and rewrites the report as each stage ends, so a run cut short
# still returns what it found.
#
# Modes:
#   scripts/device_check.sh --prepare        here, no GPU needed: stage the
#       dependencies (.deps, scripts/stage_deps.sh), configure and build for
#       sm_90 (90-real: machine code, no PTX) into build-device/, only the
#       targets the check runs; install it into build-device-install/ (not
#       carried); build the Python wheel into build-device/wheel/ when the
#       local torch is the GPU machine's version; record the source hash in
#       build-device/device_check.stamp; check that the working tree + the
#       carried paths fit in 64 MiB (48.4 MiB on 2026-12-03: tree 1.5, .deps
#       4.6, build-device 42.3); print the device call. First build: ~6-8 min
#       on two cores; later ones rebuild what changed.
#   scripts/device_check.sh --print-command  the device call (command, carry,
#       timeout_s), the size that travels, whether the prepared build is current.
#   scripts/device_check.sh                  the check itself (GPU machine):
#       command `bash scripts/device_check.sh`, carry [".deps", "build-device"],
#       timeout_s 570; it compiles nothing when the tree it was sent hashes as
#       the prepared one did, else it builds there first.
#
# Stages (priority order; cap = the most a stage may take, the deadline
# permitting; a stage that cannot start before the deadline is recorded as
# "not run: out of time"). Expected times on the H200 (16 cores) are
# estimates from the code and from what was measured here (case counts,
# shapes, runs, the build's CPU time), not yet measured on the device: the
# report records each stage's and step's wall time and the slowest test
# cases, to recalibrate. Dry run = this script on the 2-core machine without
# a GPU (2026-12-03), where every GPU stage fails or is skipped at once.
#
#   stage                                         cap     expected (H200)    dry run here
#   0 environment facts, prepared-build check,     60 s    15-25 s            6-16 s
#     wheel install + import
#     (stale or missing build: configure, -j16,   330 s    +2.5-3 min         (cut at 330 s
#     install, then the Python package)                    (~300 CPU-s of     on 2 cores,
#                                                          nvcc, longest      as designed)
#                                                          file ~40 s)
#   1 GPU correctness: SPEMBED_REQUIRE_GPU=1       150 s    45-90 s            14-24 s (all
#     ctest -L gpu -j4 (full shapes, 1,230                                      cases fail at
#     GoogleTest cases) beside pytest -k cuda                                   once; pytest
#     (182 cases, 4 xdist workers)                                              is the most)
#   2 compute-sanitizer, SPEMBED_TEST_SHAPES=      110 s    60-110 s           <1 s (not
#     small, 15 processes at once: memcheck on                                  installed)
#     the 4 GPU suites (sharded), racecheck and
#     synccheck on attention / backward subsets
#   3 headline rows, every peer, 50 runs: 37       130 s    90-130 s           <1 s (no GPU)
#     spembed_bench rows (forward B65536_L32_D128
#     uniform fp32 / fp16, D16 L1, T32 D128;
#     backward grad vs atomic vs stock, row-wise
#     Adagrad, Adam; attention HSTU fp16 / bf16,
#     SASRec fp32, target Lq16, long) + their
#     torch peers; bench_report.py's targets
#   4 the rest: 442 spembed_bench rows and the     what is  whole sweep:       <1 s (no GPU)
#     torch peers, 20 runs, forward, backward,     left     6-9 min, so
#     attention, then torch_ops_bench.py; the      (~110-   expect partial
#     full report of stages 3 + 4                  200 s)
#   whole command                                  480 s    ~8 min             21-36 s
#
# With the machine's start (1-2 min) and the transfers, one call uses about
# 10-11 of the lease's 15 minutes.
# A second lease (or the time left in this one) can run the rest alone:
#   SPEMBED_DC_STAGES="0 4" SPEMBED_DEADLINE_S=300 bash scripts/device_check.sh
#
# Outputs: with OUT set (the device tool), $OUT gets at most 7 files (the tool
# returns 8 at most): report.md, logs.tar.gz (every log and raw JSON: ctest,
# GoogleTest JSON, pytest, each sanitizer run, build, benchmarks, env facts),
# spembed_bench.json, torch_embedding_bag.json,
# torch_embedding_bag_backward.json, torch_attention.json, torch_ops.jsonl.
# Without OUT: the report and JSON go to benchmarks/results/<date>-<device>*,
# the logs stay in <build dir>/device_check/.
#
# Environment:
#   SPEMBED_DEADLINE_S   whole-run deadline in seconds (default 480)
#   SPEMBED_DC_STAGES    stages to run (default "0 1 2 3 4"; 0 is always run)
#   SPEMBED_BUILD_DIR    the prepared build directory, relative to the repo
#                        (default build-device; it is carried)
#   SPEMBED_DEPS         prefix with GoogleTest / Google Benchmark / dlpack
#                        (default <repo>/.deps, scripts/stage_deps.sh)
#   SPEMBED_JOBS         build parallelism (default: nproc)
#   SPEMBED_REST_ITERS   timed runs per benchmark in stage 4 (default 20)
#   SPEMBED_BENCH_ARGS   extra arguments for every spembed_bench run
#   SPEMBED_CMAKE_ARGS   extra configure arguments
#   SPEMBED_DEVICE_TORCH the GPU machine's torch version (default 2.11.0):
#                        --prepare builds the wheel only against that version
#   SPEMBED_DC_CPU_BENCH=1  run the benchmark stages without a GPU (the CPU
#                        path on reduced shapes): a test of the report plumbing
set -u -o pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$PATH:/usr/local/cuda/bin:/usr/local/cuda/compute-sanitizer"
cd "$repo" || exit 2

mode=run
case ${1:-} in
  --prepare) mode=prepare ;;
  --print-command) mode=print ;;
  -h | --help)
    sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  "") ;;
  *)
    echo "device_check: unknown argument '$1' (--prepare, --print-command, --help)" >&2
    exit 2
    ;;
esac

build_rel=${SPEMBED_BUILD_DIR:-build-device}
case $build_rel in /*) build_dir=$build_rel ;; *) build_dir=$repo/$build_rel ;; esac
deps=${SPEMBED_DEPS:-$repo/.deps}
jobs=${SPEMBED_JOBS:-$(nproc)}
deadline_s=${SPEMBED_DEADLINE_S:-480}
run_stages=" 0 ${SPEMBED_DC_STAGES:-1 2 3 4} "
rest_iters=${SPEMBED_REST_ITERS:-20}
device_torch=${SPEMBED_DEVICE_TORCH:-2.11.0}
read -r -a bench_args <<<"${SPEMBED_BENCH_ARGS:-}"
read -r -a extra_cmake_args <<<"${SPEMBED_CMAKE_ARGS:-}"
stamp_file=$build_dir/device_check.stamp
install_dir=${build_dir}-install  # --prepare; the check uses its work directory
carry_limit=$((64 * 1024 * 1024))
tool_timeout_s=570
device_command="bash scripts/device_check.sh"
carry_paths=("$(realpath --relative-to="$repo" "$deps")" "$build_rel")

# Stage caps (seconds) and the time kept for the final report after the deadline's last stage.
cap_env=60
cap_rebuild=330
cap_correctness=150
cap_sanitizer=110
cap_headline=130
final_reserve=15

# ---- helpers shared by the modes ----------------------------------------------------------------

# Hash of what the prepared build is made from (the files the device copy of
# the tree holds too): sources, CMake files, the Python package. The device
# compares it with the one --prepare recorded.
hashed_paths=(CMakeLists.txt cmake host kernels include tests benchmarks python_bindings pyproject.toml)
hashed_files() {
  find "${hashed_paths[@]}" -type f ! -name '*.md' ! -name '*.pyc' ! -path '*/__pycache__/*' \
    ! -path '*.egg-info/*' ! -path 'python_bindings/tests/*' ! -path 'benchmarks/*.py' \
    ! -path 'benchmarks/results/*' 2>/dev/null | LC_ALL=C sort
}
source_hash() { hashed_files | xargs -d '\n' sha256sum | sha256sum | cut -c1-16; }
stamp_get() { sed -n "s/^$1=//p" "$stamp_file" 2>/dev/null | head -n 1; }

# The headline benchmark rows: the cases the README's and bench_report.py's
# targets name, with every peer of the same run. Written so that they also
# match the CPU path's reduced names (B / 64, E / 100, attention B / 256)
# for the plumbing test. POSIX ERE and Python re alike.
headline_fwd='B[0-9]+_L32_D128_E[0-9]+[kM]/uniform/fp(32|16)/sum|B[0-9]+_L1_D16_E[0-9]+[kM]/uniform/fp32/sum|T32_B(16384|256)_L20_D128_E(1M|10k)/uniform/fp32/sum'
headline_bwd='B[0-9]+_L32_D128_E[0-9]+[kM]/(uniform|zipf1\.05|hot30)/fp32/grad|B[0-9]+_L32_D128_E[0-9]+[kM]/uniform/fp32/(rowwise_adagrad|adam)'
headline_attn='hstu_B[0-9]+_L1-512_H4_d64_causal/(fp16|bf16)/(fwd|bwd)|sasrec_B[0-9]+_L1-200_H1_d50_causal/fp32/(fwd|bwd)|target_B[0-9]+_Lq16_Lk1-1000_H4_d64/fp16/fwd|long_B[0-9]+_L[0-9]+_H[0-9]+_d128_causal/fp16/(fwd|bwd)'
# spembed_bench's names: <group>/<case>/<peer>/iterations:N/manual_time.
headline_bench_re="^(eb|eb_cpu)/($headline_fwd)/|^(ebb|ebb_cpu)/($headline_bwd)/|^(attn|attn_cpu)/($headline_attn)/"

# dlpack/dlpack.h: the deps prefix, the system, or a copy shipped in a Python
# package (CuPy ships dlpack/dlpack.h; PyTorch ships it as ATen/dlpack.h, which
# gets a dlpack/ shim directory).
find_dlpack() {
  local d
  for d in "$deps/include" /usr/include /usr/local/include; do
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

# Whether GoogleTest and Google Benchmark can be found (with the deps prefix).
have_gtest=OFF
have_benchmark=no
probe_deps() {
  local dir probe
  dir=$(mktemp -d)
  cat >"$dir/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.18)
project(probe LANGUAGES CXX)
find_package(GTest QUIET)
find_package(benchmark QUIET)
message(STATUS "PROBE gtest=${GTest_FOUND} benchmark=${benchmark_FOUND}")
CMAKE
  probe=$(cmake -S "$dir" -B "$dir/b" ${deps:+-DCMAKE_PREFIX_PATH="$deps"} 2>&1 | grep 'PROBE')
  rm -rf "$dir"
  have_gtest=OFF
  have_benchmark=no
  [[ $probe == *"gtest=TRUE"* || $probe == *"gtest=1"* ]] && have_gtest=ON
  [[ $probe == *"benchmark=1"* || $probe == *"benchmark=TRUE"* ]] && have_benchmark=yes
}

configure_args=()
set_configure_args() {
  local dlpack_dir
  dlpack_dir=$(find_dlpack) || dlpack_dir=""
  configure_args=(-S "$repo" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_CUDA_ARCHITECTURES=90-real -DSPEMBED_BUILD_TESTS="$have_gtest"
    -DSPEMBED_BUILD_BENCHMARKS=ON -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON)
  command -v ninja >/dev/null && configure_args+=(-G Ninja)
  [[ -d $deps ]] && configure_args+=(-DCMAKE_PREFIX_PATH="$deps")
  [[ -n $dlpack_dir ]] && configure_args+=(-DDLPACK_INCLUDE_DIR="$dlpack_dir")
  configure_args+=("${extra_cmake_args[@]}")
}

# The targets the check runs: the library, the benchmark, and the binaries of
# the ctest tests labelled gpu (read from the configured build's
# CTestTestfile.cmake files, which name them before they are built).
needed_targets() {
  python3 - "$build_dir" <<'PY'
import glob, os, re, sys
bins = set()
for f in glob.glob(os.path.join(sys.argv[1], "**", "CTestTestfile.cmake"), recursive=True):
    with open(f) as fh:
        text = fh.read()
    paths = dict(re.findall(r'add_test\((?:\[=\[)?([^\]\s"]+)(?:\]=\])? "([^"]+)"', text))
    for name, props in re.findall(
            r'set_tests_properties\((?:\[=\[)?([^\]\s"]+)(?:\]=\])? PROPERTIES (.*)', text):
        labels = re.search(r'LABELS "([^"]*)"', props)
        if labels and "gpu" in labels.group(1).split(";") and name in paths:
            bins.add(os.path.basename(paths[name]))
print(" ".join(["spembed"] + sorted(bins)))
PY
  [[ -d $build_dir/benchmarks/CMakeFiles/spembed_bench.dir ]] && echo spembed_bench
}

# limited LIMIT CMD...: CMD under `timeout -k 5 LIMIT`, run in the background
# and waited for, so that a signal to this script is handled at once (bash
# defers a trap until a foreground command ends); on_signal stops the pids.
bg_pids=()
limited() {
  local lim=$1 pid
  shift
  ((lim < 1)) && lim=1
  timeout -k 5 "$lim" "$@" &
  pid=$!
  bg_pids+=("$pid")
  wait "$pid"
}

# Configure (dropping a build directory made by another generator) and build
# the needed targets, each step under a time limit; then install. On failure
# `why` says what failed.
why=""
configure_and_build() {
  local limit=$1 log=$2 t_end cached wanted home
  t_end=$(($(date +%s) + limit))
  # A build directory made with another generator, or for a source tree at
  # another path (a carried build that is stale), cannot be reused.
  if [[ -f $build_dir/CMakeCache.txt ]]; then
    cached=$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$build_dir/CMakeCache.txt")
    home=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build_dir/CMakeCache.txt")
    wanted="Unix Makefiles"
    command -v ninja >/dev/null && wanted=Ninja
    if [[ $cached != "$wanted" || $home != "$repo" ]]; then
      echo "configure: removing $build_dir (generator '$cached', source '$home')" >>"$log"
      rm -rf "$build_dir"
    fi
  fi
  set_configure_args
  echo "configure: cmake ${configure_args[*]}" >>"$log"
  limited $((t_end - $(date +%s))) cmake "${configure_args[@]}" >>"$log" 2>&1 ||
    { why="configure failed"; return 1; }
  local targets
  read -r -a targets <<<"$(needed_targets | tr '\n' ' ')"
  echo "build: cmake --build $build_dir -j $jobs --target ${targets[*]}" >>"$log"
  limited $((t_end - $(date +%s))) cmake --build "$build_dir" -j "$jobs" \
    --target "${targets[@]}" >>"$log" 2>&1 || { why="build failed or ran out of time"; return 1; }
  install_into "$install_dir" "$log" || { why="install failed"; return 1; }
  return 0
}
# The installed library (headers, CMake package): what the Python package
# builds against. Kept out of the carried build directory (a second copy of
# libspembed); the device makes its own when it has to build the package.
install_into() { limited 60 cmake --install "$build_dir" --prefix "$1" >>"$2" 2>&1; }

# Bytes that travel with the device command: the working tree (tracked and
# untracked, not ignored) plus the carried paths.
tree_bytes() { git ls-files -co --exclude-standard -z 2>/dev/null | du -cb --files0-from=- 2>/dev/null | tail -n 1 | cut -f1; }
path_bytes() { if [[ -e $1 ]]; then du -sb "$1" | cut -f1; else echo 0; fi; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

print_command() {
  local tree deps_b build_b total hash_now hash_then
  tree=$(tree_bytes)
  deps_b=$(path_bytes "${carry_paths[0]}")
  build_b=$(path_bytes "${carry_paths[1]}")
  total=$((tree + deps_b + build_b))
  echo "Device tool call (the script stops by itself ${deadline_s} s after it starts):"
  echo "  command:   $device_command    (${#device_command} characters)"
  printf '  carry:     ["%s", "%s"]\n' "${carry_paths[0]}" "${carry_paths[1]}"
  echo "  timeout_s: $tool_timeout_s"
  echo "Travels: $(mib "$total") MiB of 64 MiB (working tree $(mib "$tree"), ${carry_paths[0]} $(mib "$deps_b"), ${carry_paths[1]} $(mib "$build_b"))"
  ((total > carry_limit)) && echo "  OVER THE 64 MiB LIMIT: the call would be refused"
  hash_then=$(stamp_get src_hash)
  if [[ -z $hash_then ]]; then
    echo "Prepared build: none (run scripts/device_check.sh --prepare): the device would build (2-4 min)"
  else
    hash_now=$(source_hash)
    if [[ $hash_now == "$hash_then" ]]; then
      echo "Prepared build: current (source hash $hash_now, $(stamp_get built_utc), commit $(stamp_get commit), $(stamp_get dirty) uncommitted paths; wheel: $(stamp_get torch_wheel))"
    else
      echo "Prepared build: STALE (sources changed since --prepare: $hash_then -> $hash_now); rerun --prepare, or the device rebuilds (2-4 min)"
    fi
  fi
  echo "Rest of the sweep in a later lease: SPEMBED_DC_STAGES=\"0 4\" SPEMBED_DEADLINE_S=300 $device_command"
}

# ---- --prepare ------------------------------------------------------------------------------------

prepare() {
  local t0 t log="${build_dir}-logs/prepare.log"
  t0=$(date +%s)
  mkdir -p "$(dirname "$log")"
  : >"$log"
  echo "prepare: log in $log"
  if [[ ! -f $deps/include/gtest/gtest.h || ! -f $deps/include/benchmark/benchmark.h ]]; then
    echo "prepare: staging dependencies (scripts/stage_deps.sh)"
    bash "$repo/scripts/stage_deps.sh" >>"$log" 2>&1 || { echo "prepare: stage_deps.sh failed"; return 1; }
  fi
  probe_deps
  if [[ $have_gtest != ON || $have_benchmark != yes ]]; then
    echo "prepare: GoogleTest ($have_gtest) or Google Benchmark ($have_benchmark) not found under $deps"
    return 1
  fi
  command -v nvcc >/dev/null || { echo "prepare: nvcc not found"; return 1; }
  t=$(date +%s)
  echo "prepare: configure + build for sm_90 in $build_dir (-j$jobs; the first build takes a while)"
  if ! configure_and_build 36000 "$log"; then
    tail -n 30 "$log"
    echo "prepare: $why (see $log)"
    return 1
  fi
  echo "prepare: build + install $(($(date +%s) - t)) s"

  # The Python wheel, against the local torch when it is the GPU machine's
  # version (the op layer links torch's libraries; a wheel for another
  # version would not load there): the device then only unpacks it.
  local torch_local wheel_note=none
  torch_local=$(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null)
  rm -rf "$build_dir/wheel"
  if [[ ${torch_local%%+*} == "$device_torch" ]]; then
    t=$(date +%s)
    echo "prepare: Python wheel against torch $torch_local"
    if SPEMBED_PREFIX="$install_dir" CMAKE_BUILD_PARALLEL_LEVEL=$jobs \
      python3 -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps \
      --config-settings=build-dir="$build_dir-py" -w "$build_dir/wheel" "$repo" >>"$log" 2>&1; then
      wheel_note=$torch_local
      echo "prepare: wheel $(ls "$build_dir"/wheel) ($(($(date +%s) - t)) s)"
    else
      tail -n 20 "$log"
      echo "prepare: wheel build failed; the device will build the package (about a minute)"
    fi
  else
    echo "prepare: local torch is '${torch_local:-none}', the GPU machine's is $device_torch: no wheel; the device builds it"
  fi

  local hash
  hash=$(source_hash)
  {
    echo "src_hash=$hash"
    echo "commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "dirty=$(git status --porcelain 2>/dev/null | wc -l)"
    echo "built_utc=$(date -u '+%Y-%m-%d %H:%M')"
    echo "source_dir=$repo"
    echo "nvcc=$(nvcc --version | grep -o 'release [0-9.]*, V[0-9.]*')"
    echo "torch_wheel=$wheel_note"
    echo "targets=$(needed_targets | tr '\n' ' ')"
  } >"$stamp_file"
  git diff --stat HEAD >"$build_dir/device_check.diffstat" 2>/dev/null

  # The device hashes the files it has; ignored files among the hashed paths
  # here would not travel and would make the hashes differ.
  local extra
  extra=$(comm -23 <(hashed_files) <(git ls-files -co --exclude-standard -- "${hashed_paths[@]}" | LC_ALL=C sort))
  [[ -n $extra ]] && printf 'prepare: WARNING: ignored files among the hashed sources (the device will see a different hash and rebuild):\n%s\n' "$extra"
  echo "prepare: done in $(($(date +%s) - t0)) s"
  echo
  print_command
  local total
  total=$(($(tree_bytes) + $(path_bytes "${carry_paths[0]}") + $(path_bytes "${carry_paths[1]}")))
  ((total <= carry_limit))
}

case $mode in
  prepare)
    prepare
    exit $?
    ;;
  print)
    print_command
    exit 0
    ;;
esac

# ==== the check (GPU machine) =====================================================================

start_s=$(date +%s)
elapsed() { echo $(($(date +%s) - start_s)); }
left() { echo $((deadline_s - $(elapsed))); }
# Seconds a step may run: its cap, or what is left before the deadline less
# the final report's reserve.
limit_for() {
  local cap=$1 l
  l=$(($(left) - final_reserve))
  if ((l < cap)); then echo "$l"; else echo "$cap"; fi
}

date_tag=$(date -u +%Y-%m-%d)
gpu_name=$(timeout 20 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
gpu_count=$(timeout 20 nvidia-smi -L 2>/dev/null | grep -c '^GPU')
gpu_name=${gpu_name:-no GPU}
slug=$(tr '[:upper:] ' '[:lower:]-' <<<"$gpu_name" | tr -cd 'a-z0-9-')
if [[ -n ${OUT:-} ]]; then
  wd=$(mktemp -d /tmp/spembed-device-check.XXXXXX)
  mkdir -p "$OUT"
  rm -f "$OUT"/{report.md,logs.tar.gz,spembed_bench.json,torch_embedding_bag.json,torch_embedding_bag_backward.json,torch_attention.json,torch_ops.jsonl}
  report=$OUT/report.md
  declare -A publish=([spembed_bench.json]=$OUT/spembed_bench.json
    [torch_embedding_bag.json]=$OUT/torch_embedding_bag.json
    [torch_embedding_bag_backward.json]=$OUT/torch_embedding_bag_backward.json
    [torch_attention.json]=$OUT/torch_attention.json [torch_ops.jsonl]=$OUT/torch_ops.jsonl)
else
  wd=$build_dir/device_check
  rm -rf "$wd"
  results=$repo/benchmarks/results
  report=$results/$date_tag-$slug.md
  declare -A publish=([spembed_bench.json]=$results/$date_tag-$slug-spembed.json
    [torch_embedding_bag.json]=$results/$date_tag-$slug-torch.json
    [torch_embedding_bag_backward.json]=$results/$date_tag-$slug-torch-backward.json
    [torch_attention.json]=$results/$date_tag-$slug-torch-attention.json
    [torch_ops.jsonl]=$results/$date_tag-$slug-torch-ops.jsonl)
fi
logs=$wd/logs
mkdir -p "$logs" "$wd/sections" "$(dirname "$report")"
site=$wd/site
install_dir=$wd/install
util=(python3 "$repo/scripts/device_check_util.py")

log() { printf '[device_check %4ss] %s\n' "$(elapsed)" "$*" | tee -a "$logs/console.log"; }

# ---- the report: rewritten after every stage --------------------------------------------------------

declare -A st_status st_wall st_limit st_detail st_title
stage_order=(0 1 2 3 4)
st_title=([0]="environment and build" [1]="GPU correctness (ctest -L gpu, pytest CUDA cases)"
  [2]="compute-sanitizer (memcheck, racecheck, synccheck)" [3]="headline benchmarks"
  [4]="the rest of the benchmark sweep")
facts_device="?" facts_nvcc="?" facts_torch="?" facts_sanitizer="?" facts_commit="?"
facts_build="?" facts_host="?"
state="in progress"
failed=0

# An exit status, with what 124 / 137 mean here.
rc_note() { case $1 in 124 | 137) echo "$1 (out of time)" ;; *) echo "$1" ;; esac; }
md_cell() { tr '\n|' ' /' <<<"$1" | sed 's/ *$//'; }

render_report() {
  local tmp=$report.tmp n
  {
    echo "# spembed device check: $date_tag, $gpu_name"
    echo
    echo "- state: $state ($(elapsed) s after the start; deadline $deadline_s s; stages run: $(xargs <<<"$run_stages"))"
    echo "- date (UTC): $(date -u '+%Y-%m-%d %H:%M')"
    echo "- device: $facts_device"
    echo "- host: $facts_host"
    echo "- nvcc: $facts_nvcc; compute-sanitizer: $facts_sanitizer; torch: $facts_torch"
    echo "- commit: $facts_commit"
    echo "- build: $facts_build"
    echo "- command: \`$device_command\` (OUT=${OUT:-unset})"
    echo
    echo "| stage | status | wall s | limit s | detail |"
    echo "|---|---|---|---|---|"
    for n in "${stage_order[@]}"; do
      [[ $run_stages == *" $n "* ]] || continue
      echo "| $n. ${st_title[$n]} | ${st_status[$n]:-pending} | ${st_wall[$n]:-} | ${st_limit[$n]:-} | $(md_cell "${st_detail[$n]:-}") |"
    done
    echo
    for n in "${stage_order[@]}"; do
      [[ -f $wd/sections/$n.md ]] && cat "$wd/sections/$n.md" && echo
    done
  } >"$tmp"
  mv "$tmp" "$report"
}

# Every log and raw JSON, as one file (the device tool returns 8 files at most).
pack_logs() {
  [[ -n ${OUT:-} ]] || return 0
  tar -czf "$OUT/logs.tar.gz.tmp" -C "$wd" logs 2>/dev/null && mv "$OUT/logs.tar.gz.tmp" "$OUT/logs.tar.gz"
}

cur=""
cur_t0=0
cur_end=0
# stage_begin N CAP MIN: starts stage N with a limit of min(CAP, time left),
# or records it as not run when less than MIN seconds are left.
stage_begin() {
  local n=$1 cap=$2 min=$3 limit
  cur=$n
  : >"$wd/sections/$n.body"
  limit=$(limit_for "$cap")
  if ((limit < min)); then
    st_status[$n]="not run"
    st_detail[$n]="out of time: $(left) s left before the deadline, the stage needs at least $min s"
    st_wall[$n]=0
    st_limit[$n]="-"
    write_section "$n"
    log "stage $n: not run (out of time)"
    render_report
    return 1
  fi
  cur_t0=$(date +%s)
  cur_end=$((cur_t0 + limit))
  st_status[$n]="running"
  st_limit[$n]=$limit
  log "stage $n: ${st_title[$n]} (at most ${limit} s)"
  render_report
  return 0
}
# Seconds a step inside the current stage may run: its cap or what is left of the stage.
step_limit() {
  local cap=$1 l
  l=$((cur_end - $(date +%s)))
  if ((l < cap)); then echo "$l"; else echo "$cap"; fi
}
body() { printf '%s\n' "$@" >>"$wd/sections/$cur.body"; }
# A log's last lines, as a fenced block in the stage's section.
body_tail() {
  local file=$1 lines=${2:-25} what=${3:-}
  [[ -s $file ]] || return 0
  body "" "<details><summary>${what:-$(basename "$file")}: last $lines lines</summary>" "" '```text'
  tail -n "$lines" "$file" | cut -c1-300 >>"$wd/sections/$cur.body"
  body '```' "</details>" ""
}
write_section() {
  local n=$1
  {
    echo "## Stage $n: ${st_title[$n]}"
    echo
    echo "- status: **${st_status[$n]}**; wall ${st_wall[$n]:-0} s (limit ${st_limit[$n]:-?} s)"
    [[ -n ${st_detail[$n]:-} ]] && echo "- ${st_detail[$n]}"
    echo
    cat "$wd/sections/$n.body" 2>/dev/null
  } >"$wd/sections/$n.md"
}
# stage_end STATUS DETAIL
stage_end() {
  local n=$cur
  st_status[$n]=$1
  st_detail[$n]=$2
  st_wall[$n]=$(($(date +%s) - cur_t0))
  [[ $1 == fail* ]] && failed=$((failed + 1))
  write_section "$n"
  log "stage $n: $1 (${st_wall[$n]} s)${2:+: $2}"
  render_report
  pack_logs
}

# The steps run under `timeout`, each in its own process group: a TERM to
# `timeout` reaches its command and the command's children.
on_signal() {
  trap '' TERM INT HUP
  ((${#bg_pids[@]} > 0)) && kill -TERM "${bg_pids[@]}" 2>/dev/null
  state="interrupted by a signal during stage ${cur:-?}"
  [[ -n $cur && ${st_status[$cur]:-} == running ]] && st_status[$cur]="interrupted"
  render_report
  pack_logs
  exit 1
}
trap on_signal TERM INT HUP

# ---- stage 0: environment facts and build ----------------------------------------------------------

built=no
py_ready=no
torch_version=""
stage_begin 0 "$cap_env" 5
{
  echo "== date"; date -u
  echo "== uname"; uname -a
  echo "== cpus / memory"; nproc; free -g
  echo "== nvidia-smi"; timeout 20 nvidia-smi 2>&1
  echo "== nvidia-smi query"
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,persistence_mode --format=csv 2>&1
  echo "== nvcc"; nvcc --version 2>&1
  echo "== compute-sanitizer"; compute-sanitizer --version 2>&1
  echo "== cmake / ninja"; cmake --version 2>&1 | head -n 1; ninja --version 2>&1
  echo "== python / torch"; command -v python3
  timeout 90 python3 -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "CUDA", torch.version.cuda, "sees a GPU:" if torch.cuda.is_available() else "sees no GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else "")' 2>&1
} >"$logs/env.txt" 2>&1
facts_device=$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
facts_device=${facts_device:-"no GPU (nvidia-smi found none)"}
facts_host="$(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB memory, $(uname -r)"
facts_nvcc=$(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*, V[0-9.]*')
facts_nvcc=${facts_nvcc:-not found}
facts_sanitizer=$(compute-sanitizer --version 2>/dev/null | grep -o 'Version [0-9.]*' | head -n 1)
facts_sanitizer=${facts_sanitizer:-not found}
torch_line=$(grep '^torch ' "$logs/env.txt" | tail -n 1)
torch_version=$(awk '{print $2}' <<<"$torch_line")
facts_torch=${torch_line:-not available}

# The prepared build: current when the hash of the sources here matches the one
# recorded by --prepare. Its CMake files hold the absolute paths of the
# machine that built it: when this copy of the tree lives elsewhere, a link
# from that path to here makes them valid (ctest, cmake --install).
# The binaries' run paths name the toolkit as /usr/local/cuda/lib and the
# deps by the absolute path they had here: both are added to the search.
export LD_LIBRARY_PATH="$build_dir:$deps/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib"
build_note=""
hash_now=$(source_hash)
hash_then=$(stamp_get src_hash)
recorded_src=$(stamp_get source_dir)
usable_prebuilt=no
if [[ -n $hash_then && $hash_now == "$hash_then" ]]; then
  if [[ $recorded_src == "$repo" ]]; then
    usable_prebuilt=yes
  elif [[ ! -e $recorded_src ]] && mkdir -p "$(dirname "$recorded_src")" && ln -s "$repo" "$recorded_src"; then
    usable_prebuilt=yes
    build_note="linked $recorded_src -> $repo (the prepared build's paths); "
  elif [[ -e $recorded_src && $(cd "$recorded_src" && pwd -P) == "$(pwd -P)" ]]; then
    usable_prebuilt=yes
  else
    build_note="the prepared build's source path $recorded_src is taken here; "
  fi
  read -r -a prebuilt_bins <<<"$(stamp_get targets)"
  for t in "${prebuilt_bins[@]}"; do
    case $t in
      spembed) f=$build_dir/libspembed.so ;;
      spembed_bench) f=$build_dir/benchmarks/spembed_bench ;;
      *) f=$build_dir/tests/$t ;;
    esac
    [[ -e $f ]] || { usable_prebuilt=no; build_note+="missing $f; "; }
  done
elif [[ -n $hash_then ]]; then
  build_note="the prepared build is stale (sources changed: $hash_then -> $hash_now); "
else
  build_note="no prepared build; "
fi

if [[ $usable_prebuilt == yes ]]; then
  built=prebuilt
  facts_commit="$(stamp_get commit) with $(stamp_get dirty) uncommitted paths (recorded by --prepare, $(stamp_get built_utc))"
  facts_build="prebuilt by --prepare (carried), sm_90, $(stamp_get nvcc); ${build_note}source hash $hash_now"
  body "- build: prebuilt and current (source hash $hash_now); ${build_note}no compile here"
  [[ -f $build_dir/device_check.diffstat ]] && cp "$build_dir/device_check.diffstat" "$logs/"
else
  facts_commit="$(git rev-parse HEAD 2>/dev/null || echo 'unknown (no git metadata here)')"
  limit=$(limit_for "$cap_rebuild")
  cur_end=$(($(date +%s) + limit))
  st_limit[0]=$(($(date +%s) + limit - cur_t0))
  log "stage 0: ${build_note}building here (-j$jobs, at most ${limit} s)"
  probe_deps
  if configure_and_build "$limit" "$logs/build.log"; then
    built=rebuilt
    facts_build="built here, sm_90 (${build_note%; })"
    body "- build: ${build_note}built here in $(($(date +%s) - cur_t0)) s"
  else
    facts_build="FAILED here: $why (${build_note%; })"
    body "- build: ${build_note}$why"
    body_tail "$logs/build.log" 40 "build.log"
  fi
fi
[[ $have_gtest == OFF && $built == rebuilt ]] && body "- GoogleTest not found: no tests built (carry .deps)"

# Libraries the binaries cannot find: retry with the CUDA libraries of the
# Python environment (nvidia-* wheels).
if [[ $built != no ]]; then
  bins=("$build_dir"/tests/test_*_gpu "$build_dir"/tests/test_c_client_cuda "$build_dir"/benchmarks/spembed_bench)
  missing=$(for b in "${bins[@]}"; do [[ -x $b ]] && ldd "$b" 2>/dev/null | grep 'not found'; done | sort -u)
  if [[ -n $missing ]]; then
    nv_dirs=$(python3 -c 'import glob, os, nvidia; print(":".join(d for p in nvidia.__path__ for d in glob.glob(os.path.join(p, "*", "lib"))))' 2>/dev/null)
    [[ -n $nv_dirs ]] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$nv_dirs"
    missing=$(for b in "${bins[@]}"; do [[ -x $b ]] && ldd "$b" 2>/dev/null | grep 'not found'; done | sort -u)
  fi
  [[ -n $missing ]] && body "- libraries not found by the binaries: $(tr -s ' \n' ' ' <<<"$missing")"
fi

# The Python package: the prepared wheel when it was built against this
# torch, else built here against the installed library.
py_note="not installed"
if [[ $built == no ]]; then
  py_note="not installed: no build"
elif [[ -z $torch_version ]]; then
  py_note="not installed: no PyTorch here"
else
  wheel=$(ls "$build_dir"/wheel/spembed-*.whl 2>/dev/null | head -n 1)
  rm -rf "$site"
  if [[ -n $wheel && $(stamp_get torch_wheel) == "$torch_version" && $built == prebuilt ]]; then
    limited "$(step_limit 60)" python3 -m pip install -q --disable-pip-version-check --no-index \
      --no-deps --no-compile --target "$site" "$wheel" >"$logs/python_install.log" 2>&1
    how="prepared wheel"
  else
    wheels=()
    [[ -d $deps/wheels ]] && wheels=(--find-links "$deps/wheels")
    lim=$(limit_for 150)
    log "stage 0: building the Python package here (at most ${lim} s)"
    [[ -d $install_dir ]] || install_into "$install_dir" "$logs/install.log"
    SPEMBED_PREFIX="$install_dir" CMAKE_BUILD_PARALLEL_LEVEL=$jobs limited "$lim" \
      python3 -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
      "${wheels[@]}" --config-settings=build-dir="$wd/py-build" --target "$site" "$repo" \
      >"$logs/python_install.log" 2>&1
    how="built here against torch $torch_version"
  fi
  if PYTHONPATH=$site limited 120 python3 -c 'import spembed' >>"$logs/python_install.log" 2>&1; then
    py_ready=yes
    py_note="installed ($how)"
  else
    py_note="FAILED ($how; see python_install.log)"
    body_tail "$logs/python_install.log" 20 "python_install.log"
  fi
fi
body "- Python package: $py_note"
body "- GPUs seen by nvidia-smi: $gpu_count; ${torch_line:-torch: not available}"
body_tail "$logs/env.txt" 40 "environment (env.txt)"
detail="GPUs: $gpu_count; build: $built; Python package: $py_note"
if [[ $built == no ]]; then
  stage_end fail "$detail"
elif ((gpu_count == 0)); then
  stage_end "fail" "no GPU visible (nvidia-smi): the GPU stages fail; $detail"
else
  stage_end pass "$detail"
fi

# ---- stage 1: GPU correctness ------------------------------------------------------------------------

if [[ $run_stages == *" 1 "* ]] && stage_begin 1 "$cap_correctness" 20; then
  if [[ $built == no ]]; then
    stage_end fail "not run: no build"
  elif [[ ! -f $build_dir/tests/CTestTestfile.cmake ]]; then
    stage_end fail "not run: the build has no tests (GoogleTest not found)"
  else
    lim=$(step_limit "$cap_correctness")
    mkdir -p "$logs/gtest"
    log "stage 1: ctest -L gpu -j4 and pytest -k cuda side by side (at most ${lim} s)"
    SPEMBED_REQUIRE_GPU=1 GTEST_OUTPUT="json:$logs/gtest/" timeout -k 5 "$lim" \
      ctest --test-dir "$build_dir" -L gpu -j 4 -V --timeout "$lim" >"$logs/ctest.log" 2>&1 &
    ctest_pid=$!
    bg_pids+=("$ctest_pid")
    if [[ $py_ready == yes ]]; then
      # pytest-xdist, where installed (the GPU machine's image has it): four
      # workers, so that the torch.compile cases do not run one after another.
      xdist=()
      python3 -c 'import xdist' 2>/dev/null && xdist=(-n 4)
      (
        cd "$repo/python_bindings/tests" && SPEMBED_REQUIRE_GPU=1 PYTHONPATH=$site \
          exec timeout -k 5 "$lim" python3 -m pytest -q -p no:cacheprovider -rs -k cuda \
          "${xdist[@]}" --junitxml="$logs/pytest.xml" . >"$logs/pytest.log" 2>&1
      ) &
      py_pid=$!
      bg_pids+=("$py_pid")
      wait "$py_pid"
      echo $? >"$logs/pytest.rc"
    fi
    wait "$ctest_pid"
    ctest_rc=$?
    rm -rf "$build_dir/Testing"  # ctest's own copy of the log: not carried along next time
    summary=$(grep -E 'tests passed, [0-9]+ tests failed out of [0-9]+' "$logs/ctest.log" | tail -n 1)
    body "- ctest -L gpu (SPEMBED_REQUIRE_GPU=1, full shapes, -j4): exit $ctest_rc; ${summary:-no summary}"
    grep -E '^ *[0-9]+/[0-9]+ Test +#' "$logs/ctest.log" | sed 's/^/  - /' >>"$wd/sections/1.body"
    body "" "$("${util[@]}" gtest-summary "$logs/gtest")" ""
    # A binary killed by the timeout writes no JSON: its cases, from the log.
    body "- GoogleTest lines in ctest.log (every binary, also one cut short): $(grep -c '\[       OK \]' "$logs/ctest.log") OK, $(grep -o '\[  FAILED  \] [A-Za-z][^ ,]*' "$logs/ctest.log" | sort -u | wc -l) FAILED"
    ok=yes
    [[ $ctest_rc == 0 && -n $summary ]] || ok=no
    [[ $ctest_rc == 124 || $ctest_rc == 137 ]] && body "- ctest ran out of its ${lim} s"
    [[ $ok == no ]] && body_tail "$logs/ctest.log" 40 "ctest.log"
    if [[ $py_ready == yes ]]; then
      py_rc=$(cat "$logs/pytest.rc" 2>/dev/null || echo '?')
      py_summary=$("${util[@]}" pytest-summary "$logs/pytest.xml")
      body "- pytest -k cuda (SPEMBED_REQUIRE_GPU=1): exit $py_rc; $py_summary"
      [[ $py_rc == 0 ]] || { ok=no; body_tail "$logs/pytest.log" 30 "pytest.log"; }
      py_detail="pytest exit $(rc_note "$py_rc")"
    else
      body "- pytest: not run (Python package $py_note)"
      py_detail="pytest not run"
      [[ -n $torch_version ]] && ok=no
    fi
    cases=$(grep -E '^\| all \|' <<<"$("${util[@]}" gtest-summary "$logs/gtest")" |
      awk -F'|' '{gsub(/ /, ""); print $3 " cases, " $4 " passed, " $5 " failed, " $6 " skipped"}')
    detail="ctest exit $(rc_note "$ctest_rc") (${summary:-no summary}); GoogleTest ${cases:-no results}; $py_detail"
    if [[ $ok == yes ]]; then stage_end pass "$detail"; else stage_end fail "$detail"; fi
  fi
fi

# ---- stage 2: compute-sanitizer --------------------------------------------------------------------

# tool|binary|gtest filter|shards: memcheck on every GPU suite (small shapes,
# every code path), racecheck and synccheck where kernels share memory and
# barriers (attention; the backward's sort and reduction; the forward uses
# neither): the attention cases that reach every kernel variant and every
# mask at the tile edges, the backward's hot rows (partial sums over chunks)
# and optimizer steps (row-wise Adagrad's row state). A filter that matches
# no case (a test renamed) counts as a failure: the table shows it.
sanitizer_runs=(
  "memcheck|test_forward_gpu|*-*2To31*:*Huge*|3"
  "memcheck|test_backward_gpu|*|2"
  "memcheck|test_attention_gpu|*|3"
  "memcheck|test_c_client_cuda||1"
  "racecheck|test_attention_gpu|*DispatchRunsEveryKernelVariant*:*MaskKindsAtTileEdges*|2"
  "racecheck|test_backward_gpu|*DistributionsAndDims*:*Optimizers*:*HotRowWorkItems*|2"
  "synccheck|test_attention_gpu|*DispatchRunsEveryKernelVariant*|1"
  "synccheck|test_backward_gpu|*DistributionsAndDims*|1"
)
if [[ $run_stages == *" 2 "* ]] && stage_begin 2 "$cap_sanitizer" 20; then
  if [[ $built == no ]]; then
    stage_end fail "not run: no build"
  elif ! command -v compute-sanitizer >/dev/null; then
    stage_end fail "not run: compute-sanitizer not found"
  else
    lim=$(step_limit "$cap_sanitizer")
    log "stage 2: the sanitizer runs side by side (at most ${lim} s)"
    : >"$logs/sanitizer_runs.tsv"
    declare -A san_runs=()  # pid -> tool, binary, shard, log
    t0=$(date +%s)
    for spec in "${sanitizer_runs[@]}"; do
      IFS='|' read -r tool bin filter shards <<<"$spec"
      exe=$build_dir/tests/$bin
      if [[ ! -x $exe ]]; then
        printf '%s\t%s\t-\tmissing\t0\t-\n' "$tool" "$bin" >>"$logs/sanitizer_runs.tsv"
        continue
      fi
      args=()
      [[ -n $filter ]] && args=("--gtest_filter=$filter")
      for ((i = 0; i < shards; i++)); do
        slog=$logs/sanitizer_${tool}_${bin}_$i.log
        SPEMBED_REQUIRE_GPU=1 SPEMBED_TEST_SHAPES=small GTEST_TOTAL_SHARDS=$shards \
          GTEST_SHARD_INDEX=$i timeout -k 5 "$lim" compute-sanitizer --tool "$tool" \
          --error-exitcode 99 --print-limit 20 "$exe" "${args[@]}" >"$slog" 2>&1 &
        san_runs[$!]="$tool"$'\t'"$bin"$'\t'"$((i + 1))/$shards"$'\t'"$slog"
        bg_pids+=($!)
      done
    done
    # As each run ends: its status and wall time.
    while ((${#san_runs[@]} > 0)); do
      wait -n -p done_pid "${!san_runs[@]}"
      rc=$?
      IFS=$'\t' read -r tool bin shard slog <<<"${san_runs[$done_pid]}"
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$bin" "$shard" "$rc" "$(($(date +%s) - t0))" \
        "$slog" >>"$logs/sanitizer_runs.tsv"
      unset "san_runs[$done_pid]"
    done
    sort -o "$logs/sanitizer_runs.tsv" "$logs/sanitizer_runs.tsv"
    # Exit 0 with no case run: the filter matched nothing (status "empty").
    while IFS=$'\t' read -r tool bin shard rc secs slog; do
      [[ $rc == 0 ]] && grep -q '^\[==========\] 0 tests' "$slog" 2>/dev/null && rc=empty
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$bin" "$shard" "$rc" "$secs" "$slog"
    done <"$logs/sanitizer_runs.tsv" >"$logs/sanitizer_runs.tsv.tmp"
    mv "$logs/sanitizer_runs.tsv.tmp" "$logs/sanitizer_runs.tsv"
    body "SPEMBED_REQUIRE_GPU=1 SPEMBED_TEST_SHAPES=small; GoogleTest shards run side by side; exit 99 = the tool reported errors." ""
    body "$("${util[@]}" sanitizer-summary "$logs/sanitizer_runs.tsv")" ""
    clean=$(awk -F'\t' '$4 == 0' "$logs/sanitizer_runs.tsv" | wc -l)
    total=$(wc -l <"$logs/sanitizer_runs.tsv")
    errs=$(awk -F'\t' '$4 == 99' "$logs/sanitizer_runs.tsv" | wc -l)
    tout=$(awk -F'\t' '$4 == 124 || $4 == 137' "$logs/sanitizer_runs.tsv" | wc -l)
    for f in $(awk -F'\t' '$4 != 0 {print $6}' "$logs/sanitizer_runs.tsv" | head -n 3); do
      [[ -f $f ]] && body_tail "$f" 20 "$(basename "$f")"
    done
    other=$((total - clean - errs - tout))
    detail="$clean of $total runs clean; $errs with sanitizer errors; $tout timed out; $other failed otherwise (tests failed, no GPU, no case matched: see the table)"
    if ((clean == total)); then
      stage_end pass "$detail"
    elif ((errs == 0 && clean + tout == total)); then
      stage_end partial "$detail (no errors in what ran)"
    else
      stage_end fail "$detail"
    fi
  fi
fi

# ---- benchmarks: shared pieces ---------------------------------------------------------------------

bench_bin=$build_dir/benchmarks/spembed_bench
bench_ok() {  # whether the benchmark stages can run; prints why not
  if [[ $built == no ]]; then
    echo "not run: no build"
  elif [[ ! -x $bench_bin ]]; then
    echo "not run: spembed_bench not built (Google Benchmark missing)"
  elif ((gpu_count == 0)) && [[ ${SPEMBED_DC_CPU_BENCH:-0} != 1 ]]; then
    echo "not run: no GPU (SPEMBED_DC_CPU_BENCH=1 runs the CPU path to test the report)"
  else
    return 0
  fi
  return 1
}
# A stage's steps share what is left of it by weight (their expected lengths
# on the H200, a guess from the case counts: recalibrate from a report); time
# a step leaves unused goes to the steps after it.
plan=()  # "name:weight", in order
plan_cap() {  # plan_cap I: step I's share of the time left in the stage
  local i=$1 w=0 j l
  for ((j = i; j < ${#plan[@]}; j++)); do w=$((w + ${plan[$j]##*:})); done
  l=$((cur_end - $(date +%s)))
  echo $((l * ${plan[$i]##*:} / (w > 0 ? w : 1)))
}
# run_bench NAME CAP JSON FILTER ITERS: spembed_bench on the rows FILTER selects.
run_bench() {
  local name=$1 cap=$2 json=$3 filter=$4 iters=$5 lim rc errors iter_args=()
  lim=$(step_limit "$cap")
  if ((lim < 15)); then
    body "- $name: not run (out of time)"
    return 1
  fi
  [[ -n $iters ]] && iter_args=("--iters=$iters")
  log "  $name: spembed_bench (at most ${lim} s)"
  local t0
  t0=$(date +%s)
  limited "$lim" "$bench_bin" --benchmark_filter="$filter" --benchmark_out="$json" \
    --benchmark_out_format=json "${iter_args[@]}" "${bench_args[@]}" >"$logs/$name.log" 2>&1
  rc=$?
  errors=$(grep -c '"error_occurred": true' "$json" 2>/dev/null)
  local rows
  rows=$(grep -c '"run_type": "iteration"' "$json" 2>/dev/null)
  ((rc == 0 && ${rows:-0} == 0)) && rc=3  # matched nothing
  body "- $name: exit $rc$( ((rc == 124 || rc == 137)) && echo ' (out of time: partial)'), ${rows:-0} rows, ${errors:-0} errors or skips, $(($(date +%s) - t0)) s"
  grep -q 'No CUDA GPU found' "$logs/$name.log" && body "  - the binary found no GPU and ran the CPU path (reduced shapes)"
  ((rc == 0)) || body_tail "$logs/$name.log" 15 "$name.log"
  return $rc
}
# run_torch NAME SCRIPT CAP JSON FILTER [ARGS...]: a PyTorch peer script.
run_torch() {
  local name=$1 script=$2 cap=$3 json=$4 filter=$5 lim rc
  shift 5
  lim=$(step_limit "$cap")
  if ((lim < 20)); then
    body "- $name: not run (out of time)"
    return 1
  fi
  log "  $name: $script (at most ${lim} s)"
  local t0
  t0=$(date +%s)
  rm -f "$json"
  PYTHONUNBUFFERED=1 limited "$lim" python3 "benchmarks/$script" --json "$json" \
    --filter "$filter" --budget-s $((lim - 10)) "$@" >"$logs/$name.log" 2>&1
  rc=$?
  local rows
  rows=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1])).get("results", [])))' "$json" 2>/dev/null)
  if [[ ! -f $json ]]; then
    body "- $name: exit $rc, no JSON ($(tail -n 1 "$logs/$name.log" | cut -c1-200))"
  else
    body "- $name: exit $rc, ${rows:-?} rows$(grep -q 'budget-s .* reached' "$logs/$name.log" && echo ', cut short by its time budget'), $(($(date +%s) - t0)) s"
  fi
  ((rc == 0)) || body_tail "$logs/$name.log" 15 "$name.log"
  return $rc
}
# bench_report_section TITLE SPEMBED_JSON TORCH_FWD TORCH_BWD TORCH_ATTN: the
# markdown of scripts/bench_report.py into the current section.
bench_report_section() {
  local title=$1 sj=$2 args=()
  [[ -f $3 ]] && args+=(--torch "$3")
  [[ -f $4 ]] && args+=(--torch-backward "$4")
  [[ -f $5 ]] && args+=(--torch-attention "$5")
  if [[ ! -f $sj ]]; then
    body "" "No spembed_bench results: no $title tables."
    return 1
  fi
  if python3 scripts/bench_report.py "$sj" "${args[@]}" -o "$wd/$title.md" >"$logs/bench_report_$title.log" 2>&1; then
    body "" "### Tables ($title)" ""
    sed 's/^### /#### /' "$wd/$title.md" >>"$wd/sections/$cur.body"
    cp "$wd/$title.md" "$logs/report_$title.md"
    return 0
  fi
  body "" "bench_report.py failed:" '```text' "$(tail -n 20 "$logs/bench_report_$title.log")" '```'
  return 1
}
targets_line() {  # "N of M target checks met" lines of a bench_report output
  grep -h 'target checks met' "$@" 2>/dev/null | tr '\n' ';' | sed 's/;$//; s/;/; /g'
}

# ---- stage 3: headline benchmarks ---------------------------------------------------------------------

if [[ $run_stages == *" 3 "* ]] && stage_begin 3 "$cap_headline" 30; then
  if ! why=$(bench_ok); then
    stage_end fail "$why"
  else
    body "Rows (every peer of each): forward \`$headline_fwd\`; backward \`$headline_bwd\`; attention \`$headline_attn\`." ""
    iters=""
    ((gpu_count == 0)) && iters=2
    plan=(bench:60)
    [[ -n $torch_version ]] && plan+=(torch_fwd:20 torch_bwd:25 torch_attn:25)
    run_bench bench_headline "$(plan_cap 0)" "$logs/spembed_headline.json" "$headline_bench_re" "$iters"
    rc_b=$?
    rc_t=0
    if [[ -n $torch_version ]]; then
      run_torch torch_fwd_headline torch_embedding_bag.py "$(plan_cap 1)" \
        "$logs/torch_fwd_headline.json" "^(?:$headline_fwd)\$" || rc_t=1
      run_torch torch_bwd_headline torch_embedding_bag_backward.py "$(plan_cap 2)" \
        "$logs/torch_bwd_headline.json" "^(?:$headline_bwd)\$" || rc_t=1
      run_torch torch_attn_headline torch_attention.py "$(plan_cap 3)" \
        "$logs/torch_attn_headline.json" "^(?:$headline_attn)\$" || rc_t=1
    else
      body "- torch peers: not run (no PyTorch)"
    fi
    bench_report_section headline "$logs/spembed_headline.json" "$logs/torch_fwd_headline.json" \
      "$logs/torch_bwd_headline.json" "$logs/torch_attn_headline.json"
    met=$(targets_line "$wd/headline.md")
    detail="${met:-no target table}"
    if ((rc_b != 0)) && [[ -f $logs/spembed_headline.json ]]; then
      stage_end partial "spembed_bench exit $rc_b; $detail"
    elif ((rc_b != 0)); then
      stage_end fail "spembed_bench exit $rc_b; $detail"
    elif ((gpu_count == 0)); then
      stage_end "pass (CPU path)" "no GPU: CPU path on reduced shapes (plumbing test); $detail"
    elif ((rc_t != 0)); then
      stage_end partial "a torch peer script failed or ran out of time; $detail"
    else
      stage_end pass "$detail"
    fi
  fi
fi

# ---- stage 4: the rest of the sweep --------------------------------------------------------------------

if [[ $run_stages == *" 4 "* ]] && stage_begin 4 100000 30; then
  if ! why=$(bench_ok); then
    stage_end fail "$why"
  else
    iters=$rest_iters
    ((gpu_count == 0)) && iters=2
    body "Every spembed_bench row and torch peer case not in stage 3, ${iters} timed runs each (stage 3: the default 50), by group: forward, backward, attention; then torch_ops_bench.py." ""
    limited "$(step_limit 60)" "$bench_bin" --benchmark_list_tests=true >"$logs/bench_names.txt" \
      2>"$logs/bench_list.log"
    "${util[@]}" rest-filters "$logs/bench_names.txt" "$headline_bench_re" >"$logs/rest_filters.tsv"
    # Expected lengths on the H200 (seconds) of each group's full sweep.
    declare -A rest_weight=([bench_rest_fwd]=60 [torch_rest_fwd]=60 [bench_rest_bwd]=90
      [torch_rest_bwd]=120 [bench_rest_attn]=40 [torch_rest_attn]=60 [torch_ops]=40)
    plan=()
    while IFS=$'\t' read -r group count filter; do
      ((count > 0)) || continue
      plan+=("bench_rest_$group:${rest_weight[bench_rest_$group]}")
      [[ -n $torch_version ]] && plan+=("torch_rest_$group:${rest_weight[torch_rest_$group]}")
      declare "rest_filter_$group=$filter"
    done <"$logs/rest_filters.tsv"
    [[ $py_ready == yes ]] && plan+=("torch_ops:${rest_weight[torch_ops]}")
    rest_rc=0
    for ((i = 0; i < ${#plan[@]}; i++)); do
      step=${plan[$i]%%:*}
      group=${step##*_}
      case $group in
        fwd) script=torch_embedding_bag.py head=$headline_fwd ;;
        bwd) script=torch_embedding_bag_backward.py head=$headline_bwd ;;
        attn) script=torch_attention.py head=$headline_attn ;;
      esac
      cap=$(plan_cap "$i")
      case $step in
        bench_rest_*)
          filter_var=rest_filter_$group
          run_bench "$step" "$cap" "$logs/spembed_rest_$group.json" "${!filter_var}" "$iters" ||
            rest_rc=1
          ;;
        torch_rest_*)
          run_torch "$step" "$script" "$cap" "$logs/torch_${group}_rest.json" \
            "^(?!(?:$head)\$)" --iters "$iters" || rest_rc=1
          ;;
        torch_ops)
          lim=$(step_limit "$cap")
          if ((lim >= 20)); then
            log "  torch_ops_bench.py (at most ${lim} s)"
            SPEMBED_REQUIRE_GPU=1 PYTHONPATH=$site PYTHONUNBUFFERED=1 limited "$lim" \
              python3 benchmarks/torch_ops_bench.py >"$logs/torch_ops.jsonl" 2>"$logs/torch_ops.log"
            rc=$?
            body "- torch_ops_bench: exit $rc, $(grep -c '^{' "$logs/torch_ops.jsonl") JSON lines"
            ((rc == 0)) || { rest_rc=1; body_tail "$logs/torch_ops.log" 10 torch_ops.log; }
          else
            body "- torch_ops_bench: not run (out of time)"
            rest_rc=1
          fi
          ;;
      esac
    done
    [[ $py_ready == yes ]] || body "- torch_ops_bench: not run (Python package $py_note)"
    stage_end "$( ((rest_rc == 0)) && echo pass || echo partial)" \
      "$(grep -c . "$logs/bench_names.txt" 2>/dev/null) spembed_bench rows in all; see the full report below"
  fi
fi

# ---- the full report: every benchmark JSON merged -------------------------------------------------------

merge() {  # merge NAME INPUTS...: into $logs/NAME and its published copy
  local name=$1
  shift
  "${util[@]}" merge "$logs/$name" "$@" 2>>"$logs/merge.log" || return 0
  cp "$logs/$name" "${publish[$name]}"
}
merge spembed_bench.json "$logs/spembed_headline.json" "$logs"/spembed_rest_{fwd,bwd,attn}.json
merge torch_embedding_bag.json "$logs/torch_fwd_headline.json" "$logs/torch_fwd_rest.json"
merge torch_embedding_bag_backward.json "$logs/torch_bwd_headline.json" "$logs/torch_bwd_rest.json"
merge torch_attention.json "$logs/torch_attn_headline.json" "$logs/torch_attn_rest.json"
grep -q '^{' "$logs/torch_ops.jsonl" 2>/dev/null && cp "$logs/torch_ops.jsonl" "${publish[torch_ops.jsonl]}"
if [[ -f $logs/spembed_bench.json && $run_stages == *" 4 "* ]]; then
  cur=5
  st_title[5]="full benchmark report (stages 3 and 4 merged)"
  : >"$wd/sections/5.body"
  bench_report_section full "$logs/spembed_bench.json" "$logs/torch_embedding_bag.json" \
    "$logs/torch_embedding_bag_backward.json" "$logs/torch_attention.json"
  if grep -q '^{' "$logs/torch_ops.jsonl" 2>/dev/null; then
    body "" "#### spembed torch ops vs torch (torch_ops_bench.py, one JSON line per case)" "" '```'
    cat "$logs/torch_ops.jsonl" >>"$wd/sections/5.body"
    body '```'
  fi
  {
    echo "## Full benchmark report (stages 3 and 4 merged)"
    echo
    cat "$wd/sections/5.body"
  } >"$wd/sections/5.md"
  stage_order+=(5)
  run_stages+="5 "
  st_status[5]="done"
  st_detail[5]=$(targets_line "$wd/full.md")
fi

state="complete"
((failed > 0)) && state="complete, $failed stage(s) failed"
render_report
pack_logs
log "report: $report"
echo
sed -n '/^| stage |/,/^$/p' "$report"
grep -h 'target checks met' "$wd"/*.md 2>/dev/null | sed 's/^/  /'
if ((failed > 0)); then
  log "$failed stage(s) failed"
  exit 1
fi
log "no stage failed"
exit 0
