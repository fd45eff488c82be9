// Tensor-core forward of the varlen attention for __half inputs (see
// attention_mma_kernel.cuh for the grid and the fragment layouts). One file
// per dtype, so the instantiations compile in parallel.
#include "kernels/attention_mma_kernel.cuh"

namespace spembed::detail {

template int launch_attention_mma_forward<__half>(const AttentionParams& p,
                                                  const AttentionLaunch& l, int warps,
                                                  cudaStream_t stream);

}  // namespace spembed::detail
