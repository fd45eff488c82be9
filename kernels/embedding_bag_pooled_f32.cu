// Lookup kernels for float tables (see embedding_bag_pooled_kernel.cuh). One
// file per table dtype, so the instantiations compile in parallel.
#include "kernels/embedding_bag_pooled_kernel.cuh"

namespace spembed::detail {

template int launch_embedding_bag_pooled<float>(const EmbeddingBagForwardParams& p,
                                                const ForwardLaunch& plan, cudaStream_t stream);

}  // namespace spembed::detail
