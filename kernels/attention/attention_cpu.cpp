// CPU implementation of the varlen attention forward and backward: the oracle
// of the CUDA tests and the path used without a GPU. float64 throughout
// (inputs widened exactly, outputs rounded once to their dtype), in tiles: a
// block of query rows against a block of keys, flash-attention style (online
// softmax over key blocks of 256), vectorized over keys (scores) and the head
// dimension (P V and the gradients) with the widest instruction set the CPU
// has (AVX-512, AVX2 + FMA, or portable code; attention_cpu_tiles.inc).
//
// Work items are (sequence, kv head, query chunk) for the forward and dQ and
// (sequence, kv head, key chunk) for dK / dV, run longest first on the worker
// pool; a forward query chunk of few rows (target candidates) is one item
// over every head that streams K and V in small chunks. Every output element
// is written by one item, in an order fixed by the shapes: results are
// deterministic and independent of the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define SPEMBED_ATTN_X86 1
#else
#define SPEMBED_ATTN_X86 0
#endif

#include "kernels/attention/attention.h"
#include "kernels/common/cpu_parallel.h"
#include "kernels/common/host_half.h"

namespace spembed::detail {
namespace {

struct CpuSequence {
  int64_t q0, lq, k0, lk;
};

CpuSequence sequence(const AttentionParams& p, int64_t b) {
  CpuSequence s;
  s.q0 = p.cu_seqlens_q[b];
  s.lq = p.cu_seqlens_q[b + 1] - s.q0;
  s.k0 = p.cu_seqlens_k[b];
  s.lk = p.cu_seqlens_k[b + 1] - s.k0;
  return s;
}

// Rows (query rows times heads) up to which a forward item takes every head
// and streams K and V in small chunks instead of widening all of a kv head's
// keys first (forward_stream_item).
constexpr int kStreamRows = 64;

// The tile kernels, once per instruction set.
#if SPEMBED_ATTN_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
namespace avx512 {
#define SPEMBED_ATTN_LANES 8
#include "kernels/attention/attention_cpu_tiles.inc"
#undef SPEMBED_ATTN_LANES
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
#define SPEMBED_ATTN_LANES 4
#include "kernels/attention/attention_cpu_tiles.inc"
#undef SPEMBED_ATTN_LANES
}  // namespace avx2
#pragma GCC pop_options
#endif

namespace portable {
#define SPEMBED_ATTN_LANES 1
#include "kernels/attention/attention_cpu_tiles.inc"
#undef SPEMBED_ATTN_LANES
}  // namespace portable

struct TileKernels {
  int64_t (*forward_scratch)(int, int64_t);
  int64_t (*dq_scratch)(int, int64_t);
  int64_t (*dkv_scratch)(int, int64_t);
  int64_t (*forward_stream_scratch)(int, int);
  void (*forward_item)(const AttentionParams&, const CpuSequence&, int, int64_t, int64_t, double*);
  void (*dq_item)(const AttentionParams&, const double*, const CpuSequence&, int, int64_t, int64_t,
                  double*);
  void (*dkv_item)(const AttentionParams&, const double*, const CpuSequence&, int, int64_t, int64_t,
                   bool, double*);
  void (*forward_stream_item)(const AttentionParams&, const CpuSequence&, int64_t, int64_t,
                              double*);
};

#define SPEMBED_ATTN_KERNELS(ns)                                                          \
  TileKernels {                                                                           \
    ns::forward_scratch, ns::dq_scratch, ns::dkv_scratch, ns::forward_stream_scratch,     \
        ns::forward_item, ns::dq_item, ns::dkv_item, ns::forward_stream_item              \
  }

// The widest instruction set the CPU has, capped by
// SPEMBED_ATTENTION_CPU_ISA=avx2 | portable (an internal override for tests
// and benchmarks, read on every call).
const TileKernels& tile_kernels() {
  enum Level { kPortable, kAvx2, kAvx512 };
  static const Level best = [] {
#if SPEMBED_ATTN_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
      return __builtin_cpu_supports("avx512f") ? kAvx512 : kAvx2;
    }
#endif
    return kPortable;
  }();
  Level level = best;
  if (const char* isa = std::getenv("SPEMBED_ATTENTION_CPU_ISA")) {
    if (std::strcmp(isa, "portable") == 0) level = kPortable;
    if (std::strcmp(isa, "avx2") == 0 && level > kAvx2) level = kAvx2;
  }
#if SPEMBED_ATTN_X86
  static const TileKernels avx512_kernels = SPEMBED_ATTN_KERNELS(avx512);
  static const TileKernels avx2_kernels = SPEMBED_ATTN_KERNELS(avx2);
  if (level == kAvx512) return avx512_kernels;
  if (level == kAvx2) return avx2_kernels;
#endif
  static const TileKernels portable_kernels = SPEMBED_ATTN_KERNELS(portable);
  return portable_kernels;
}

// Rows (queries or keys) per work item: enough to amortise widening the keys
// an item sees, small enough to balance a few long sequences over threads.
constexpr int64_t kChunk = 256;

struct Item {
  int64_t b;
  int kh;  // -1: every kv head (a streaming forward item)
  int64_t begin, end;  // query rows (forward, dQ) or keys (dK / dV) of sequence b
  int64_t cost;        // (query, key) pairs, for the longest-first order
  int64_t keys;        // keys the item widens (its scratch size)
};

// Items over the query rows (by_keys false) or the keys of every sequence.
// Sequences whose keys fit one dK / dV item get their dQ from it too (no
// second pass recomputing P); skip_fused leaves them out of the dQ items.
bool fused_backward(const CpuSequence& seq) { return seq.lk > 0 && seq.lk <= kChunk; }

// Forward query chunks of at most kStreamRows rows over all heads are one
// item each (streams).
std::vector<Item> make_items(const AttentionParams& p, bool by_keys, bool skip_fused = false,
                             bool streams = false) {
  std::vector<Item> items;
  for (int64_t b = 0; b < p.batch; ++b) {
    const CpuSequence seq = sequence(p, b);
    if (skip_fused && fused_backward(seq)) continue;
    const int64_t n = by_keys ? seq.lk : seq.lq;
    for (int64_t begin = 0; begin < n; begin += kChunk) {
      const int64_t end = std::min(n, begin + kChunk);
      const Range other = by_keys ? visible_queries(p.band, seq.lq, seq.lk, begin, end)
                                  : visible_keys(p.band, seq.lq, seq.lk, begin, end);
      const int64_t span = std::max<int64_t>(other.end - other.begin, 0);
      if (streams && !by_keys && (end - begin) * p.heads <= kStreamRows) {
        items.push_back({b, -1, begin, end, (end - begin) * (span + 1) * p.kv_heads, span});
        continue;
      }
      for (int kh = 0; kh < p.kv_heads; ++kh) {
        items.push_back(
            {b, kh, begin, end, (end - begin) * (span + 1), by_keys ? end - begin : span});
      }
    }
  }
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& x, const Item& y) { return x.cost > y.cost; });
  return items;
}

// Runs body(item, scratch) for every item on the worker pool; scratch holds
// scratch_doubles(item) doubles, reused by each thread.
template <typename Scratch, typename Body>
void run_items(const std::vector<Item>& items, Scratch&& scratch_doubles, Body&& body) {
  struct Context {
    const std::vector<Item>* items;
    Scratch* scratch;
    Body* body;
  } context{&items, &scratch_doubles, &body};
  run_chunks(
      static_cast<int64_t>(items.size()), cpu_threads(),
      [](void* raw, int64_t i) {
        auto* c = static_cast<Context*>(raw);
        const Item& item = (*c->items)[static_cast<size_t>(i)];
        thread_local std::vector<double> scratch;
        const size_t need = static_cast<size_t>((*c->scratch)(item));
        if (scratch.size() < need) scratch.resize(need);
        (*c->body)(item, scratch.data());
      },
      &context);
}

}  // namespace

void attention_forward_cpu(const AttentionParams& p) {
  const TileKernels& k = tile_kernels();
  const std::vector<Item> items = make_items(p, false, false, true);
  run_items(
      items,
      [&](const Item& it) {
        return it.kh < 0 ? k.forward_stream_scratch(p.head_dim, p.kv_heads)
                         : k.forward_scratch(p.head_dim, it.keys);
      },
      [&](const Item& it, double* work) {
        if (it.kh < 0) {
          k.forward_stream_item(p, sequence(p, it.b), it.begin, it.end, work);
        } else {
          k.forward_item(p, sequence(p, it.b), it.kh, it.begin, it.end, work);
        }
      });
}

void attention_backward_cpu(const AttentionParams& p) {
  const TileKernels& k = tile_kernels();
  // D = rowsum(dO * O) of every (head, query token), from O as given.
  std::vector<double> rowsum(static_cast<size_t>(p.heads * p.total_q));
  parallel_for(p.total_q, 64, [&](int64_t begin, int64_t end) {
    std::vector<double> a(static_cast<size_t>(p.head_dim)), o(a.size());
    for (int64_t t = begin; t < end; ++t) {
      for (int h = 0; h < p.heads; ++h) {
        portable::load_row(p, p.dout, t, h, a.data(), p.head_dim);
        portable::load_row(p, p.out, t, h, o.data(), p.head_dim);
        double s = 0.0;
        for (int c = 0; c < p.head_dim; ++c)
          s += a[static_cast<size_t>(c)] * o[static_cast<size_t>(c)];
        rowsum[static_cast<size_t>(h * p.total_q + t)] = s;
      }
    }
  });
  const std::vector<Item> q_items = make_items(p, false, true);
  run_items(
      q_items, [&](const Item& it) { return k.dq_scratch(p.head_dim, it.keys); },
      [&](const Item& it, double* work) {
        k.dq_item(p, rowsum.data(), sequence(p, it.b), it.kh, it.begin, it.end, work);
      });
  const std::vector<Item> k_items = make_items(p, true);
  run_items(
      k_items, [&](const Item& it) { return k.dkv_scratch(p.head_dim, it.keys); },
      [&](const Item& it, double* work) {
        const CpuSequence seq = sequence(p, it.b);
        k.dkv_item(p, rowsum.data(), seq, it.kh, it.begin, it.end, fused_backward(seq), work);
      });
}

}  // namespace spembed::detail
