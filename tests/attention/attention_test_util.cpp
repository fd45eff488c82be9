#include "attention_test_util.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace spembed_test {

float AttentionData::scale() const {
  return c.scale != 0.f ? c.scale : 1.f / std::sqrt(static_cast<float>(c.head_dim));
}

namespace {

HostTensor make_tokens(DLDataType t, int64_t tokens, int heads, int head_dim) {
  HostTensor h(t, {tokens, static_cast<int64_t>(heads) * head_dim});
  h.set_view_shape({tokens, heads, head_dim});
  return h;
}

HostTensor make_offsets(const std::vector<int64_t>& lens, int64_t* total) {
  std::vector<int64_t> cu{0};
  for (int64_t l : lens) cu.push_back(cu.back() + l);
  *total = cu.back();
  return make_index_tensor(kI32, cu);
}

// Rounds to the case's dtype (identity in the exact reference).
struct Rounder {
  DLDataType t;
  bool exact;
  double operator()(double x) const { return exact ? x : round_to(t, x); }
  // Arithmetic of the straightforward implementation: float32.
  double acc(double x) const { return exact ? x : static_cast<double>(static_cast<float>(x)); }
};

bool sees(const AttentionCase& c, int64_t lq, int64_t lk, int64_t i, int64_t j) {
  const int64_t rel = j - (i + lk - lq);
  if (c.causal && rel > 0) return false;
  if (c.window_right >= 0 && rel > c.window_right) return false;
  if (c.window_left >= 0 && rel < -c.window_left) return false;
  return true;
}

AttentionResult compute(const AttentionData& d, const Rounder& r) {
  const AttentionCase& c = d.c;
  const int H = c.heads, D = c.head_dim, G = c.heads / c.kv_heads;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  AttentionResult res;
  res.out.assign(static_cast<size_t>(d.total_q * H * D), 0.0);
  res.dq.assign(res.out.size(), 0.0);
  res.lse.assign(static_cast<size_t>(H * d.total_q), neg_inf);
  res.dk.assign(static_cast<size_t>(d.total_k * c.kv_heads * D), 0.0);
  res.dv.assign(res.dk.size(), 0.0);
  const double scale = d.scale();
  // The inputs widened to double once ([token][head][col]): the same values
  // d.at() reads, without its per-element dtype dispatch.
  const std::vector<double> qv = read_all(d.q), kv = read_all(d.k), vv = read_all(d.v),
                            dov = read_all(d.dout);
  const auto q_at = [&](const std::vector<double>& t, int64_t token, int head, int col) {
    return t[static_cast<size_t>((token * H + head) * D + col)];
  };
  const auto k_at = [&](const std::vector<double>& t, int64_t token, int head, int col) {
    return t[static_cast<size_t>((token * c.kv_heads + head) * D + col)];
  };
  int64_t q0 = 0, k0 = 0;
  for (int64_t b = 0; b < d.batch; ++b) {
    const int64_t lq = c.lens_q[static_cast<size_t>(b)], lk = c.lens_k[static_cast<size_t>(b)];
    for (int h = 0; h < H; ++h) {
      const int kh = h / G;
      for (int64_t i = 0; i < lq; ++i) {
        std::vector<double> s(static_cast<size_t>(lk), neg_inf), p(static_cast<size_t>(lk), 0.0);
        double m = neg_inf;
        for (int64_t j = 0; j < lk; ++j) {
          if (!sees(c, lq, lk, i, j)) continue;
          double x = 0.0;
          for (int col = 0; col < D; ++col) {
            x = r.acc(x + q_at(qv, q0 + i, h, col) * k_at(kv, k0 + j, kh, col));
          }
          s[static_cast<size_t>(j)] = r.acc(x * scale);
          m = std::max(m, s[static_cast<size_t>(j)]);
        }
        if (m == neg_inf) continue;  // sees nothing: O = 0, lse = -inf, zero gradients
        double l = 0.0;
        for (int64_t j = 0; j < lk; ++j) {
          if (s[static_cast<size_t>(j)] == neg_inf) continue;
          p[static_cast<size_t>(j)] = r.acc(std::exp(s[static_cast<size_t>(j)] - m));
          l = r.acc(l + p[static_cast<size_t>(j)]);
        }
        const double lse = m + std::log(l);
        res.lse[static_cast<size_t>(h * d.total_q + q0 + i)] = r.acc(lse);
        for (int64_t j = 0; j < lk; ++j) p[static_cast<size_t>(j)] = r(r.acc(p[static_cast<size_t>(j)] / l));
        const size_t ob = static_cast<size_t>(((q0 + i) * H + h) * D);
        std::vector<double> o(static_cast<size_t>(D), 0.0);
        for (int col = 0; col < D; ++col) {
          double x = 0.0;
          for (int64_t j = 0; j < lk; ++j) {
            x = r.acc(x + p[static_cast<size_t>(j)] * k_at(vv, k0 + j, kh, col));
          }
          o[static_cast<size_t>(col)] = x;
          res.out[ob + static_cast<size_t>(col)] = r(x);
        }
        // The backward gets O and lse (float32), not P: a straightforward
        // implementation recomputes P = exp(s - lse) from them, so in low
        // precision P carries the rounding of s and of the saved lse.
        if (!r.exact) {
          const double saved_lse = res.lse[static_cast<size_t>(h * d.total_q + q0 + i)];
          for (int64_t j = 0; j < lk; ++j) {
            const double sj = s[static_cast<size_t>(j)];
            p[static_cast<size_t>(j)] = sj == neg_inf ? 0.0 : r(r.acc(std::exp(sj - saved_lse)));
          }
        }
        // Backward of this row: D = dO . O; dS = P (dO . v - D). D is its own
        // reduction, summed here in reverse column order: in any
        // implementation D and dP = dO . v are separate sums, and where a row
        // sees one key (P = 1, O = v) their difference is rounding noise,
        // not the exact zero that two identical sums would give.
        double rowsum = 0.0;
        for (int col = D - 1; col >= 0; --col) {
          rowsum = r.acc(rowsum + q_at(dov, q0 + i, h, col) * res.out[ob + static_cast<size_t>(col)]);
        }
        for (int64_t j = 0; j < lk; ++j) {
          const double pj = p[static_cast<size_t>(j)];
          if (pj == 0.0) continue;
          double dp = 0.0;
          for (int col = 0; col < D; ++col) {
            dp = r.acc(dp + q_at(dov, q0 + i, h, col) * k_at(vv, k0 + j, kh, col));
          }
          const double ds = r(r.acc(pj * (dp - rowsum)));
          const size_t kb = static_cast<size_t>(((k0 + j) * c.kv_heads + kh) * D);
          // Sums in float32 in the straightforward implementation, as every
          // other sum here (exact in the float64 reference).
          for (int col = 0; col < D; ++col) {
            double& gq = res.dq[ob + static_cast<size_t>(col)];
            double& gk = res.dk[kb + static_cast<size_t>(col)];
            double& gv = res.dv[kb + static_cast<size_t>(col)];
            gq = r.acc(gq + ds * k_at(kv, k0 + j, kh, col));
            gk = r.acc(gk + ds * q_at(qv, q0 + i, h, col));
            gv = r.acc(gv + pj * q_at(dov, q0 + i, h, col));
          }
        }
      }
    }
    q0 += lq;
    k0 += lk;
  }
  for (double& x : res.dq) x = r(r.acc(x * scale));
  for (double& x : res.dk) x = r(r.acc(x * scale));
  for (double& x : res.dv) x = r(r.acc(x));
  return res;
}

}  // namespace

AttentionData make_attention(const AttentionCase& c) {
  AttentionData d;
  d.c = c;
  d.batch = static_cast<int64_t>(c.lens_q.size());
  d.cu_q = make_offsets(c.lens_q, &d.total_q);
  d.cu_k = make_offsets(c.lens_k, &d.total_k);
  Rng rng(c.seed);
  d.q = make_tokens(c.dtype, d.total_q, c.heads, c.head_dim);
  d.k = make_tokens(c.dtype, d.total_k, c.kv_heads, c.head_dim);
  d.v = make_tokens(c.dtype, d.total_k, c.kv_heads, c.head_dim);
  d.dout = make_tokens(c.dtype, d.total_q, c.heads, c.head_dim);
  for (HostTensor* t : {&d.q, &d.k, &d.v, &d.dout}) fill_random(*t, rng, DataKind::kReal);
  spembed_attention_options_init(&d.options);
  d.options.mask = c.causal ? SPEMBED_ATTENTION_MASK_CAUSAL : SPEMBED_ATTENTION_MASK_NONE;
  d.options.window_left = c.window_left;
  d.options.window_right = c.window_right;
  d.options.scale = c.scale;
  return d;
}

HostTensor make_q_like(const AttentionData& d) {
  HostTensor t = make_tokens(d.c.dtype, d.total_q, d.c.heads, d.c.head_dim);
  t.fill_bytes(kPoisonByte);
  return t;
}

HostTensor make_k_like(const AttentionData& d) {
  HostTensor t = make_tokens(d.c.dtype, d.total_k, d.c.kv_heads, d.c.head_dim);
  t.fill_bytes(kPoisonByte);
  return t;
}

HostTensor make_lse(const AttentionData& d) {
  HostTensor t(kF32, {d.c.heads, d.total_q});
  t.fill_bytes(kPoisonByte);
  return t;
}

AttentionResult reference_attention(const AttentionData& d) {
  return compute(d, Rounder{d.c.dtype, true});
}

AttentionResult lowprec_attention(const AttentionData& d) {
  return compute(d, Rounder{d.c.dtype, false});
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (std::isinf(a[i]) && std::isinf(b[i]) && (a[i] < 0) == (b[i] < 0)) continue;
    const double e = std::fabs(a[i] - b[i]);
    if (std::isnan(e)) return std::numeric_limits<double>::infinity();
    m = std::max(m, e);
  }
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  return m;
}

std::vector<double> read_all(const HostTensor& t) {
  std::vector<double> all, row;
  for (int64_t r = 0; r < t.size(0); ++r) {
    t.read_row(r, &row);
    all.insert(all.end(), row.begin(), row.end());
  }
  return all;
}

}  // namespace spembed_test
