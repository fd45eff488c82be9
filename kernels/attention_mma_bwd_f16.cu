// Tensor-core backward (rowsum, dQ, dK/dV) of the varlen attention for
// __half inputs (see attention_mma_bwd_kernel.cuh for the grids and the
// fragment layouts). One file per dtype, so the instantiations compile in
// parallel.
#include "kernels/attention_mma_bwd_kernel.cuh"

namespace spembed::detail {

template int launch_attention_mma_backward<__half>(const AttentionParams& p,
                                                   const AttentionLaunch& q_launch,
                                                   const AttentionLaunch& k_launch,
                                                   float* rowsum, cudaStream_t stream);

}  // namespace spembed::detail
