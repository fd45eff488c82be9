// Index generation for the embedding bag benchmarks.
//
// Ids come from a counter-based generator (the splitmix64 output function of
// state seed + (i + 1) * 0x9E3779B97F4A7C15), so the i-th id of a shape does
// not depend on how the work is split over threads, and
// benchmarks/torch_embedding_bag.py draws the same ids with tensor arithmetic.
//
//  uniform  row = floor(u_i * rows)
//  zipf(a)  rank r (0-based) has weight (r + 1)^-a. The rank is found by
//           inverse CDF: the first r whose cumulative weight exceeds
//           u_i * total (binary search over the cumulative weights, which are
//           built once per (rows, a)). The rank is then scattered over the
//           table by the bijection row = (rank * 2654435761 + shift) mod rows
//           (2654435761 is a prime larger than any table here, hence coprime
//           with rows), so that hot rows are not neighbours in memory.
//  hot30    one row takes 30% of the lookups, the rest are Zipf(1.05): if
//           u_i < 0.3 the rank is 0; otherwise u' = (u_i - 0.3) / 0.7 and the
//           rank is the first r >= 1 whose cumulative weight exceeds
//           w_0 + u' * (total - w_0) (Zipf(1.05) over ranks 1..rows-1). Same
//           scatter. The backward's worst case for a per-row reduction.
#pragma once

#include <cstdint>

namespace spembed_bench {

enum class Dist { kUniform, kZipf105, kZipf120, kHot30 };

const char* dist_name(Dist dist);  // "uniform", "zipf1.05", "zipf1.2", "hot30"

// Share of the lookups of hot30's hot row.
constexpr double kHotShare = 0.3;

// The multiplier of the rank-to-row bijection (see above).
constexpr uint64_t kRankScatter = 2654435761ull;

// u_i in [0, 1) with 53 random bits.
double counter_uniform(uint64_t seed, uint64_t i);

// Fills ids[0, n) with rows of a table of `rows` rows. The k-th id uses the
// generator's counter first_counter + k; `shift` is the bijection's offset.
// Runs on all hardware threads.
void generate_ids(Dist dist, int64_t rows, uint64_t seed, uint64_t first_counter, uint64_t shift,
                  int64_t* ids, int64_t n);

}  // namespace spembed_bench
