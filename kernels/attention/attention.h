// Entry points of the varlen attention implementations. host/attention/attention.cpp
// calls these after validation; see attention_params.h for the preconditions.
#pragma once

#include "kernels/attention/attention_params.h"

namespace spembed::detail {

// CPU implementation, the oracle of the CUDA tests: scores, softmax and sums
// in float64 from the inputs widened to float64; outputs rounded to their
// dtype once. Writes out and (if set) lse.
void attention_forward_cpu(const AttentionParams& p);

// CPU backward: P recomputed as exp(scale * q.k - lse) from the given lse,
// D = rowsum(dO * O) from the given O, all in float64; dq, dk, dv overwritten.
// Each gradient element is one sequential sum (deterministic).
void attention_backward_cpu(const AttentionParams& p);

// CUDA implementations. Queue on `stream` (a cudaStream_t) the device-side
// checks of cu_seqlens and the tile schedule (into p.workspace), the compute
// kernels, which write nothing if the checks failed, and, when p.report is
// set, the report. Return the first launch error as a cudaError_t value (0 on
// success). Never synchronise.
int attention_forward_cuda(const AttentionParams& p, void* stream);
int attention_backward_cuda(const AttentionParams& p, void* stream);

}  // namespace spembed::detail
