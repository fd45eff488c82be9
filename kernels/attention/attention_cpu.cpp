// CPU implementation of the varlen attention forward and backward: the oracle
// of the CUDA tests and the path used without a GPU. Plain loops in float64
// (inputs widened exactly, outputs rounded once to their dtype), split over
// threads by query token (forward, dQ) or key token (dK, dV), so every output
// element is one sequential sum: results are deterministic.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/attention/attention.h"
#include "kernels/common/cpu_parallel.h"
#include "kernels/common/host_half.h"

namespace spembed::detail {
namespace {

double load(DType t, const void* base, int64_t i) {
  switch (t) {
    case DType::kF16:
      return half_to_float(static_cast<const uint16_t*>(base)[i]);
    case DType::kBF16:
      return bf16_to_float(static_cast<const uint16_t*>(base)[i]);
    case DType::kF32:
    default:
      return static_cast<const float*>(base)[i];
  }
}

void store(DType t, void* base, int64_t i, double v) {
  const float f = static_cast<float>(v);
  switch (t) {
    case DType::kF16:
      static_cast<uint16_t*>(base)[i] = float_to_half(f);
      break;
    case DType::kBF16:
      static_cast<uint16_t*>(base)[i] = float_to_bf16(f);
      break;
    case DType::kF32:
    default:
      static_cast<float*>(base)[i] = f;
      break;
  }
}

// Row `token`, head `head` of a token tensor, widened to float64.
void read_row(const AttentionParams& p, const TokenTensor& t, int64_t token, int head,
              double* row) {
  const int64_t base = t.offset(token, head);
  for (int c = 0; c < p.head_dim; ++c) row[c] = load(p.dtype, t.data, base + c);
}

// `row` times `mul` into row `token`, head `head` of an output token tensor,
// rounded to the dtype.
void write_row(const AttentionParams& p, const TokenTensor& t, int64_t token, int head,
               const std::vector<double>& row, double mul) {
  const int64_t base = t.offset(token, head);
  for (int c = 0; c < p.head_dim; ++c) {
    store(p.dtype, const_cast<void*>(t.data), base + c, mul * row[static_cast<size_t>(c)]);
  }
}

// The sequence holding token `t` of a tensor whose offsets are `cu`.
int64_t sequence_of(const int32_t* cu, int64_t batch, int64_t t) {
  // The last b with cu[b] <= t; empty sequences share their offset with the
  // next one, and upper_bound skips past them.
  const int32_t* it = std::upper_bound(cu, cu + batch + 1, static_cast<int32_t>(t));
  return (it - cu) - 1;
}

// Work per thread below which the loops run inline (a row of attention is
// already ~Lk * head_dim multiply-adds).
constexpr int64_t kMinRowsPerThread = 16;

double dot(const double* a, const double* b, int n) {
  double s = 0.0;
  for (int c = 0; c < n; ++c) s += a[c] * b[c];
  return s;
}

// Scaled scores of query row `qrow` against the keys [j0, j1) of sequence
// starting at key token `k0`; masked keys get -inf.
struct Sequence {
  int64_t q0, lq, k0, lk;
};

Sequence sequence(const AttentionParams& p, int64_t b) {
  Sequence s;
  s.q0 = p.cu_seqlens_q[b];
  s.lq = p.cu_seqlens_q[b + 1] - s.q0;
  s.k0 = p.cu_seqlens_k[b];
  s.lk = p.cu_seqlens_k[b + 1] - s.k0;
  return s;
}

// The sequence of query token t and the keys its row sees.
struct QueryKeys {
  Sequence seq;
  Range keys;
};

QueryKeys query_keys(const AttentionParams& p, int64_t t) {
  const Sequence seq = sequence(p, sequence_of(p.cu_seqlens_q, p.batch, t));
  const int64_t i = t - seq.q0;
  return {seq, visible_keys(p.band, seq.lq, seq.lk, i, i + 1)};
}

}  // namespace

void attention_forward_cpu(const AttentionParams& p) {
  const int d = p.head_dim;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  parallel_for(p.total_q, kMinRowsPerThread, [&](int64_t begin, int64_t end) {
    std::vector<double> q(static_cast<size_t>(d)), k(static_cast<size_t>(d));
    std::vector<double> v(static_cast<size_t>(d)), o(static_cast<size_t>(d)), s;
    for (int64_t t = begin; t < end; ++t) {
      const auto [seq, keys] = query_keys(p, t);
      const int64_t j0 = keys.begin, j1 = keys.end;
      for (int h = 0; h < p.heads; ++h) {
        const int kh = h / p.group();
        read_row(p, p.q, t, h, q.data());
        s.assign(static_cast<size_t>(std::max<int64_t>(j1 - j0, 0)), 0.0);
        double m = neg_inf;
        for (int64_t j = j0; j < j1; ++j) {
          read_row(p, p.k, seq.k0 + j, kh, k.data());
          const double x = p.scale * dot(q.data(), k.data(), d);
          s[static_cast<size_t>(j - j0)] = x;
          m = std::max(m, x);
        }
        std::fill(o.begin(), o.end(), 0.0);
        double l = 0.0;
        for (int64_t j = j0; j < j1; ++j) {
          const double e = std::exp(s[static_cast<size_t>(j - j0)] - m);
          l += e;
          read_row(p, p.v, seq.k0 + j, kh, v.data());
          for (int c = 0; c < d; ++c) o[static_cast<size_t>(c)] += e * v[static_cast<size_t>(c)];
        }
        // No visible key: O = 0 and LSE = -inf (l = 0 leaves o at 0).
        const double inv = l > 0.0 ? 1.0 / l : 0.0;
        write_row(p, p.out, t, h, o, inv);
        if (p.lse != nullptr) {
          p.lse[h * p.total_q + t] = l > 0.0 ? static_cast<float>(m + std::log(l))
                                             : -std::numeric_limits<float>::infinity();
        }
      }
    }
  });
}

namespace {

// P and dS of query token t (sequence-relative row i), head h, against key j:
// P = exp(scale * q.k - lse), dS = P * (dO.v - D). Zero where the key is
// hidden or the row saw nothing (lse = -inf).
struct ProbGrad {
  double p, ds;
};

ProbGrad prob_grad(const AttentionParams& p, const double* q, const double* dout, double lse,
                   double rowsum, const double* k, const double* v) {
  if (std::isinf(lse) && lse < 0) return {0.0, 0.0};
  const double prob = std::exp(p.scale * dot(q, k, p.head_dim) - lse);
  return {prob, prob * (dot(dout, v, p.head_dim) - rowsum)};
}

// rowsum(dO * O) of token t, head h.
double rowsum_dout_out(const AttentionParams& p, int64_t t, int h, double* a, double* b) {
  read_row(p, p.dout, t, h, a);
  read_row(p, p.out, t, h, b);
  return dot(a, b, p.head_dim);
}

}  // namespace

void attention_backward_cpu(const AttentionParams& p) {
  const int d = p.head_dim;
  const size_t ds = static_cast<size_t>(d);
  // dQ: one query token per step, every head.
  parallel_for(p.total_q, kMinRowsPerThread, [&](int64_t begin, int64_t end) {
    std::vector<double> q(ds), dout(ds), o(ds), k(ds), v(ds), acc(ds);
    for (int64_t t = begin; t < end; ++t) {
      const auto [seq, keys] = query_keys(p, t);
      const int64_t j0 = keys.begin, j1 = keys.end;
      for (int h = 0; h < p.heads; ++h) {
        const int kh = h / p.group();
        const double rowsum = rowsum_dout_out(p, t, h, dout.data(), o.data());
        read_row(p, p.q, t, h, q.data());
        const double lse = p.lse[h * p.total_q + t];
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = j0; j < j1; ++j) {
          read_row(p, p.k, seq.k0 + j, kh, k.data());
          read_row(p, p.v, seq.k0 + j, kh, v.data());
          const ProbGrad g = prob_grad(p, q.data(), dout.data(), lse, rowsum, k.data(), v.data());
          for (size_t c = 0; c < ds; ++c) acc[c] += g.ds * k[c];
        }
        write_row(p, p.dq, t, h, acc, p.scale);
      }
    }
  });
  // dK, dV: one key token per step, every kv head, summed over its query heads.
  parallel_for(p.total_k, kMinRowsPerThread, [&](int64_t begin, int64_t end) {
    std::vector<double> q(ds), dout(ds), o(ds), k(ds), v(ds), dk(ds), dv(ds);
    for (int64_t t = begin; t < end; ++t) {
      const Sequence seq = sequence(p, sequence_of(p.cu_seqlens_k, p.batch, t));
      const int64_t j = t - seq.k0;
      const Range queries = visible_queries(p.band, seq.lq, seq.lk, j, j + 1);
      const int64_t i0 = queries.begin, i1 = queries.end;
      for (int kh = 0; kh < p.kv_heads; ++kh) {
        read_row(p, p.k, t, kh, k.data());
        read_row(p, p.v, t, kh, v.data());
        std::fill(dk.begin(), dk.end(), 0.0);
        std::fill(dv.begin(), dv.end(), 0.0);
        for (int h = kh * p.group(); h < (kh + 1) * p.group(); ++h) {
          for (int64_t i = i0; i < i1; ++i) {
            const int64_t qt = seq.q0 + i;
            const double rowsum = rowsum_dout_out(p, qt, h, dout.data(), o.data());
            read_row(p, p.q, qt, h, q.data());
            const double lse = p.lse[h * p.total_q + qt];
            const ProbGrad g = prob_grad(p, q.data(), dout.data(), lse, rowsum, k.data(), v.data());
            for (size_t c = 0; c < ds; ++c) {
              dv[c] += g.p * dout[c];
              dk[c] += g.ds * q[c];
            }
          }
        }
        write_row(p, p.dk, t, kh, dk, p.scale);
        write_row(p, p.dv, t, kh, dv, 1.0);
      }
    }
  });
}

}  // namespace spembed::detail
