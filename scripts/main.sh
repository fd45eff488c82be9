#!/usr/bin/env bash
# The README's main job: build spembed and spembed_bench, run the embedding bag
# benchmarks and print their markdown report. On a GPU: the benchmark shapes,
# the forward against cuSPARSE SpMM and a naive kernel, the backward (alone and
# with each fused optimizer) against its atomic path and a stock atomicAdd
# kernel, plus PyTorch's forward and backward + optimizer step when PyTorch
# sees the GPU; and the varlen attention forward and backward against the
# stock padded path (cuBLAS GEMMs + masked softmax) and PyTorch's SDPA
# backends and varlen attention. Without a GPU the binary says so plainly and
# runs the CPU path on reduced shapes (under two minutes on two cores).
#
# Usage: scripts/main.sh [spembed_bench flags, e.g. --iters=20 --benchmark_filter=...]
# Results: $BENCH_OUT (default $BUILD_DIR/bench): spembed_bench.json,
# torch_embedding_bag.json, torch_embedding_bag_backward.json and
# torch_attention.json (GPU + PyTorch only), report.md (with a CPU section: spembed's CPU path vs
# torch on CPU tensors, benchmarks/cpu_vs_torch.py, also in cpu_vs_torch.jsonl), and
# torch_ops.jsonl: the `spembed` package's torch ops against torch's own (GPU + the package
# installed by scripts/test.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$SPEMBED_ROOT/scripts/setup_deps.sh"
configure_and_build -DSPEMBED_BUILD_BENCHMARKS=ON

out_dir="${BENCH_OUT:-$BUILD_DIR/bench}"
mkdir -p "$out_dir"
"$BUILD_DIR/benchmarks/spembed_bench" --benchmark_out="$out_dir/spembed_bench.json" \
  --benchmark_out_format=json "$@"

# Writes its JSON only when PyTorch and a CUDA device are there.
rm -f "$out_dir/torch_embedding_bag.json"
python3 "$SPEMBED_ROOT/benchmarks/torch_embedding_bag.py" --json "$out_dir/torch_embedding_bag.json"
rm -f "$out_dir/torch_embedding_bag_backward.json"
python3 "$SPEMBED_ROOT/benchmarks/torch_embedding_bag_backward.py" \
  --json "$out_dir/torch_embedding_bag_backward.json"
rm -f "$out_dir/torch_attention.json"
python3 "$SPEMBED_ROOT/benchmarks/torch_attention.py" --json "$out_dir/torch_attention.json"
torch_args=()
[ -f "$out_dir/torch_embedding_bag.json" ] && torch_args=(--torch "$out_dir/torch_embedding_bag.json")
[ -f "$out_dir/torch_embedding_bag_backward.json" ] &&
  torch_args+=(--torch-backward "$out_dir/torch_embedding_bag_backward.json")
[ -f "$out_dir/torch_attention.json" ] &&
  torch_args+=(--torch-attention "$out_dir/torch_attention.json")

python3 "$SPEMBED_ROOT/scripts/bench_report.py" "$out_dir/spembed_bench.json" "${torch_args[@]}" \
  -o "$out_dir/report.md"
# The CPU section: spembed's CPU path vs torch on CPU tensors, side by side in
# one run (needs the spembed package; says so and adds nothing without it).
if python3 -c "import spembed" 2>/dev/null; then
  python3 "$SPEMBED_ROOT/benchmarks/cpu_vs_torch.py" --json "$out_dir/cpu_vs_torch.jsonl" \
    --markdown "$out_dir/cpu_vs_torch.md" >/dev/null
  { echo; cat "$out_dir/cpu_vs_torch.md"; } >>"$out_dir/report.md"
else
  echo "cpu_vs_torch: the spembed Python package is not installed (scripts/test.sh installs it); skipped"
fi
cat "$out_dir/report.md"

# The Python package's ops against torch's own (needs the package and a GPU).
if python3 -c "import spembed" 2>/dev/null; then
  python3 "$SPEMBED_ROOT/benchmarks/torch_ops_bench.py" | tee "$out_dir/torch_ops.jsonl"
else
  echo "torch_ops_bench: the spembed Python package is not installed (scripts/test.sh installs it); skipped"
fi
