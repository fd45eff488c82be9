// spembed_bench, attention: spembed_varlen_attention_forward / _backward on
// jagged recommender shapes, against the stock padded path (forward), in the
// same binary as the embedding bag benchmarks (machinery in bench_common.h).
//
// Shapes (lengths from the counter-based generator of id_sampler.h, seed
// 0x5EED, counter b for sequence b: L_b = 1 + floor(u_b * Lmax), uniform in
// [1, Lmax]; benchmarks/torch_attention.py draws the same lengths):
//   sasrec  B 1024, self-attention, L in [1, 200] (about 50% padding), H 1,
//           d 50, causal                                   fp16, bf16, fp32
//   hstu    B 512, self-attention, L in [1, 512], H 4, d 64 (fp16, bf16,
//           fp32) and d 128 (fp16, bf16), causal
//   target  B 1024, Lq 1, 16, 64 candidates per sequence against Lk in
//           [1, 1000] history keys, H 4, d 64, no mask    fp16, bf16
//   long    B 4, L 2048 (every sequence full), H 8, d 128, causal: the
//           LLM-style reference where padding plays no part  fp16, bf16
// q, k, v (and dO) are compact [tokens, heads, d] (kv_heads = heads), values
// k / 16, k in [-16, 16]; the softmax scale is spembed's default 1/sqrt(d);
// causal is aligned bottom-right (the same as top-left here: Lq = Lk).
//
// FLOP model (the same for every peer): only unmasked work counts.
//   pairs    = sum over sequences of the (query, key) pairs the mask lets
//              through (Lq * Lk without a mask; Lk (Lk + 1) / 2 causal, Lq =
//              Lk), counted on the host
//   forward  = 4 * heads * d * pairs        (Q K^T and P V, 2 FLOP per MAC)
//   backward = 2.5 * forward                (five such products: dV, dP, dQ,
//              dK and the recomputed S, as FlashAttention counts them)
// Padded peers do more work than that (the padding, the masked half of the
// causal square); the model credits them only with the useful part.
//
// Peers:
//   spembed  forward: spembed_varlen_attention_forward with lse (as training
//            needs it); backward: spembed_varlen_attention_backward
//            (deterministic = 1), its forward's O and lse computed untimed;
//            workspace from the size queries, allocated once per case
//   stock    forward only: the textbook padded path, timed whole: pad Q, K, V
//            to [B, H, Lmax, d] (zero rows beyond each length), cuBLAS
//            strided-batched GEMM S = scale * Q K^T (input dtype out, fp32
//            compute), masked softmax in place (padding keys + causal mask,
//            attention_baseline.h), GEMM O = P V, unpad O to the packed
//            layout. Pad and unpad copies are part of the timed run.
//   torch    benchmarks/torch_attention.py (separate process): SDPA backends
//            on padded inputs and varlen attention
// cuDNN SDPA (C++) is not a peer: the cuDNN frontend headers
// (cudnn_frontend.h) are not installed with the toolkit; torch's cudnn SDPA
// backend stands in for it.
//
// Checks before timing (GPU): the stock path's output is computed once per
// (shape, dtype) and kept as the reference; every forward peer's first output
// (written over a poisoned buffer) must match it within tol * max(1, |ref|),
// tol = 8 units of the dtype's rounding (fp16 2^-11 * 8, bf16 2^-8 * 8; fp32
// 1e-5). The stock path rounds S and P to the input dtype, which is what the
// 8 units allow for (scores here stay within a few units in magnitude). The
// backward's first dQ, dK, dV (over buffers poisoned with NaN) must be
// finite everywhere, and every spembed call's report must be clean. A
// mismatch or a failed check turns the benchmark into an error.
//
// Timing: as the embedding bag benchmarks (warm-up, L2 flushed before each
// timed run, CUDA events, median in the counters us and TFLOPs). Without a
// GPU: spembed's CPU implementation on reduced shapes (B / 256, at least 1;
// long: H 1 and L 256), wall clock, 2 timed runs unless --iters is given: a
// smoke test, not a performance claim.
#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "attention_baseline.h"
#include "bench_common.h"
#include "id_sampler.h"
#include "kernels/attention/attention_dispatch.h"
#include "spembed/spembed.h"

namespace spembed_bench {
namespace {

// ---- configuration ----------------------------------------------------------------

// CPU reduction (see the top comment): keeps the attention part of the CPU
// run near ten seconds on two cores (the CPU path computes in float64 and
// converts every element it reads: well under 1 GFLOP/s per core).
constexpr int64_t kCpuBatchDivisor = 256;
constexpr int64_t kCpuLongLen = 256;
constexpr int64_t kCpuLongHeads = 1;
constexpr int kCpuAttentionIters = 2;
// Backward FLOPs per forward FLOP (see the FLOP model above).
constexpr double kBackwardFlopRatio = 2.5;

// ---- shapes --------------------------------------------------------------------------

struct AttnShape {
  std::string name;
  int64_t batch = 0;
  int64_t heads = 0;
  int64_t head_dim = 0;
  bool causal = false;
  std::vector<int32_t> cu_q, cu_k;  // [batch + 1]
  int64_t max_q = 0, max_k = 0;
  double pairs = 0.0;  // unmasked (query, key) pairs, over sequences (per head)
  std::vector<AttnType> types;

  int64_t total_q() const { return cu_q.back(); }
  int64_t total_k() const { return cu_k.back(); }
  double forward_flops() const { return 4.0 * static_cast<double>(heads * head_dim) * pairs; }
};

// Sequence b's length: 1 + floor(u_b * max_len), uniform in [1, max_len]
// (mirrored by torch_attention.py), or max_len for every sequence.
int32_t draw_length(int64_t b, int64_t max_len, bool fixed) {
  if (fixed) return static_cast<int32_t>(max_len);
  const double u = counter_uniform(kSeed, static_cast<uint64_t>(b));
  return static_cast<int32_t>(
      1 + std::min<int64_t>(max_len - 1, static_cast<int64_t>(u * static_cast<double>(max_len))));
}

// q_len 0: self-attention (query lengths = key lengths).
AttnShape make_shape(const std::string& kind, int64_t batch, int64_t q_len, int64_t k_len,
                     bool fixed, int64_t heads, int64_t head_dim, bool causal,
                     std::vector<AttnType> types) {
  AttnShape s;
  s.batch = batch;
  s.heads = heads;
  s.head_dim = head_dim;
  s.causal = causal;
  s.types = std::move(types);
  const std::string k_range = fixed ? std::to_string(k_len) : "1-" + std::to_string(k_len);
  s.name = kind + "_B" + std::to_string(batch) +
           (q_len == 0 ? "_L" + k_range : "_Lq" + std::to_string(q_len) + "_Lk" + k_range) + "_H" +
           std::to_string(heads) + "_d" + std::to_string(head_dim) + (causal ? "_causal" : "");
  s.cu_q.assign(1, 0);
  s.cu_k.assign(1, 0);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t lk = draw_length(b, k_len, fixed);
    const int64_t lq = q_len == 0 ? lk : q_len;
    s.cu_q.push_back(static_cast<int32_t>(s.cu_q.back() + lq));
    s.cu_k.push_back(static_cast<int32_t>(s.cu_k.back() + lk));
    s.max_q = std::max(s.max_q, lq);
    s.max_k = std::max(s.max_k, lk);
    for (int64_t i = 0; i < lq; ++i) {
      // Causal, bottom-right: query i sees keys j <= i + lk - lq.
      const int64_t seen = causal ? std::clamp<int64_t>(i + lk - lq + 1, 0, lk) : lk;
      s.pairs += static_cast<double>(seen);
    }
  }
  return s;
}

std::vector<AttnShape> attention_shapes(bool reduced) {
  const auto b = [&](int64_t batch) {
    return reduced ? std::max<int64_t>(1, batch / kCpuBatchDivisor) : batch;
  };
  constexpr AttnType f16 = AttnType::kF16, bf16 = AttnType::kBF16, f32 = AttnType::kF32;
  std::vector<AttnShape> v;
  v.push_back(make_shape("sasrec", b(1024), 0, 200, false, 1, 50, true, {f16, bf16, f32}));
  v.push_back(make_shape("hstu", b(512), 0, 512, false, 4, 64, true, {f16, bf16, f32}));
  v.push_back(make_shape("hstu", b(512), 0, 512, false, 4, 128, true, {f16, bf16}));
  for (int64_t lq : {1, 16, 64}) {
    v.push_back(make_shape("target", b(1024), lq, 1000, false, 4, 64, false, {f16, bf16}));
  }
  v.push_back(make_shape("long", b(4), 0, reduced ? kCpuLongLen : 2048, true,
                         reduced ? kCpuLongHeads : 8, 128, true, {f16, bf16}));
  return v;
}

const char* type_name(AttnType t) {
  switch (t) {
    case AttnType::kF32:
      return "fp32";
    case AttnType::kF16:
      return "fp16";
    case AttnType::kBF16:
      return "bf16";
  }
  return "?";
}

DLDataType dl_type(AttnType t) {
  switch (t) {
    case AttnType::kF16:
      return DLDataType{static_cast<uint8_t>(kDLFloat), 16, 1};
    case AttnType::kBF16:
      return DLDataType{static_cast<uint8_t>(kDLBfloat), 16, 1};
    case AttnType::kF32:
      break;
  }
  return DLDataType{static_cast<uint8_t>(kDLFloat), 32, 1};
}

cudaDataType_t cuda_type(AttnType t) {
  switch (t) {
    case AttnType::kF16:
      return CUDA_R_16F;
    case AttnType::kBF16:
      return CUDA_R_16BF;
    case AttnType::kF32:
      break;
  }
  return CUDA_R_32F;
}

// Comparison tolerance against the stock path (see the top comment).
double tolerance(AttnType t) {
  switch (t) {
    case AttnType::kF16:
      return 8.0 * 0x1p-11;
    case AttnType::kBF16:
      return 8.0 * 0x1p-8;
    case AttnType::kF32:
      break;
  }
  return 1e-5;
}

struct AttnCase {
  const AttnShape* shape;
  AttnType type;
  bool backward;
  std::string data_key() const { return shape->name + "/" + type_name(type); }
  std::string group() const { return data_key() + (backward ? "/bwd" : "/fwd"); }
  double flops() const { return shape->forward_flops() * (backward ? kBackwardFlopRatio : 1.0); }
};

std::vector<AttnShape>* g_shapes = nullptr;

// ---- DLPack views -------------------------------------------------------------------------

constexpr DLDataType kInt32{static_cast<uint8_t>(kDLInt), 32, 1};

// A DLTensor of up to three dimensions that owns its shape array.
struct View3 {
  std::array<int64_t, 3> shape{};
  DLTensor t{};
  View3(void* data, DLDevice dev, DLDataType dtype, int ndim, int64_t d0, int64_t d1 = 0,
        int64_t d2 = 0)
      : shape{d0, d1, d2} {
    t.data = data;
    t.device = dev;
    t.ndim = ndim;
    t.dtype = dtype;
    t.shape = shape.data();
  }
  View3(const View3&) = delete;
  View3& operator=(const View3&) = delete;
};

// The buffers of one case on either path.
struct Pointers {
  void* q = nullptr;
  void* k = nullptr;
  void* v = nullptr;
  void* out = nullptr;
  void* dout = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  float* lse = nullptr;
  int32_t* cu_q = nullptr;
  int32_t* cu_k = nullptr;
};

// The spembed calls of a case over `p` on device `dev`.
class SpembedCall {
 public:
  SpembedCall(const AttnCase& c, const Pointers& p, DLDevice dev)
      : q_(p.q, dev, dl_type(c.type), 3, tq(c), heads(c), dim(c)),
        k_(p.k, dev, dl_type(c.type), 3, tk(c), heads(c), dim(c)),
        v_(p.v, dev, dl_type(c.type), 3, tk(c), heads(c), dim(c)),
        out_(p.out, dev, dl_type(c.type), 3, tq(c), heads(c), dim(c)),
        dout_(p.dout, dev, dl_type(c.type), 3, tq(c), heads(c), dim(c)),
        dq_(p.dq, dev, dl_type(c.type), 3, tq(c), heads(c), dim(c)),
        dk_(p.dk, dev, dl_type(c.type), 3, tk(c), heads(c), dim(c)),
        dv_(p.dv, dev, dl_type(c.type), 3, tk(c), heads(c), dim(c)),
        lse_(p.lse, dev, kFloat32, 2, heads(c), tq(c)),
        cu_q_(p.cu_q, dev, kInt32, 1, c.shape->batch + 1),
        cu_k_(p.cu_k, dev, kInt32, 1, c.shape->batch + 1) {
    spembed_attention_options_init(&options_);
    options_.mask = c.shape->causal ? SPEMBED_ATTENTION_MASK_CAUSAL : SPEMBED_ATTENTION_MASK_NONE;
    options_.max_seqlen_q = c.shape->max_q;
    options_.max_seqlen_k = c.shape->max_k;
  }

  spembed_status_t forward(spembed_handle_t handle, DLTensor* report, void* ws, size_t ws_bytes,
                           cudaStream_t stream) {
    return spembed_varlen_attention_forward(handle, &q_.t, &k_.t, &v_.t, &cu_q_.t, &cu_k_.t,
                                            &options_, &out_.t, &lse_.t, report, ws, ws_bytes,
                                            stream);
  }
  spembed_status_t backward(spembed_handle_t handle, DLTensor* report, void* ws, size_t ws_bytes,
                            cudaStream_t stream) {
    return spembed_varlen_attention_backward(handle, &q_.t, &k_.t, &v_.t, &out_.t, &dout_.t,
                                             &lse_.t, &cu_q_.t, &cu_k_.t, &options_, 1, &dq_.t,
                                             &dk_.t, &dv_.t, report, ws, ws_bytes, stream);
  }

 private:
  static int64_t tq(const AttnCase& c) { return c.shape->total_q(); }
  static int64_t tk(const AttnCase& c) { return c.shape->total_k(); }
  static int64_t heads(const AttnCase& c) { return c.shape->heads; }
  static int64_t dim(const AttnCase& c) { return c.shape->head_dim; }
  View3 q_, k_, v_, out_, dout_, dq_, dk_, dv_, lse_, cu_q_, cu_k_;
  spembed_attention_options_t options_{};
};

// ---- results summary ------------------------------------------------------------------------

struct Row {
  std::string group;
  std::string peer;
  std::string kernel;  // which kernels ran: "tensor-core", "simt", "cpu", or the peer's own
  double us;
  double tflops;
};
std::vector<Row> g_rows;

// The spembed kernels a GPU case dispatches to, by the library's own rule
// (kernels/attention/attention_dispatch.h); every benchmark buffer is
// cudaMalloc'd and packed, so rows are 16-byte aligned whenever the head
// dim is a multiple of 8 elements. `force_simt` is the SPEMBED_ATTENTION_KERNELS=simt
// override of the spembed_simt peer.
std::string gpu_kernel_variant(const AttnCase& c, bool force_simt) {
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, g_gpu->device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, g_gpu->device);
  const spembed::detail::DType dtype = c.type == AttnType::kF16    ? spembed::detail::DType::kF16
                                       : c.type == AttnType::kBF16 ? spembed::detail::DType::kBF16
                                                                   : spembed::detail::DType::kF32;
  const bool tensor_core = !force_simt && spembed::detail::use_tensor_core_attention(
                                              spembed::detail::compute_capability(major, minor),
                                              dtype, c.shape->head_dim, true);
  return tensor_core ? "tensor-core" : "simt";
}

// Sets SPEMBED_ATTENTION_KERNELS=simt while alive (the library reads it on
// every call), for the spembed_simt peer.
class ForceSimtKernels {
 public:
  explicit ForceSimtKernels(bool active) : active_(active) {
    if (active_) setenv("SPEMBED_ATTENTION_KERNELS", "simt", 1);
  }
  ~ForceSimtKernels() {
    if (active_) unsetenv("SPEMBED_ATTENTION_KERNELS");
  }
  ForceSimtKernels(const ForceSimtKernels&) = delete;
  ForceSimtKernels& operator=(const ForceSimtKernels&) = delete;

 private:
  bool active_;
};

void report_attention(benchmark::State& state, const AttnCase& c, const std::string& peer,
                      const std::string& kernel, const std::string& note,
                      std::vector<double> seconds) {
  if (seconds.empty()) return;
  // The kernels that ran, in the JSON too (bench_report.py shows the label).
  state.SetLabel("kernels: " + kernel + (note.empty() ? "" : "; " + note));
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  const double flops = c.flops();
  state.counters["us"] = median * 1e6;
  state.counters["TFLOPs"] = flops / median / 1e12;
  state.counters["model_flops"] = flops;
  state.counters["pairs"] = c.shape->pairs;
  g_rows.push_back({c.group(), peer, kernel, median * 1e6, flops / median / 1e12});
}

// ---- GPU ------------------------------------------------------------------------------------

cublasHandle_t g_cublas = nullptr;

// The buffers of the current (shape, dtype), kept while consecutive
// benchmarks share them (forward peers, then the backward).
struct GpuAttn {
  std::string key;
  DeviceBuffer cu_q, cu_k, q, k, v, out, lse, dout, dq, dk, dv;
  DeviceBuffer fwd_ws, bwd_ws;
  // The stock path's buffers and its output, the forward's reference.
  DeviceBuffer qp, kp, vp, s, op, ref;
  std::string ref_error;  // why there is no reference, or ""

  Pointers pointers() const {
    Pointers p;
    p.q = q.ptr;
    p.k = k.ptr;
    p.v = v.ptr;
    p.out = out.ptr;
    p.dout = dout.ptr;
    p.dq = dq.ptr;
    p.dk = dk.ptr;
    p.dv = dv.ptr;
    p.lse = lse.as<float>();
    p.cu_q = cu_q.as<int32_t>();
    p.cu_k = cu_k.as<int32_t>();
    return p;
  }
};
GpuAttn* g_attn = nullptr;

void check_cublas(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string(what) + ": cuBLAS status " +
                             std::to_string(static_cast<int>(st)));
  }
}

// The stock path into `out` (packed [total_q, heads, d]), on the stream.
void run_stock(const AttnCase& c, void* out) {
  const AttnShape& s = *c.shape;
  const int eb = attn_type_bytes(c.type);
  const cudaStream_t stream = g_gpu->stream;
  check_cuda(pad_sequences(g_attn->q.ptr, eb, g_attn->cu_q.as<int32_t>(), s.batch, s.max_q, s.heads,
                           s.head_dim, g_attn->qp.ptr, stream),
             "pad q");
  check_cuda(pad_sequences(g_attn->k.ptr, eb, g_attn->cu_k.as<int32_t>(), s.batch, s.max_k, s.heads,
                           s.head_dim, g_attn->kp.ptr, stream),
             "pad k");
  check_cuda(pad_sequences(g_attn->v.ptr, eb, g_attn->cu_k.as<int32_t>(), s.batch, s.max_k, s.heads,
                           s.head_dim, g_attn->vp.ptr, stream),
             "pad v");
  const cudaDataType_t t = cuda_type(c.type);
  const int batches = static_cast<int>(s.batch * s.heads);
  const int d = static_cast<int>(s.head_dim);
  const int lq = static_cast<int>(s.max_q);
  const int lk = static_cast<int>(s.max_k);
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  const float one = 1.0f;
  const float zero = 0.0f;
  // Row-major S [lq, lk] = Q [lq, d] K^T is column-major S^T [lk, lq] =
  // (K as column-major [d, lk])^T (Q as column-major [d, lq]).
  check_cublas(cublasGemmStridedBatchedEx(
                   g_cublas, CUBLAS_OP_T, CUBLAS_OP_N, lk, lq, d, &scale, g_attn->kp.ptr, t, d,
                   int64_t{lk} * d, g_attn->qp.ptr, t, d, int64_t{lq} * d, &zero, g_attn->s.ptr, t,
                   lk, int64_t{lq} * lk, batches, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmStridedBatchedEx (Q K^T)");
  check_cuda(
      masked_softmax(g_attn->s.ptr, c.type, g_attn->cu_q.as<int32_t>(), g_attn->cu_k.as<int32_t>(),
                     s.batch, s.heads, s.max_q, s.max_k, s.causal, stream),
      "masked softmax");
  // Row-major O [lq, d] = P [lq, lk] V [lk, d] is column-major O^T [d, lq] =
  // (V as column-major [d, lk]) (P as column-major [lk, lq]).
  check_cublas(cublasGemmStridedBatchedEx(
                   g_cublas, CUBLAS_OP_N, CUBLAS_OP_N, d, lq, lk, &one, g_attn->vp.ptr, t, d,
                   int64_t{lk} * d, g_attn->s.ptr, t, lk, int64_t{lq} * lk, &zero, g_attn->op.ptr,
                   t, d, int64_t{lq} * d, batches, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmStridedBatchedEx (P V)");
  check_cuda(unpad_sequences(g_attn->op.ptr, eb, g_attn->cu_q.as<int32_t>(), s.batch, s.total_q(),
                             s.max_q, s.heads, s.head_dim, out, stream),
             "unpad o");
}

void prepare_gpu_case(const AttnCase& c) {
  if (g_attn->key == c.data_key()) return;
  const AttnShape& s = *c.shape;
  *g_attn = GpuAttn();
  const size_t eb = static_cast<size_t>(attn_type_bytes(c.type));
  const size_t q_bytes = static_cast<size_t>(s.total_q() * s.heads * s.head_dim) * eb;
  const size_t k_bytes = static_cast<size_t>(s.total_k() * s.heads * s.head_dim) * eb;
  g_attn->cu_q = upload(s.cu_q);
  g_attn->cu_k = upload(s.cu_k);
  g_attn->q = DeviceBuffer(q_bytes, "q");
  g_attn->k = DeviceBuffer(k_bytes, "k");
  g_attn->v = DeviceBuffer(k_bytes, "v");
  g_attn->out = DeviceBuffer(q_bytes, "out");
  g_attn->dout = DeviceBuffer(q_bytes, "dout");
  g_attn->lse = DeviceBuffer(static_cast<size_t>(s.heads * s.total_q()) * sizeof(float), "lse");
  const int64_t qn = s.total_q() * s.heads * s.head_dim;
  const int64_t kn = s.total_k() * s.heads * s.head_dim;
  check_cuda(fill_attention_input(g_attn->q.ptr, c.type, qn, 1, g_gpu->stream), "fill q");
  check_cuda(fill_attention_input(g_attn->k.ptr, c.type, kn, 2, g_gpu->stream), "fill k");
  check_cuda(fill_attention_input(g_attn->v.ptr, c.type, kn, 3, g_gpu->stream), "fill v");
  check_cuda(fill_attention_input(g_attn->dout.ptr, c.type, qn, 4, g_gpu->stream), "fill dout");
  size_t ws = 0;
  check_spembed(spembed_varlen_attention_forward_workspace_size(g_gpu->handle, kDLCUDA, s.batch,
                                                                s.total_q(), s.heads, &ws),
                "forward workspace size");
  g_attn->fwd_ws = DeviceBuffer(ws, "forward workspace");
  // The stock path's buffers and its output, the forward's reference.
  try {
    const size_t bh = static_cast<size_t>(s.batch * s.heads);
    g_attn->qp = DeviceBuffer(bh * static_cast<size_t>(s.max_q * s.head_dim) * eb, "padded q");
    g_attn->kp = DeviceBuffer(bh * static_cast<size_t>(s.max_k * s.head_dim) * eb, "padded k");
    g_attn->vp = DeviceBuffer(bh * static_cast<size_t>(s.max_k * s.head_dim) * eb, "padded v");
    g_attn->s = DeviceBuffer(bh * static_cast<size_t>(s.max_q * s.max_k) * eb, "scores");
    g_attn->op = DeviceBuffer(bh * static_cast<size_t>(s.max_q * s.head_dim) * eb, "padded o");
    g_attn->ref = DeviceBuffer(q_bytes, "reference");
    if (g_cublas == nullptr) {
      check_cublas(cublasCreate(&g_cublas), "cublasCreate");
      check_cublas(cublasSetStream(g_cublas, g_gpu->stream), "cublasSetStream");
    }
    run_stock(c, g_attn->ref.ptr);
    check_cuda(cudaStreamSynchronize(g_gpu->stream), "stock reference");
  } catch (const std::runtime_error& e) {
    g_attn->ref_error = e.what();
    g_attn->qp = DeviceBuffer();
    g_attn->kp = DeviceBuffer();
    g_attn->vp = DeviceBuffer();
    g_attn->s = DeviceBuffer();
    g_attn->op = DeviceBuffer();
    g_attn->ref = DeviceBuffer();
  }
  check_cuda(cudaStreamSynchronize(g_gpu->stream), "prepare");
  g_attn->key = c.data_key();
}

// Counts the elements of [n] `out` outside tol of `ref` (ref = out: the
// non-finite ones). Returns "" or what differs.
std::string mismatches(const void* out, const void* ref, AttnType type, int64_t n, double tol,
                       const char* what) {
  auto* result = g_gpu->check.as<unsigned long long>();
  const unsigned long long init[2] = {0ull, ~0ull};
  check_cuda(cudaMemcpyAsync(result, init, sizeof(init), cudaMemcpyHostToDevice, g_gpu->stream),
             "check init");
  check_cuda(count_attention_mismatches(out, ref, type, n, tol, result, g_gpu->stream), "compare");
  unsigned long long got[2];
  check_cuda(cudaMemcpyAsync(got, result, sizeof(got), cudaMemcpyDeviceToHost, g_gpu->stream),
             "check readback");
  check_cuda(cudaStreamSynchronize(g_gpu->stream), "compare");
  if (got[0] == 0) return "";
  return std::to_string(got[0]) + " of " + std::to_string(n) + " elements of " + what +
         ", first at element " + std::to_string(got[1]);
}

// Runs `call` once with the report and checks it.
template <typename Call>
void checked_spembed_call(Call&& call, const char* what) {
  const View3 report_view(g_gpu->check.ptr, DLDevice{kDLCUDA, g_gpu->device}, kInt64, 1,
                          SPEMBED_REPORT_SIZE);
  DLTensor report_t = report_view.t;
  check_spembed(call(&report_t), what);
  int64_t host_report[SPEMBED_REPORT_SIZE];
  check_cuda(cudaMemcpyAsync(host_report, g_gpu->check.ptr, sizeof(host_report),
                             cudaMemcpyDeviceToHost, g_gpu->stream),
             "report readback");
  check_cuda(cudaStreamSynchronize(g_gpu->stream), what);
  check_spembed(spembed_report_status(host_report), what);
}

template <typename Run>
void time_gpu(benchmark::State& state, const AttnCase& c, const std::string& peer,
              const std::string& kernel, const std::string& note, Run&& run) {
  for (int i = 1; i < kGpuWarmup; ++i) time_gpu_run(run);
  std::vector<double> seconds;
  for (auto _ : state) {
    const double sec = time_gpu_run(run);
    state.SetIterationTime(sec);
    seconds.push_back(sec);
  }
  report_attention(state, c, peer, kernel, note, std::move(seconds));
}

// The forward peers: poison the output, run once, compare with the reference,
// then time.
void bench_forward_gpu(benchmark::State& state, const AttnCase& c, const std::string& peer) {
  prepare_gpu_case(c);
  const AttnShape& s = *c.shape;
  const int64_t n = s.total_q() * s.heads * s.head_dim;
  const bool spembed = peer != "stock";
  const ForceSimtKernels force_simt(peer == "spembed_simt");
  if (!spembed && !g_attn->ref_error.empty()) {
    state.SkipWithError(("stock path: " + g_attn->ref_error).c_str());
    return;
  }
  constexpr int kPoisonByte = 0x7B;  // 1.3e36 in fp32, 61280 in fp16, 3.3e36 in bf16
  check_cuda(cudaMemsetAsync(g_attn->out.ptr, kPoisonByte, g_attn->out.bytes, g_gpu->stream),
             "poison");
  SpembedCall call(c, g_attn->pointers(), DLDevice{kDLCUDA, g_gpu->device});
  std::function<void()> run;
  if (spembed) {
    checked_spembed_call(
        [&](DLTensor* report) {
          return call.forward(g_gpu->handle, report, g_attn->fwd_ws.ptr, g_attn->fwd_ws.bytes,
                              g_gpu->stream);
        },
        "spembed attention forward");
    run = [&] {
      check_spembed(call.forward(g_gpu->handle, nullptr, g_attn->fwd_ws.ptr, g_attn->fwd_ws.bytes,
                                 g_gpu->stream),
                    "spembed attention forward");
    };
  } else {
    run = [&] { run_stock(c, g_attn->out.ptr); };
    run();
  }
  std::string note;
  if (g_attn->ref_error.empty()) {
    const std::string bad = mismatches(g_attn->out.ptr, g_attn->ref.ptr, c.type, n,
                                       tolerance(c.type), "O differ from the stock path's");
    if (!bad.empty()) {
      state.SkipWithError(bad.c_str());
      return;
    }
  } else {
    note = "unverified: no stock reference (" + g_attn->ref_error + ")";
  }
  time_gpu(state, c, peer, spembed ? gpu_kernel_variant(c, peer == "spembed_simt") : "cuBLAS", note,
           run);
}

void bench_backward_gpu(benchmark::State& state, const AttnCase& c, const std::string& peer) {
  const ForceSimtKernels force_simt(peer == "spembed_simt");
  prepare_gpu_case(c);
  const AttnShape& s = *c.shape;
  if (g_attn->dq.ptr == nullptr) {
    const size_t eb = static_cast<size_t>(attn_type_bytes(c.type));
    g_attn->dq = DeviceBuffer(static_cast<size_t>(s.total_q() * s.heads * s.head_dim) * eb, "dq");
    g_attn->dk = DeviceBuffer(static_cast<size_t>(s.total_k() * s.heads * s.head_dim) * eb, "dk");
    g_attn->dv = DeviceBuffer(static_cast<size_t>(s.total_k() * s.heads * s.head_dim) * eb, "dv");
    size_t ws = 0;
    check_spembed(spembed_varlen_attention_backward_workspace_size(g_gpu->handle, kDLCUDA, s.batch,
                                                                   s.total_q(), s.heads, &ws),
                  "backward workspace size");
    g_attn->bwd_ws = DeviceBuffer(ws, "backward workspace");
  }
  SpembedCall call(c, g_attn->pointers(), DLDevice{kDLCUDA, g_gpu->device});
  // O and lse of the forward (untimed).
  checked_spembed_call(
      [&](DLTensor* report) {
        return call.forward(g_gpu->handle, report, g_attn->fwd_ws.ptr, g_attn->fwd_ws.bytes,
                            g_gpu->stream);
      },
      "spembed attention forward");
  // All-ones bytes are NaN in every float type: unwritten gradients show.
  for (const DeviceBuffer* g : {&g_attn->dq, &g_attn->dk, &g_attn->dv}) {
    check_cuda(cudaMemsetAsync(g->ptr, 0xFF, g->bytes, g_gpu->stream), "poison");
  }
  checked_spembed_call(
      [&](DLTensor* report) {
        return call.backward(g_gpu->handle, report, g_attn->bwd_ws.ptr, g_attn->bwd_ws.bytes,
                             g_gpu->stream);
      },
      "spembed attention backward");
  const int64_t qn = s.total_q() * s.heads * s.head_dim;
  const int64_t kn = s.total_k() * s.heads * s.head_dim;
  std::string bad = mismatches(g_attn->dq.ptr, g_attn->dq.ptr, c.type, qn, 0.0, "dQ not finite");
  if (bad.empty())
    bad = mismatches(g_attn->dk.ptr, g_attn->dk.ptr, c.type, kn, 0.0, "dK not finite");
  if (bad.empty())
    bad = mismatches(g_attn->dv.ptr, g_attn->dv.ptr, c.type, kn, 0.0, "dV not finite");
  if (!bad.empty()) {
    state.SkipWithError(bad.c_str());
    return;
  }
  time_gpu(state, c, peer, gpu_kernel_variant(c, peer == "spembed_simt"),
           "no C++ peer: gradients checked finite, not compared", [&] {
             check_spembed(call.backward(g_gpu->handle, nullptr, g_attn->bwd_ws.ptr,
                                         g_attn->bwd_ws.bytes, g_gpu->stream),
                           "spembed attention backward");
           });
}

// ---- CPU -------------------------------------------------------------------------------------

struct CpuAttn {
  std::string key;
  std::vector<int32_t> cu_q, cu_k;
  std::vector<uint8_t> q, k, v, out, dout, dq, dk, dv;
  std::vector<float> lse;

  Pointers pointers() {
    Pointers p;
    p.q = q.data();
    p.k = k.data();
    p.v = v.data();
    p.out = out.data();
    p.dout = dout.data();
    p.dq = dq.data();
    p.dk = dk.data();
    p.dv = dv.data();
    p.lse = lse.data();
    p.cu_q = cu_q.data();
    p.cu_k = cu_k.data();
    return p;
  }
};
CpuAttn* g_cpu_attn = nullptr;

// The host twin of fill_attention_input.
std::vector<uint8_t> cpu_input(AttnType type, int64_t n, uint64_t salt) {
  std::vector<uint8_t> bytes(static_cast<size_t>(n * attn_type_bytes(type)));
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t h = mix64(salt * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(i));
    const float value = static_cast<float>(static_cast<int>(h % 33) - 16) / 16.0f;
    if (type == AttnType::kF32) {
      std::memcpy(bytes.data() + 4 * i, &value, 4);
    } else if (type == AttnType::kF16) {
      const __half half_value = __float2half_rn(value);
      std::memcpy(bytes.data() + 2 * i, &half_value, 2);
    } else {
      // bfloat16 = the top half of the float: exact, k / 16 has at most five
      // significant bits.
      uint32_t bits = 0;
      std::memcpy(&bits, &value, 4);
      const auto top = static_cast<uint16_t>(bits >> 16);
      std::memcpy(bytes.data() + 2 * i, &top, 2);
    }
  }
  return bytes;
}

void prepare_cpu_case(const AttnCase& c) {
  if (g_cpu_attn->key == c.data_key()) return;
  const AttnShape& s = *c.shape;
  *g_cpu_attn = CpuAttn();
  const int64_t qn = s.total_q() * s.heads * s.head_dim;
  const int64_t kn = s.total_k() * s.heads * s.head_dim;
  const size_t eb = static_cast<size_t>(attn_type_bytes(c.type));
  g_cpu_attn->cu_q = s.cu_q;
  g_cpu_attn->cu_k = s.cu_k;
  g_cpu_attn->q = cpu_input(c.type, qn, 1);
  g_cpu_attn->k = cpu_input(c.type, kn, 2);
  g_cpu_attn->v = cpu_input(c.type, kn, 3);
  g_cpu_attn->dout = cpu_input(c.type, qn, 4);
  g_cpu_attn->out.assign(static_cast<size_t>(qn) * eb, 0);
  g_cpu_attn->dq.assign(static_cast<size_t>(qn) * eb, 0);
  g_cpu_attn->dk.assign(static_cast<size_t>(kn) * eb, 0);
  g_cpu_attn->dv.assign(static_cast<size_t>(kn) * eb, 0);
  g_cpu_attn->lse.assign(static_cast<size_t>(s.heads * s.total_q()), 0.0f);
  g_cpu_attn->key = c.data_key();
}

void bench_cpu(benchmark::State& state, const AttnCase& c) {
  prepare_cpu_case(c);
  SpembedCall call(c, g_cpu_attn->pointers(), DLDevice{kDLCPU, 0});
  auto forward = [&] {
    check_spembed(call.forward(g_cpu_handle, nullptr, nullptr, 0, nullptr),
                  "spembed attention forward (CPU)");
  };
  auto run = [&] {
    if (c.backward) {
      check_spembed(call.backward(g_cpu_handle, nullptr, nullptr, 0, nullptr),
                    "spembed attention backward (CPU)");
    } else {
      forward();
    }
  };
  if (c.backward) forward();  // O and lse for the backward (untimed)
  for (int i = 0; i < kCpuWarmup; ++i) run();
  report_attention(state, c, "spembed", "cpu", "", time_cpu_iterations(state, run));
}

// ---- registration -------------------------------------------------------------------------

void register_attn(const AttnCase& c, const std::string& peer) {
  const std::string name =
      std::string(g_config.gpu ? "attn/" : "attn_cpu/") + c.group() + "/" + peer;
  register_timed(name, capped_iters(kCpuAttentionIters), [c, peer](benchmark::State& state) {
    if (!g_config.gpu) {
      bench_cpu(state, c);
    } else if (c.backward) {
      bench_backward_gpu(state, c, peer);
    } else {
      bench_forward_gpu(state, c, peer);
    }
  });
}

}  // namespace

const char* attention_flop_model() {
  return "Attention FLOP model: pairs = unmasked (query, key) pairs summed over sequences "
         "(counted on the host); forward = 4 * heads * head_dim * pairs; backward = 2.5 * "
         "forward. Padded peers are credited with the same useful FLOPs. Attention peers: "
         "spembed (forward with lse; backward deterministic, its forward untimed; the kernels "
         "column names the variant the dispatcher chose), spembed_simt = the SIMT kernels on "
         "the same inputs (SPEMBED_ATTENTION_KERNELS=simt; fp16 / bf16, GPU only), stock = pad "
         "+ cuBLAS strided-batched GEMM Q K^T + masked softmax + GEMM P V + unpad, all timed "
         "(forward only, GPU only).\n";
}

void register_attention() {
  g_shapes = new std::vector<AttnShape>(attention_shapes(!g_config.gpu));
  benchmark::AddCustomContext("attention_flop_model", attention_flop_model());
  for (const AttnShape& s : *g_shapes) {
    for (AttnType t : s.types) {
      for (bool backward : {false, true}) {
        const AttnCase c{&s, t, backward};
        register_attn(c, "spembed");
        // The SIMT kernels on the same inputs, where the tensor-core ones may serve.
        if (g_config.gpu && t != AttnType::kF32) register_attn(c, "spembed_simt");
        if (g_config.gpu && !backward) register_attn(c, "stock");
      }
    }
  }
  if (g_config.gpu) {
    g_attn = new GpuAttn;
  } else {
    g_cpu_attn = new CpuAttn;
  }
}

void print_attention_summary() {
  if (g_rows.empty()) return;
  std::printf(
      "\nAttention summary (median of the timed runs; TFLOP/s by the FLOP model above; "
      "speedup = peer time / spembed time)\n");
  std::printf("%-60s %-13s %-12s %11s %9s %8s\n", "case", "peer", "kernels", "us", "TFLOP/s",
              "speedup");
  const std::vector<std::string> speedup = speedup_cells(g_rows);
  for (size_t i = 0; i < g_rows.size(); ++i) {
    const Row& r = g_rows[i];
    std::printf("%-60s %-13s %-12s %11.1f %9.4g %8s\n", r.group.c_str(), r.peer.c_str(),
                r.kernel.c_str(), r.us, r.tflops, speedup[i].c_str());
  }
}

void release_attention_inputs() {
  delete g_attn;
  g_attn = nullptr;
  delete g_cpu_attn;
  g_cpu_attn = nullptr;
  if (g_cublas != nullptr) cublasDestroy(g_cublas);
  g_cublas = nullptr;
  delete g_shapes;
  g_shapes = nullptr;
}

}  // namespace spembed_bench
