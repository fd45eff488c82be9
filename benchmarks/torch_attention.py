#!/usr/bin/env python3
"""PyTorch attention on the varlen attention shapes of spembed_bench, on the GPU.

The PyTorch columns of the attention benchmark. It mirrors
benchmarks/attention_bench.cpp:

* shapes: the same list and names (sasrec, hstu d64 / d128, target with 1,
  16 and 64 candidates, long), the same dtypes per shape (fp16 and bf16; fp32
  for sasrec and hstu d64), kv_heads = heads, softmax scale 1/sqrt(d);
* lengths: the same counter-based splitmix64 generator (seed 0x5EED, counter
  b for sequence b, u_b = top 53 bits / 2^53), L_b = 1 + floor(u_b * Lmax),
  so both programs see the same sequences; values uniform in [-1, 1];
* peers:
  - torch_flash, torch_efficient, torch_cudnn, torch_math:
    F.scaled_dot_product_attention under torch.nn.attention.sdpa_kernel with
    one backend each, on padded [B, H, Lmax, d] views of [B, Lmax, H, d]
    tensors. Causal self-attention uses is_causal=True and no mask: a query
    of a padded sequence only sees keys before it, so the padding keys are
    never seen by a real query (padding queries' outputs are dropped). Target
    attention (no causal mask, key lengths differ) passes a boolean key
    padding mask [B, 1, 1, Lk_max]; a backend that refuses a mask (flash) is
    recorded as not supported. The padded tensors are built outside the
    timed region (the friendliest setting for the padded path: a model
    keeping padded tensors pays no pad / unpad copies);
  - torch_varlen: torch.nn.attention.varlen.varlen_attn (FlashAttention-2
    kernels behind it) on the packed tensors, when this torch has it;
  - flash_attn_varlen: flash_attn.flash_attn_varlen_func, when the
    flash_attn package is importable;
* directions: fwd (the forward alone) and bwd (the backward alone: the
  forward runs untimed before each timed run, then autograd backward with a
  fixed dO is timed; fwd + bwd is the sum of the two rows);
* timing: warm-up, L2 flushed before each timed run by reading a buffer of
  twice the L2 size, CUDA events, median of the timed runs;
* FLOP model (as spembed_bench): pairs = unmasked (query, key) pairs of the
  real sequences, forward = 4 * heads * d * pairs, backward = 2.5 * forward;
  padded backends are credited with the same useful FLOPs;
* check: each peer's first forward output, on the real (unpadded) rows, is
  compared with the first peer that ran (varlen when present) within
  tol * max(1, |ref|), tol 0.05 (bf16), 0.01 (fp16), 1e-4 (fp32); a mismatch
  turns the row into an error.

Usage: torch_attention.py [--json FILE] [--iters N] [--filter REGEX]
                          [--budget-s SECONDS]
Exits with status 0 and a message when PyTorch or a CUDA device is missing.
The JSON is rewritten after every case, so a run cut short keeps what it
measured; --budget-s stops starting new cases once that many seconds passed.
"""

import json
import math
import re
import sys
import time

from torch_bench_util import base_parser, torch_on_gpu

SEED = 0x5EED
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
MASK64 = (1 << 64) - 1
WARMUP = 3
DEFAULT_ITERS = 20
BACKWARD_FLOP_RATIO = 2.5
TOLERANCE = {"fp16": 1e-2, "bf16": 5e-2, "fp32": 1e-4}
SDPA_BACKENDS = (("torch_flash", "FLASH_ATTENTION"), ("torch_efficient", "EFFICIENT_ATTENTION"),
                 ("torch_cudnn", "CUDNN_ATTENTION"), ("torch_math", "MATH"))


def counter_uniform(i):
    """u_i in [0, 1) (id_sampler.cpp's counter_uniform with the seed 0x5EED)."""
    z = (SEED + (i + 1) * GOLDEN_GAMMA) & MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    z ^= z >> 31
    return (z >> 11) * 2.0**-53


def draw_length(b, max_len, fixed):
    if fixed:
        return max_len
    return 1 + min(max_len - 1, int(counter_uniform(b) * max_len))


def make_shape(kind, batch, q_len, k_len, fixed, heads, head_dim, causal, dtypes):
    """q_len 0: self-attention (query lengths = key lengths)."""
    k_range = str(k_len) if fixed else f"1-{k_len}"
    name = f"{kind}_B{batch}_" + (f"L{k_range}" if q_len == 0 else f"Lq{q_len}_Lk{k_range}")
    name += f"_H{heads}_d{head_dim}" + ("_causal" if causal else "")
    lk = [draw_length(b, k_len, fixed) for b in range(batch)]
    lq = list(lk) if q_len == 0 else [q_len] * batch
    pairs = 0
    for q, k in zip(lq, lk):
        if causal:
            # Query i sees keys j <= i + k - q (bottom-right aligned).
            pairs += sum(min(max(i + k - q + 1, 0), k) for i in range(q))
        else:
            pairs += q * k
    return {"name": name, "batch": batch, "heads": heads, "head_dim": head_dim,
            "causal": causal, "self": q_len == 0, "lq": lq, "lk": lk, "pairs": pairs,
            "dtypes": dtypes}


def attention_shapes():
    shapes = [
        make_shape("sasrec", 1024, 0, 200, False, 1, 50, True, ["fp16", "bf16", "fp32"]),
        make_shape("hstu", 512, 0, 512, False, 4, 64, True, ["fp16", "bf16", "fp32"]),
        make_shape("hstu", 512, 0, 512, False, 4, 128, True, ["fp16", "bf16"]),
    ]
    for lq in (1, 16, 64):
        shapes.append(make_shape("target", 1024, lq, 1000, False, 4, 64, False,
                                 ["fp16", "bf16"]))
    shapes.append(make_shape("long", 4, 0, 2048, True, 8, 128, True, ["fp16", "bf16"]))
    return shapes


class Timer:
    def __init__(self, torch, device):
        self.torch = torch
        props = torch.cuda.get_device_properties(device)
        l2 = getattr(props, "L2_cache_size", 0) or (64 << 20)
        # Twice L2, read (not written) before every timed run.
        self.flush_buffer = torch.zeros(2 * l2 // 4, dtype=torch.int32, device=device)
        self.start = torch.cuda.Event(enable_timing=True)
        self.stop = torch.cuda.Event(enable_timing=True)

    def run(self, fn, prepare=None):
        state = prepare() if prepare else None
        self.flush_buffer.sum()
        self.start.record()
        fn(state)
        self.stop.record()
        self.stop.synchronize()
        return self.start.elapsed_time(self.stop) * 1e-3

    def median(self, fn, iters, prepare=None):
        for _ in range(WARMUP):
            self.run(fn, prepare)
        times = sorted(self.run(fn, prepare) for _ in range(iters))
        return times[len(times) // 2]


class Case:
    """The tensors of one (shape, dtype): packed and padded views of q, k, v, dO."""

    def __init__(self, torch, shape, dtype, device):
        self.torch = torch
        self.shape = shape
        b, h, d = shape["batch"], shape["heads"], shape["head_dim"]
        self.max_q, self.max_k = max(shape["lq"]), max(shape["lk"])
        lq = torch.tensor(shape["lq"], dtype=torch.int64)
        lk = torch.tensor(shape["lk"], dtype=torch.int64)
        self.cu_q = torch.cat([torch.zeros(1, dtype=torch.int64), lq.cumsum(0)]).to(
            device, torch.int32)
        self.cu_k = torch.cat([torch.zeros(1, dtype=torch.int64), lk.cumsum(0)]).to(
            device, torch.int32)
        total_q, total_k = int(lq.sum()), int(lk.sum())
        gen = torch.Generator(device=device).manual_seed(SEED)

        def rand(n):
            return torch.empty(n, h, d, dtype=dtype, device=device).uniform_(-1, 1,
                                                                              generator=gen)
        self.q, self.k, self.v, self.dout = rand(total_q), rand(total_k), rand(total_k), \
            rand(total_q)
        # (sequence, position) of every packed token, for padding and unpadding.
        self.q_index = self._positions(lq, device)
        self.k_index = self._positions(lk, device)
        self.qp = self.pad(self.q, self.q_index, b, self.max_q)
        self.kp = self.pad(self.k, self.k_index, b, self.max_k)
        self.vp = self.pad(self.v, self.k_index, b, self.max_k)
        self.doutp = self.pad(self.dout, self.q_index, b, self.max_q)
        self.mask = None
        if not shape["causal"] and min(shape["lk"]) < self.max_k:
            pos = torch.arange(self.max_k, device=device)
            self.mask = (pos[None, :] < lk.to(device)[:, None])[:, None, None, :]

    def _positions(self, lengths, device):
        torch = self.torch
        seq = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        starts = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
        pos = torch.arange(int(lengths.sum())) - starts[seq]
        return seq.to(device), pos.to(device)

    def pad(self, packed, index, batch, max_len):
        """[total, H, d] -> [B, H, Lmax, d] view of a [B, Lmax, H, d] tensor."""
        out = packed.new_zeros(batch, max_len, packed.shape[1], packed.shape[2])
        out[index[0], index[1]] = packed
        return out.transpose(1, 2)

    def unpad(self, padded, index):
        return padded.transpose(1, 2)[index[0], index[1]]


def peers(torch, F, case, dtype_name):
    """(peer, label, forward(requires_grad) -> (output, dO, inputs), unpad) per peer."""
    shape = case.shape
    out = []
    try:
        from torch.nn.attention import varlen as varlen_module
        varlen_attn = getattr(varlen_module, "varlen_attn", None)
    except ImportError:
        varlen_attn = None
    if varlen_attn is not None:
        window = (-1, 0) if shape["causal"] else (-1, -1)

        def run_varlen(grad):
            q, k, v = (t.detach().requires_grad_(grad) for t in (case.q, case.k, case.v))
            o = varlen_attn(q, k, v, case.cu_q, case.cu_k, case.max_q, case.max_k,
                            window_size=window)
            return o, case.dout, (q, k, v)
        out.append(("torch_varlen", "torch.nn.attention.varlen.varlen_attn", run_varlen, None))
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        flash_attn_varlen_func = None
    if flash_attn_varlen_func is not None:
        def run_fa(grad):
            q, k, v = (t.detach().requires_grad_(grad) for t in (case.q, case.k, case.v))
            o = flash_attn_varlen_func(q, k, v, case.cu_q, case.cu_k, case.max_q, case.max_k,
                                       causal=shape["causal"])
            return o, case.dout, (q, k, v)
        out.append(("flash_attn_varlen", "flash_attn.flash_attn_varlen_func", run_fa, None))
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for peer, backend_name in SDPA_BACKENDS:
        backend = getattr(SDPBackend, backend_name)

        def run_sdpa(grad, backend=backend):
            q, k, v = (t.detach().requires_grad_(grad) for t in (case.qp, case.kp, case.vp))
            with sdpa_kernel(backend):
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=case.mask,
                                                   is_causal=shape["causal"])
            return o, case.doutp, (q, k, v)
        label = f"padded to {case.max_q}x{case.max_k}" + (
            ", key padding mask" if case.mask is not None else "")
        out.append((peer, f"SDPA {backend_name.lower()}, {label}", run_sdpa,
                    lambda o: case.unpad(o, case.q_index)))
    return out


def main():
    parser = base_parser(__doc__, DEFAULT_ITERS, "regex on case names (shape/dtype/dir)")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="start no new case after this many seconds (0: no limit)")
    args = parser.parse_args()

    found = torch_on_gpu("the attention benchmark")
    if found is None:
        return 0
    torch, F = found

    started = time.monotonic()
    device = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(device)
    timer = Timer(torch, device)
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    print(f"torch {torch.__version__} on {name}")
    print(f"{'case':56} {'peer':18} {'us':>11} {'TFLOP/s':>9}")
    pattern = re.compile(args.filter)
    results = []
    meta = {"device": name, "torch": torch.__version__, "iters": args.iters,
            "flop_model": "pairs = unmasked (query, key) pairs of the real sequences; forward = "
                          "4 * heads * head_dim * pairs; backward = 2.5 * forward",
            "results": results}

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(meta, f, indent=1)

    def record(row):
        results.append(row)
        if "error" in row:
            print(f"{row['case']:56} {row['peer']:18} {row['error']}", flush=True)
        else:
            print(f"{row['case']:56} {row['peer']:18} {row['us']:11.1f} {row['TFLOPs']:9.2f}",
                  flush=True)

    out_of_time = False
    for shape in attention_shapes():
        for dtype_name in shape["dtypes"]:
            groups = [f"{shape['name']}/{dtype_name}/{d}" for d in ("fwd", "bwd")]
            wanted = [g for g in groups if pattern.search(g)]
            if not wanted:
                continue
            if args.budget_s and time.monotonic() - started > args.budget_s:
                if not out_of_time:
                    print(f"--budget-s {args.budget_s:.0f} reached: the remaining cases are "
                          "not run", flush=True)
                out_of_time = True
                continue
            try:
                case = Case(torch, shape, dtypes[dtype_name], device)
            except torch.cuda.OutOfMemoryError as e:
                for g in wanted:
                    record({"case": g, "peer": "torch_varlen",
                            "error": f"out of memory: {str(e).splitlines()[0]}"})
                continue
            flops_fwd = 4.0 * shape["heads"] * shape["head_dim"] * shape["pairs"]
            tol = TOLERANCE[dtype_name]
            reference = None
            for peer, label, fwd, unpad in peers(torch, F, case, dtype_name):
                checked = False
                for group in wanted:
                    backward = group.endswith("/bwd")
                    flops = flops_fwd * (BACKWARD_FLOP_RATIO if backward else 1.0)
                    row = {"case": group, "peer": peer, "label": label}
                    try:
                        if not checked:
                            with torch.no_grad():
                                o, _, _ = fwd(False)
                            got = (unpad(o) if unpad else o).float()
                            if reference is None:
                                reference = got
                            else:
                                bad = (got - reference).abs() > tol * reference.abs().clamp(min=1)
                                bad |= ~torch.isfinite(got)
                                if bool(bad.any()):
                                    raise ValueError(
                                        f"{int(bad.sum())} of {bad.numel()} output elements "
                                        f"differ from the first peer's (tol {tol})")
                            checked = True
                        if backward:
                            def prepare(fwd=fwd):
                                o, dout, inputs = fwd(True)
                                return o, dout, inputs

                            def run(state):
                                o, dout, inputs = state
                                torch.autograd.grad(o, inputs, dout)
                            seconds = timer.median(run, args.iters, prepare)
                        else:
                            def run_fwd(_state, fwd=fwd):
                                with torch.no_grad():
                                    fwd(False)
                            seconds = timer.median(run_fwd, args.iters)
                        row.update(us=seconds * 1e6, TFLOPs=flops / seconds / 1e12)
                    except torch.cuda.OutOfMemoryError as e:
                        row["error"] = f"out of memory: {str(e).splitlines()[0]}"
                    except (RuntimeError, ValueError, NotImplementedError, TypeError) as e:
                        text = str(e).strip().splitlines()
                        row["error"] = (text[0] if text else type(e).__name__)[:200]
                    if "error" in row and not checked:
                        # The forward itself failed: the backward cannot run either.
                        for g in wanted:
                            record(dict(row, case=g))
                        break
                    record(row)
                    torch.cuda.empty_cache()
            del case, reference
            torch.cuda.empty_cache()
            save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
