// Backward kernels (rowsum, dQ, dK/dV) of the varlen attention for __half
// inputs (see attention_kernel.cuh for the grids). One file per dtype and
// direction, so the instantiations compile in parallel.
#include "kernels/attention_kernel.cuh"

namespace spembed::detail {

template int launch_attention_backward<__half>(const AttentionParams& p,
                                            const AttentionLaunch& q_launch,
                                            const AttentionLaunch& k_launch, float* rowsum,
                                            cudaStream_t stream);

}  // namespace spembed::detail
