// CPU implementation of the sharded collection's data steps (route.h).
#include <cstring>

#include "kernels/common/host_half.h"
#include "kernels/distributed/route.h"

namespace spembed::detail {
namespace {

int64_t index_at(const void* p, IndexType type, int64_t i) {
  return type == IndexType::kI32 ? static_cast<const int32_t*>(p)[i]
                                 : static_cast<const int64_t*>(p)[i];
}

float load(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::kF16:
      return half_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kBF16:
      return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

void store(DType t, void* p, int64_t i, float v) {
  switch (t) {
    case DType::kF16:
      static_cast<uint16_t*>(p)[i] = float_to_half(v);
      break;
    case DType::kBF16:
      static_cast<uint16_t*>(p)[i] = float_to_bf16(v);
      break;
    default:
      static_cast<float*>(p)[i] = v;
  }
}

// The rank an id of table `t` goes to, or -1 when it contributes nothing
// (padding, or out of range: the caller tells the two apart).
int dest_of(const RouteTable& t, int64_t id) {
  if (t.block == 0) return t.owner;
  return static_cast<int>(id / t.block);
}

}  // namespace

RouteCheck route_count(const RouteSource& src, int64_t* counts, int64_t* bag_counts) {
  RouteCheck check;
  const int64_t bags = src.num_tables * src.batch;
  if (index_at(src.offsets, src.index_type, 0) != 0) {
    check.bad_offset_position = 0;
    return check;
  }
  for (int64_t i = 0; i < bags; ++i) {
    const int64_t next = index_at(src.offsets, src.index_type, i + 1);
    if (next < index_at(src.offsets, src.index_type, i)) {
      check.bad_offset_position = i;
      return check;
    }
  }
  if (index_at(src.offsets, src.index_type, bags) != src.nnz) {
    check.bad_offset_position = bags;
    return check;
  }
  std::memset(counts, 0, sizeof(int64_t) * static_cast<size_t>(src.num_tables * src.world));
  for (int64_t t = 0; t < src.num_tables; ++t) {
    const RouteTable& table = src.tables[t];
    for (int64_t b = 0; b < src.batch; ++b) {
      const int64_t bag = t * src.batch + b;
      const int64_t begin = index_at(src.offsets, src.index_type, bag);
      const int64_t end = index_at(src.offsets, src.index_type, bag + 1);
      int64_t pooled = 0;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t id = index_at(src.indices, src.index_type, i);
        if (src.padding_idx >= 0 && id == src.padding_idx) continue;
        if (id < 0 || id >= table.rows) {
          if (check.bad_index_count++ == 0) {
            check.bad_index_position = i;
            check.bad_index_value = id;
            check.bad_index_table = t;
          }
          continue;
        }
        ++counts[t * src.world + dest_of(table, id)];
        ++pooled;
      }
      bag_counts[bag] = pooled;
    }
  }
  return check;
}

void route_scatter(const RouteSource& src, const int64_t* counts, const RouteDest* dests,
                   int64_t* cursor) {
  const int world = src.world;
  // Each rank's ids are shard-major in its local order: the cursor of (t, d)
  // starts after the ids of the shards d lists before t.
  for (int d = 0; d < world; ++d) {
    const int64_t* local = src.local_index + static_cast<int64_t>(d) * src.num_tables;
    std::memset(dests[d].lengths, 0,
                sizeof(int64_t) * static_cast<size_t>(dests[d].num_shards * src.batch));
    // Tables by local position: local order is a permutation of d's tables.
    int64_t start = 0;
    for (int64_t j = 0; j < dests[d].num_shards; ++j) {
      for (int64_t t = 0; t < src.num_tables; ++t) {
        if (local[t] == j) {
          cursor[t * world + d] = start;
          start += counts[t * world + d];
          break;
        }
      }
    }
  }
  for (int64_t t = 0; t < src.num_tables; ++t) {
    const RouteTable& table = src.tables[t];
    for (int64_t b = 0; b < src.batch; ++b) {
      const int64_t bag = t * src.batch + b;
      const int64_t begin = index_at(src.offsets, src.index_type, bag);
      const int64_t end = index_at(src.offsets, src.index_type, bag + 1);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t id = index_at(src.indices, src.index_type, i);
        if ((src.padding_idx >= 0 && id == src.padding_idx) || id < 0 || id >= table.rows) {
          continue;
        }
        const int d = dest_of(table, id);
        const RouteDest& dest = dests[d];
        const int64_t j = src.local_index[static_cast<int64_t>(d) * src.num_tables + t];
        const int64_t at = cursor[t * world + d]++;
        dest.ids[at] = table.block == 0 ? id : id - static_cast<int64_t>(d) * table.block;
        if (src.weights != nullptr) dest.weights[at] = src.weights[i];
        ++dest.lengths[j * src.batch + b];
      }
    }
  }
}

void route_assemble(const RouteReceived* received, int world, int64_t num_shards, int64_t num_a,
                    int64_t* offsets_a, int64_t* offsets_b, int64_t* ids, float* weights,
                    int64_t* nnz_a, int64_t* nnz, int64_t* cursor) {
  // cursor[s]: where source s's next shard starts in its block (shard-major).
  for (int s = 0; s < world; ++s) cursor[s] = 0;
  int64_t at = 0;
  int64_t a_end = 0;
  offsets_a[0] = 0;
  offsets_b[0] = 0;
  int64_t bag_a = 0;
  int64_t bag_b = 0;
  for (int64_t j = 0; j < num_shards; ++j) {
    const bool in_a = j < num_a;
    if (j == num_a) a_end = at;
    for (int s = 0; s < world; ++s) {
      const RouteReceived& r = received[s];
      int64_t& src_at = cursor[s];
      for (int64_t b = 0; b < r.batch; ++b) {
        const int64_t len = r.lengths[j * r.batch + b];
        std::memcpy(ids + at, r.ids + src_at, sizeof(int64_t) * static_cast<size_t>(len));
        if (weights != nullptr) {
          std::memcpy(weights + at, r.weights + src_at, sizeof(float) * static_cast<size_t>(len));
        }
        at += len;
        src_at += len;
        if (in_a) {
          offsets_a[bag_a + 1] = at;
          ++bag_a;
        } else {
          offsets_b[bag_b + 1] = at - a_end;
          ++bag_b;
        }
      }
    }
  }
  if (num_a == num_shards) a_end = at;
  *nnz_a = a_end;
  *nnz = at;
}

void route_combine(const RouteCombine& c, const void* const* pooled_a, const float* const* pooled_b,
                   DType out_dtype, void* output, int64_t out_stride) {
  const size_t esize = static_cast<size_t>(dtype_bytes(out_dtype));
  for (int64_t t = 0; t < c.num_tables; ++t) {
    const RouteTable& table = c.tables[t];
    for (int64_t b = 0; b < c.batch; ++b) {
      char* out_row = static_cast<char*>(output) + (b * out_stride + table.out_col) * esize;
      if (table.block == 0) {
        const int d = table.owner;
        const char* in = static_cast<const char*>(pooled_a[d]) +
                         (b * c.dim_a[d] + c.a_col[t]) * static_cast<int64_t>(esize);
        std::memcpy(out_row, in, esize * static_cast<size_t>(table.dim));
        continue;
      }
      const int64_t count = c.bag_counts[t * c.batch + b];
      for (int64_t col = 0; col < table.dim; ++col) {
        // Partials added in rank order from the first rank holding rows.
        float acc = 0.0f;
        bool first = true;
        for (int d = 0; d < c.world; ++d) {
          const int64_t bc = c.b_col[static_cast<int64_t>(d) * c.num_tables + t];
          if (bc < 0) continue;
          const float v = pooled_b[d][b * c.dim_b[d] + bc + col];
          acc = first ? v : acc + v;
          first = false;
        }
        if (count == 0) acc = 0.0f;
        if (c.mean && count > 0) acc = acc / static_cast<float>(count);
        store(out_dtype, out_row, col, acc);
      }
    }
  }
}

void route_split_grad(const RouteCombine& c, const void* grad, DType grad_dtype,
                      int64_t grad_stride, void* const* grad_a, float* const* grad_b) {
  const size_t esize = static_cast<size_t>(dtype_bytes(grad_dtype));
  for (int64_t t = 0; t < c.num_tables; ++t) {
    const RouteTable& table = c.tables[t];
    for (int64_t b = 0; b < c.batch; ++b) {
      const int64_t in_at = b * grad_stride + table.out_col;
      if (table.block == 0) {
        const int d = table.owner;
        char* out = static_cast<char*>(grad_a[d]) +
                    (b * c.dim_a[d] + c.a_col[t]) * static_cast<int64_t>(esize);
        std::memcpy(out, static_cast<const char*>(grad) + in_at * static_cast<int64_t>(esize),
                    esize * static_cast<size_t>(table.dim));
        continue;
      }
      const int64_t count = c.bag_counts[t * c.batch + b];
      for (int d = 0; d < c.world; ++d) {
        const int64_t bc = c.b_col[static_cast<int64_t>(d) * c.num_tables + t];
        if (bc < 0) continue;
        float* out = grad_b[d] + b * c.dim_b[d] + bc;
        for (int64_t col = 0; col < table.dim; ++col) {
          const float go = load(grad_dtype, grad, in_at + col);
          // As the single-device MEAN backward: each id gets go / count.
          out[col] = c.mean ? (count > 0 ? go / static_cast<float>(count) : 0.0f) : go;
        }
      }
    }
  }
}

}  // namespace spembed::detail
