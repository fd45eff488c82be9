// Backward lane-group kernels (reduce, combine, bag) for __half tables, see
// embedding_bag_backward_reduce_kernel.cuh. One file per table dtype, so the
// instantiations compile in parallel: each holds the reduce kernel for 3
// grad_output dtypes x {MAX, other}, the combine kernel, and the bag kernel
// for 3 grad_output dtypes.
#include "kernels/embedding_bag_backward_reduce_kernel.cuh"

namespace spembed::detail {

template int launch_backward_bag_kernel<__half>(const EmbeddingBagBackwardParams& p,
                                                const BackwardLaunch& plan, cudaStream_t stream);
template int launch_backward_reduce<__half>(const EmbeddingBagBackwardParams& p,
                                            const BackwardWorkspace& ws, const BackwardLaunch& plan,
                                            cudaStream_t stream);

}  // namespace spembed::detail
