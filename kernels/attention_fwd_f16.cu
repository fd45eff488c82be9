// Forward kernels of the varlen attention for __half inputs (see
// attention_kernel.cuh for the grid). One file per dtype and direction, so
// the instantiations compile in parallel.
#include "kernels/attention_kernel.cuh"

namespace spembed::detail {

template int launch_attention_forward<__half>(const AttentionParams& p, const AttentionLaunch& l,
                                           int forward_tpr, cudaStream_t stream);

}  // namespace spembed::detail
