#include "backward_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <set>
#include <sstream>

namespace spembed_test {
namespace {

constexpr double kU32 = 1.0 / 16777216.0;  // float32 unit roundoff, 2^-24
constexpr int kMaxReported = 8;

bool is_valid(const Problem& p, int64_t id) {
  return !(p.spec.padding_idx >= 0 && id == p.spec.padding_idx) && id >= 0 && id < p.spec.rows;
}

// Ids from a Zipf law over the rows (rank k drawn with probability ~ k^-alpha;
// ranks are scattered over the rows by a fixed multiplicative permutation so
// hot rows are not all adjacent).
class ZipfSampler {
 public:
  ZipfSampler(int64_t rows, double alpha) : rows_(rows), cdf_(static_cast<size_t>(rows)) {
    double total = 0.0;
    for (int64_t k = 0; k < rows; ++k) {
      total += std::pow(static_cast<double>(k + 1), -alpha);
      cdf_[static_cast<size_t>(k)] = total;
    }
    for (double& c : cdf_) c /= total;
  }
  int64_t draw(Rng& rng) const {
    const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng.gen());
    const auto k =
        static_cast<int64_t>(std::lower_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin());
    const int64_t rank = std::min(k, rows_ - 1);
    return (rank * 7919) % rows_;  // 7919 is prime: a permutation unless it divides rows
  }

 private:
  int64_t rows_;
  std::vector<double> cdf_;
};

void redraw_ids(Problem& p, IdDistribution dist, uint64_t seed) {
  if (dist == IdDistribution::kUniform) return;
  Rng rng(seed * 7 + 3);
  const int64_t rows = p.spec.rows;
  std::unique_ptr<ZipfSampler> zipf;
  if (dist == IdDistribution::kZipf105) zipf = std::make_unique<ZipfSampler>(rows, 1.05);
  if (dist == IdDistribution::kZipf12) zipf = std::make_unique<ZipfSampler>(rows, 1.2);
  const int64_t hot = rows / 2;
  for (int64_t& id : p.ids) {
    if (!is_valid(p, id)) continue;  // keep padding and bad ids where they are
    int64_t fresh;
    if (zipf) {
      fresh = zipf->draw(rng);
    } else {
      const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng.gen());
      fresh = u < 0.3 ? hot : rng.uniform_int(0, rows - 1);
    }
    if (!is_valid(p, fresh)) fresh = (fresh + 1) % rows;  // never turn a valid id into padding
    id = fresh;
  }
  p.indices = make_index_tensor(p.spec.index_dtype, p.ids);
  p.expected = reference_forward(p);
}

HostTensor poisoned(DLDataType t, std::vector<int64_t> shape) {
  HostTensor h(t, std::move(shape));
  h.fill_bytes(kPoisonByte);
  return h;
}

bool within(double got, double expected, double bound) {
  if (bound == 0.0) return got == expected;
  return std::fabs(got - expected) <= bound;  // false for NaN
}

struct Reporter {
  std::string what;
  int64_t count = 0;
  template <typename... Args>
  void fail(const Args&... parts) {
    if (count++ < kMaxReported) {
      std::ostringstream s;
      s << what << ": ";
      (s << ... << parts);
      ADD_FAILURE() << s.str();
    }
  }
};

}  // namespace

BackwardProblem make_backward_problem(const BackwardSpec& spec, spembed_handle_t handle) {
  BackwardProblem bp;
  bp.spec = spec;
  BackwardSpec& s = bp.spec;
  if (s.fwd.pooling == SPEMBED_POOLING_MAX) s.fwd.with_argmax = true;
  if (same_dtype(s.fwd.table_dtype, kF64)) s.fwd.out_dtype = kF64;  // they go together
  bp.fwd = make_problem(s.fwd);
  redraw_ids(bp.fwd, s.ids, s.fwd.seed);
  Problem& p = bp.fwd;
  if (s.fwd.pooling == SPEMBED_POOLING_MAX) {
    p.argmax.fill_bytes(kPoisonByte);
    const spembed_status_t st = run_forward_cpu(handle, p);
    if (st != SPEMBED_STATUS_SUCCESS) {
      ADD_FAILURE() << "forward for the argmax: " << spembed_status_string(st) << ": "
                    << spembed_last_error();
    }
  }
  Rng rng(s.fwd.seed * 31 + 17);
  const int64_t out_rows = bp.none() ? p.nnz() : p.bags_per_table;
  // A float64 table's grad_output is float64.
  bp.grad_output = HostTensor(same_dtype(p.spec.table_dtype, kF64) ? kF64 : s.grad_dtype,
                              {out_rows, p.total_dim});
  fill_random(bp.grad_output, rng, s.grad_data);

  // Gradients and states: float64 for float64 tables, else float32.
  const DLDataType acc = same_dtype(p.spec.table_dtype, kF64) ? kF64 : kF32;
  int64_t base = 0;
  for (int64_t t = 0; t < p.num_tables; ++t) {
    const int64_t dim = p.spec.dims[static_cast<size_t>(t)];
    bp.row_base.push_back(base);
    base += p.spec.rows;
    bp.max_dim = std::max<int32_t>(bp.max_dim, static_cast<int32_t>(dim));
    if (s.dense) {
      HostTensor g(acc, {p.spec.rows, dim});
      fill_random(g, rng, DataKind::kInt);
      bp.grad_tables.push_back(std::move(g));
    }
    if (s.step) {
      const spembed_optimizer_t o = s.optimizer.optimizer;
      if (o == SPEMBED_OPTIMIZER_ADAGRAD || o == SPEMBED_OPTIMIZER_ADAM) {
        HostTensor s1(acc, {p.spec.rows, dim});
        for (int64_t r = 0; r < p.spec.rows; ++r) {
          for (int64_t c = 0; c < dim; ++c) {
            const double v = rng.value(DataKind::kInt);
            s1.set(r, c, o == SPEMBED_OPTIMIZER_ADAM ? v * 0.1 : std::fabs(v));
          }
        }
        bp.states1.push_back(std::move(s1));
      }
      if (o == SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD) {
        HostTensor s1(acc, {p.spec.rows});
        for (int64_t r = 0; r < p.spec.rows; ++r) s1.set(r, std::fabs(rng.value(DataKind::kInt)));
        bp.states1.push_back(std::move(s1));
      }
      if (o == SPEMBED_OPTIMIZER_ADAM) {
        HostTensor s2(acc, {p.spec.rows, dim});
        for (int64_t r = 0; r < p.spec.rows; ++r) {
          for (int64_t c = 0; c < dim; ++c)
            s2.set(r, c, std::fabs(rng.value(DataKind::kInt)) * 0.1);
        }
        bp.states2.push_back(std::move(s2));
      }
    }
  }
  bp.total_rows = base;
  if (s.sparse) {
    const int64_t capacity = p.nnz() + s.capacity_extra;
    bp.unique_ids = poisoned(s.fwd.batched ? kI64 : s.fwd.index_dtype, {capacity});
    bp.unique_grads = poisoned(acc, {capacity, bp.max_dim});
    bp.num_unique = poisoned(kI64, {1});
  }
  if (s.weight_grads) bp.grad_weights = poisoned(acc, {p.nnz()});
  bp.report = make_report();
  return bp;
}

BackwardExpected reference_backward(const BackwardProblem& bp) {
  const Problem& p = bp.fwd;
  const spembed_pooling_t pooling = p.spec.pooling;
  BackwardExpected e;
  std::vector<std::vector<double>> abs_sum;
  for (int64_t t = 0; t < p.num_tables; ++t) {
    const auto n = static_cast<size_t>(p.spec.rows * p.spec.dims[static_cast<size_t>(t)]);
    e.grad.emplace_back(n, 0.0);
    abs_sum.emplace_back(n, 0.0);
    e.contributions.emplace_back(static_cast<size_t>(p.spec.rows), 0);
  }
  const bool none = bp.none();
  const int64_t bags = none ? p.nnz() : p.num_tables * p.bags_per_table;
  std::set<int64_t> touched;
  e.weight_grads.assign(static_cast<size_t>(p.nnz()), 0.0);
  e.weight_bounds.assign(static_cast<size_t>(p.nnz()), 0.0);
  const bool exact_weights = p.spec.data == DataKind::kInt && bp.spec.grad_data == DataKind::kInt;
  for (int64_t g = 0; g < bags; ++g) {
    const int64_t t = none ? 0 : g / p.bags_per_table;
    const int64_t r = none ? g : g % p.bags_per_table;
    const int64_t dim = p.spec.dims[static_cast<size_t>(t)];
    const int64_t col = p.col_offsets[static_cast<size_t>(t)];
    const int64_t begin = none ? g : p.offsets[static_cast<size_t>(g)];
    const int64_t end = none ? g + 1 : p.offsets[static_cast<size_t>(g) + 1];
    int64_t count = 0;
    for (int64_t i = begin; i < end; ++i) count += is_valid(p, p.ids[static_cast<size_t>(i)]);
    std::set<int64_t> seen;  // rows of this bag so far (MAX carries once per bag)
    for (int64_t i = begin; i < end; ++i) {
      const int64_t id = p.ids[static_cast<size_t>(i)];
      if (!is_valid(p, id)) continue;
      touched.insert(bp.row_base[static_cast<size_t>(t)] + id);
      const double w = p.spec.weighted ? p.weights[static_cast<size_t>(i)] : 1.0;
      if (pooling != SPEMBED_POOLING_MAX || seen.insert(id).second) {
        ++e.contributions[static_cast<size_t>(t)][static_cast<size_t>(id)];
      }
      double dot = 0.0, dot_abs = 0.0;
      for (int64_t d = 0; d < dim; ++d) {
        const double go = bp.grad_output.get(r, none ? d : col + d);
        const double x = p.tables[static_cast<size_t>(t)].get(id, d);
        dot += go * x;
        dot_abs += std::fabs(go * x);
        double c = 0.0;
        switch (pooling) {
          case SPEMBED_POOLING_SUM:
          case SPEMBED_POOLING_NONE:
            c = w * go;
            break;
          case SPEMBED_POOLING_MEAN:
            c = go / static_cast<double>(count);
            break;
          case SPEMBED_POOLING_MAX:
            continue;  // below, per column
        }
        const auto k = static_cast<size_t>(id * dim + d);
        e.grad[static_cast<size_t>(t)][k] += c;
        abs_sum[static_cast<size_t>(t)][k] += std::fabs(c);
      }
      if (p.spec.weighted) {
        e.weight_grads[static_cast<size_t>(i)] = dot;
        e.weight_bounds[static_cast<size_t>(i)] = exact_weights ? 0.0 : gamma32(dim) * dot_abs;
      }
    }
    if (pooling == SPEMBED_POOLING_MAX) {
      for (int64_t d = 0; d < dim; ++d) {
        const int64_t a = p.argmax.get_int(r, col + d);
        if (a < 0) continue;
        const double go = bp.grad_output.get(r, col + d);
        const auto k = static_cast<size_t>(a * dim + d);
        e.grad[static_cast<size_t>(t)][k] += go;
        abs_sum[static_cast<size_t>(t)][k] += std::fabs(go);
      }
    }
  }
  e.touched.assign(touched.begin(), touched.end());
  // scale_grad_by_freq: each row's gradient over its number of valid ids in
  // the call (all bags of its table; padding and skipped ids excluded).
  std::vector<std::vector<int64_t>> frequency;
  if (p.spec.scale_grad_by_freq) {
    for (int64_t t = 0; t < p.num_tables; ++t) {
      frequency.emplace_back(static_cast<size_t>(p.spec.rows), 0);
    }
    for (int64_t g = 0; g < bags; ++g) {
      const int64_t t = none ? 0 : g / p.bags_per_table;
      const int64_t begin = none ? g : p.offsets[static_cast<size_t>(g)];
      const int64_t end = none ? g + 1 : p.offsets[static_cast<size_t>(g) + 1];
      for (int64_t i = begin; i < end; ++i) {
        const int64_t id = p.ids[static_cast<size_t>(i)];
        if (is_valid(p, id)) ++frequency[static_cast<size_t>(t)][static_cast<size_t>(id)];
      }
    }
    for (int64_t t = 0; t < p.num_tables; ++t) {
      const int64_t dim = p.spec.dims[static_cast<size_t>(t)];
      for (size_t k = 0; k < e.grad[static_cast<size_t>(t)].size(); ++k) {
        const int64_t f = frequency[static_cast<size_t>(t)][k / static_cast<size_t>(dim)];
        if (f > 0) {
          e.grad[static_cast<size_t>(t)][k] /= static_cast<double>(f);
          abs_sum[static_cast<size_t>(t)][k] /= static_cast<double>(f);
        }
      }
    }
  }
  // Bounds: each contribution is one float32 operation (or exact), the sum of
  // n of them in any order is within gamma(n) * sum |terms| (Higham, lemma
  // 3.1), and the final addition into grad_table one more rounding: so
  // gamma(n + 2) * (sum |c| + |initial|), the initial part added in the check.
  // Integer-valued data (multiples of 1/4) make every step exact, except
  // MEAN's division.
  // The frequency division is one more rounding.
  const int64_t extra_roundings = p.spec.scale_grad_by_freq ? 3 : 2;
  const bool exact = exact_weights && pooling != SPEMBED_POOLING_MEAN && !p.spec.scale_grad_by_freq;
  for (int64_t t = 0; t < p.num_tables; ++t) {
    const int64_t dim = p.spec.dims[static_cast<size_t>(t)];
    e.grad_bound.emplace_back(abs_sum[static_cast<size_t>(t)].size(), 0.0);
    for (size_t k = 0; k < abs_sum[static_cast<size_t>(t)].size(); ++k) {
      const int64_t n = e.contributions[static_cast<size_t>(t)][k / static_cast<size_t>(dim)];
      e.grad_bound[static_cast<size_t>(t)][k] =
          exact ? 0.0 : gamma32(n + extra_roundings) * abs_sum[static_cast<size_t>(t)][k];
    }
  }
  return e;
}

BackwardOutputs fresh_outputs(const BackwardProblem& bp) {
  BackwardOutputs o;
  for (const HostTensor& t : bp.grad_tables) o.grad_tables.push_back(t.clone());
  for (const HostTensor& t : bp.fwd.tables) o.tables.push_back(t.clone());
  for (const HostTensor& t : bp.states1) o.states1.push_back(t.clone());
  for (const HostTensor& t : bp.states2) o.states2.push_back(t.clone());
  if (bp.spec.sparse) {
    o.unique_ids = bp.unique_ids.clone();
    o.unique_grads = bp.unique_grads.clone();
    o.num_unique = bp.num_unique.clone();
  }
  if (bp.spec.weight_grads) o.grad_weights = bp.grad_weights.clone();
  o.report = bp.report.clone();
  return o;
}

BackwardViews host_views(BackwardProblem& bp, BackwardOutputs& out) {
  BackwardViews v;
  Problem& p = bp.fwd;
  for (HostTensor& t : out.tables) v.tables.push_back(*t.dl());
  v.indices = p.indices.dl();
  v.offsets = p.has_offsets ? p.offsets_t.dl() : nullptr;
  v.weights = p.spec.weighted ? p.weights_t.dl() : nullptr;
  v.argmax = p.spec.pooling == SPEMBED_POOLING_MAX ? p.argmax.dl() : nullptr;
  v.grad_output = bp.grad_output.dl();
  for (HostTensor& t : out.grad_tables) v.grad_tables.push_back(*t.dl());
  for (HostTensor& t : out.states1) v.states1.push_back(*t.dl());
  for (HostTensor& t : out.states2) v.states2.push_back(*t.dl());
  if (bp.spec.sparse) {
    v.unique_ids = out.unique_ids.dl();
    v.unique_grads = out.unique_grads.dl();
    v.num_unique = out.num_unique.dl();
  }
  if (bp.spec.weight_grads) v.grad_weights = out.grad_weights.dl();
  v.report = out.report.dl();
  return v;
}

// The argument fields the single-table and batched structs share by name.
template <typename Args>
Args shared_args(const BackwardViews& v, const spembed_optimizer_options_t* opt) {
  Args a{};
  a.indices = v.indices;
  a.offsets = v.offsets;
  a.per_sample_weights = v.weights;
  a.argmax = v.argmax;
  a.grad_output = v.grad_output;
  a.unique_ids = v.unique_ids;
  a.unique_grads = v.unique_grads;
  a.num_unique = v.num_unique;
  a.optimizer = opt;
  a.grad_per_sample_weights = v.grad_weights;
  return a;
}

spembed_status_t run_backward(spembed_handle_t handle, const BackwardProblem& bp, BackwardViews& v,
                              spembed_backward_algorithm_t algorithm, void* workspace,
                              size_t workspace_bytes, spembed_stream_t stream) {
  const spembed_optimizer_options_t* opt = bp.spec.step ? &bp.spec.optimizer : nullptr;
  auto first = [](std::vector<DLTensor>& views) { return views.empty() ? nullptr : views.data(); };
  if (!bp.spec.fwd.batched) {
    auto a = shared_args<spembed_embedding_bag_backward_args_t>(v, opt);
    a.grad_table = first(v.grad_tables);
    a.table = v.tables.data();
    a.state1 = first(v.states1);
    a.state2 = first(v.states2);
    return spembed_embedding_bag_backward(handle, &a, &bp.fwd.options, algorithm, v.report,
                                          workspace, workspace_bytes, stream);
  }
  if (!v.batch) v.batch = std::make_shared<TableBatch>(handle, v.tables);
  if (v.batch->create_status() != SPEMBED_STATUS_SUCCESS) {
    ADD_FAILURE() << "spembed_table_batch_create: " << spembed_last_error();
    return v.batch->create_status();
  }
  auto a = shared_args<spembed_embedding_bag_batched_backward_args_t>(v, opt);
  a.grad_tables = first(v.grad_tables);
  a.states1 = first(v.states1);
  a.states2 = first(v.states2);
  return spembed_embedding_bag_batched_backward(handle, v.batch->get(), &a, &bp.fwd.options,
                                                algorithm, v.report, workspace, workspace_bytes,
                                                stream);
}

int64_t check_gradients(const std::string& what, const BackwardProblem& bp,
                        const BackwardOutputs& out, const BackwardExpected& e) {
  Reporter rep{what};
  const Problem& p = bp.fwd;
  if (bp.spec.dense) {
    for (int64_t t = 0; t < p.num_tables; ++t) {
      const int64_t dim = p.spec.dims[static_cast<size_t>(t)];
      for (int64_t r = 0; r < p.spec.rows; ++r) {
        for (int64_t d = 0; d < dim; ++d) {
          const auto k = static_cast<size_t>(r * dim + d);
          const double init = bp.grad_tables[static_cast<size_t>(t)].get(r, d);
          const double want = init + e.grad[static_cast<size_t>(t)][k];
          const double bound =
              e.grad_bound[static_cast<size_t>(t)][k] == 0.0
                  ? 0.0
                  : e.grad_bound[static_cast<size_t>(t)][k] +
                        gamma32(e.contributions[static_cast<size_t>(t)][static_cast<size_t>(r)] +
                                2) *
                            std::fabs(init);
          const double got = out.grad_tables[static_cast<size_t>(t)].get(r, d);
          if (!within(got, want, bound)) {
            rep.fail("grad_table[", t, "][", r, ", ", d, "] = ", got, ", expected ", want,
                     " (bound ", bound, ")");
          }
        }
      }
    }
  }
  if (bp.spec.sparse) {
    const int64_t U = out.num_unique.get_int(0);
    const auto want_u = static_cast<int64_t>(e.touched.size());
    if (U != want_u) rep.fail("num_unique = ", U, ", expected ", want_u);
    const int64_t capacity = out.unique_ids.size(0);
    for (int64_t u = 0; u < capacity; ++u) {
      const int64_t id = out.unique_ids.get_int(u);
      if (u >= want_u) {  // past U: untouched (poison)
        if (id != -1) rep.fail("unique_ids[", u, "] past U was written: ", id);
        for (int64_t d = 0; d < bp.max_dim; ++d) {
          if (!std::isnan(out.unique_grads.get(u, d))) {
            rep.fail("unique_grads[", u, ", ", d, "] past U was written");
          }
        }
        continue;
      }
      const int64_t key = e.touched[static_cast<size_t>(u)];
      if (id != key) {
        rep.fail("unique_ids[", u, "] = ", id, ", expected ", key);
        continue;
      }
      int64_t t = p.num_tables - 1;
      while (bp.row_base[static_cast<size_t>(t)] > key) --t;
      const int64_t row = key - bp.row_base[static_cast<size_t>(t)];
      const int64_t dim = p.spec.dims[static_cast<size_t>(t)];
      for (int64_t d = 0; d < bp.max_dim; ++d) {
        const double got = out.unique_grads.get(u, d);
        if (d >= dim) {
          if (got != 0.0) rep.fail("unique_grads[", u, ", ", d, "] past dim ", dim, " = ", got);
          continue;
        }
        const auto k = static_cast<size_t>(row * dim + d);
        const double want = e.grad[static_cast<size_t>(t)][k];
        const double bound = e.grad_bound[static_cast<size_t>(t)][k];
        if (!within(got, want, bound)) {
          rep.fail("unique_grads[", u, ", ", d, "] (row ", key, ") = ", got, ", expected ", want,
                   " (bound ", bound, ")");
        }
      }
    }
  }
  if (bp.spec.weight_grads) {
    for (int64_t i = 0; i < p.nnz(); ++i) {
      const double got = out.grad_weights.get(i);
      const double want = e.weight_grads[static_cast<size_t>(i)];
      if (!within(got, want, e.weight_bounds[static_cast<size_t>(i)])) {
        rep.fail("grad_per_sample_weights[", i, "] = ", got, ", expected ", want, " (bound ",
                 e.weight_bounds[static_cast<size_t>(i)], ")");
      }
    }
  }
  return rep.count;
}

int64_t check_optimizer(const std::string& what, const BackwardProblem& bp,
                        const BackwardOutputs& out, const BackwardExpected& e) {
  Reporter rep{what};
  const Problem& p = bp.fwd;
  const spembed_optimizer_options_t& o = bp.spec.optimizer;
  const double lr = o.learning_rate, eps = o.eps, wd = o.weight_decay;
  const double b1 = o.beta1, b2 = o.beta2;
  const DLDataType wt = p.spec.table_dtype;
  // float32 and float64 weights are stored as computed (no final rounding).
  const bool wide = same_dtype(wt, kF32) || same_dtype(wt, kF64);
  const bool sr = o.stochastic_rounding != 0 && !wide;
  const double ut = wide ? 0.0 : unit_roundoff(wt);
  const double sub = wide ? 0.0 : subnormal_half_ulp(wt);
  std::set<int64_t> touched(e.touched.begin(), e.touched.end());
  for (int64_t t = 0; t < p.num_tables; ++t) {
    const int64_t dim = p.spec.dims[static_cast<size_t>(t)];
    const HostTensor& w0t = p.tables[static_cast<size_t>(t)];
    const HostTensor& w1t = out.tables[static_cast<size_t>(t)];
    const bool has1 = !bp.states1.empty();
    const bool has2 = !bp.states2.empty();
    const bool rowwise = o.optimizer == SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD;
    // float32 roundings on the way to a weight: a handful per element, plus the
    // row's sum of dim squares for row-wise Adagrad; the bound counts 32 (or
    // dim + 32) unit roundoffs of the magnitudes involved.
    const double k32 = (rowwise ? static_cast<double>(dim) : 0.0) + 32.0;
    for (int64_t r = 0; r < p.spec.rows; ++r) {
      const bool is_touched = touched.count(bp.row_base[static_cast<size_t>(t)] + r) > 0;
      if (!is_touched) {
        for (int64_t d = 0; d < dim; ++d) {
          if (w1t.get(r, d) != w0t.get(r, d))
            rep.fail("untouched table[", t, "] row ", r, " changed");
          if (has1 && !rowwise &&
              out.states1[static_cast<size_t>(t)].get(r, d) !=
                  bp.states1[static_cast<size_t>(t)].get(r, d)) {
            rep.fail("untouched state1 row ", r, " changed");
          }
          if (has2 && out.states2[static_cast<size_t>(t)].get(r, d) !=
                          bp.states2[static_cast<size_t>(t)].get(r, d)) {
            rep.fail("untouched state2 row ", r, " changed");
          }
        }
        if (rowwise && out.states1[static_cast<size_t>(t)].get(r) !=
                           bp.states1[static_cast<size_t>(t)].get(r)) {
          rep.fail("untouched row-wise state row ", r, " changed");
        }
        continue;
      }
      std::vector<double> gp(static_cast<size_t>(dim)), gabs(static_cast<size_t>(dim));
      double mean_sq = 0.0;
      for (int64_t d = 0; d < dim; ++d) {
        const double g = e.grad[static_cast<size_t>(t)][static_cast<size_t>(r * dim + d)];
        const double w = w0t.get(r, d);
        gp[static_cast<size_t>(d)] = g + wd * w;
        gabs[static_cast<size_t>(d)] = std::fabs(g) + std::fabs(wd * w);
        mean_sq += gp[static_cast<size_t>(d)] * gp[static_cast<size_t>(d)];
      }
      mean_sq /= static_cast<double>(dim);
      double row_state = 0.0;
      if (rowwise) {
        row_state = bp.states1[static_cast<size_t>(t)].get(r) + mean_sq;
        const double got = out.states1[static_cast<size_t>(t)].get(r);
        if (!within(got, row_state, k32 * kU32 * row_state)) {
          rep.fail("row-wise state[", r, "] = ", got, ", expected ", row_state);
        }
      }
      for (int64_t d = 0; d < dim; ++d) {
        const double w0 = w0t.get(r, d);
        const double g = gp[static_cast<size_t>(d)];
        double delta = 0.0, scale = 0.0;
        switch (o.optimizer) {
          case SPEMBED_OPTIMIZER_SGD:
            delta = lr * g;
            scale = lr * gabs[static_cast<size_t>(d)];
            break;
          case SPEMBED_OPTIMIZER_ADAGRAD:
          case SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD: {
            double s1 = row_state;
            if (!rowwise) {
              s1 = bp.states1[static_cast<size_t>(t)].get(r, d) + g * g;
              const double got = out.states1[static_cast<size_t>(t)].get(r, d);
              if (!within(got, s1, 8 * kU32 * s1)) {
                rep.fail("state1[", r, ", ", d, "] = ", got, ", expected ", s1);
              }
            }
            const double denom = std::sqrt(s1) + eps;
            delta = lr * g / denom;
            scale = lr * gabs[static_cast<size_t>(d)] / denom;
            break;
          }
          case SPEMBED_OPTIMIZER_ADAM: {
            const double m0 = bp.states1[static_cast<size_t>(t)].get(r, d);
            const double v0 = bp.states2[static_cast<size_t>(t)].get(r, d);
            const double m1 = b1 * m0 + (1 - b1) * g;
            const double v1 = b2 * v0 + (1 - b2) * g * g;
            const double m_scale = b1 * std::fabs(m0) + (1 - b1) * gabs[static_cast<size_t>(d)];
            const double got_m = out.states1[static_cast<size_t>(t)].get(r, d);
            const double got_v = out.states2[static_cast<size_t>(t)].get(r, d);
            if (!within(got_m, m1, 8 * kU32 * m_scale + 1e-300)) {
              rep.fail("state1 (m)[", r, ", ", d, "] = ", got_m, ", expected ", m1);
            }
            if (!within(got_v, v1, 8 * kU32 * v1 + 1e-300)) {
              rep.fail("state2 (v)[", r, ", ", d, "] = ", got_v, ", expected ", v1);
            }
            const double step = static_cast<double>(o.step);
            const double bc1 = 1 - std::pow(b1, step), bc2 = 1 - std::pow(b2, step);
            const double denom = std::sqrt(v1) / std::sqrt(bc2) + eps;
            delta = lr / bc1 * m1 / denom;
            scale = lr / bc1 * m_scale / denom;
            break;
          }
        }
        const double w1 = w0 - delta;
        const double bound32 = k32 * kU32 * (std::fabs(w0) + scale);
        const double bound = bound32 + (sr ? 2.0 : 1.0) * (ut * (std::fabs(w1) + bound32) + sub);
        const double got = w1t.get(r, d);
        if (!within(got, w1, bound + 1e-300)) {
          rep.fail("table[", t, "][", r, ", ", d, "] = ", got, ", expected ", w1, " (bound ", bound,
                   ")");
        }
      }
    }
  }
  return rep.count;
}

int64_t compare_bitwise(const std::string& what, const BackwardProblem& bp,
                        const BackwardOutputs& a, const BackwardOutputs& b) {
  Reporter rep{what};
  auto same = [&](const char* name, const HostTensor& x, const HostTensor& y) {
    if (!x.bytes_equal(y.bytes())) rep.fail(name, " differs bitwise");
  };
  for (size_t t = 0; t < a.grad_tables.size(); ++t)
    same("grad_table", a.grad_tables[t], b.grad_tables[t]);
  if (bp.spec.step) {
    for (size_t t = 0; t < a.tables.size(); ++t) same("table", a.tables[t], b.tables[t]);
    for (size_t t = 0; t < a.states1.size(); ++t) same("state1", a.states1[t], b.states1[t]);
    for (size_t t = 0; t < a.states2.size(); ++t) same("state2", a.states2[t], b.states2[t]);
  }
  if (bp.spec.sparse) {
    same("unique_ids", a.unique_ids, b.unique_ids);
    same("unique_grads", a.unique_grads, b.unique_grads);
    same("num_unique", a.num_unique, b.num_unique);
  }
  if (bp.spec.weight_grads) same("grad_per_sample_weights", a.grad_weights, b.grad_weights);
  return rep.count;
}

}  // namespace spembed_test
