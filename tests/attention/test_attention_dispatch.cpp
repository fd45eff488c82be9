// The attention dispatch decision (kernels/attention/attention_dispatch.h) on the CPU:
// which devices, dtypes, head dims and layouts reach the tensor-core kernels.
// A device older than sm_80 must never reach them (their PTX is a trap
// there), and every call they cannot serve must take the SIMT kernels.
#include <gtest/gtest.h>

#include <cstdint>

#include "kernels/attention/attention_dispatch.h"

namespace spembed::detail {
namespace {

TEST(AttentionDispatch, TensorCoresNeedSm80) {
  for (int major : {5, 6, 7}) {
    for (int minor : {0, 2, 5, 9}) {
      const int cc = compute_capability(major, minor);
      SCOPED_TRACE(cc);
      EXPECT_FALSE(use_tensor_core_attention(cc, DType::kF16, 64, true));
      EXPECT_FALSE(use_tensor_core_attention(cc, DType::kBF16, 64, true));
    }
  }
  for (int cc : {80, 86, 87, 89, 90, 100, 103, 120}) {
    SCOPED_TRACE(cc);
    EXPECT_TRUE(use_tensor_core_attention(cc, DType::kF16, 64, true));
    EXPECT_TRUE(use_tensor_core_attention(cc, DType::kBF16, 128, true));
  }
  EXPECT_EQ(compute_capability(7, 5), 75);
  EXPECT_EQ(compute_capability(9, 0), 90);
  // 0: the capability could not be read; the SIMT kernels serve every device.
  EXPECT_FALSE(use_tensor_core_attention(0, DType::kF16, 64, true));
}

TEST(AttentionDispatch, TensorCoresServeHalfPrecisionOnly) {
  EXPECT_FALSE(use_tensor_core_attention(90, DType::kF32, 64, true));
  EXPECT_TRUE(use_tensor_core_attention(90, DType::kF16, 64, true));
  EXPECT_TRUE(use_tensor_core_attention(90, DType::kBF16, 64, true));
}

TEST(AttentionDispatch, HeadDimMultipleOfEightUpTo128) {
  for (int64_t d = 1; d <= 256; ++d) {
    SCOPED_TRACE(d);
    const bool expected = d % 8 == 0 && d <= 128;
    EXPECT_EQ(use_tensor_core_attention(90, DType::kF16, d, true), expected);
    EXPECT_EQ(use_tensor_core_attention(80, DType::kBF16, d, true), expected);
  }
  EXPECT_FALSE(use_tensor_core_attention(90, DType::kF16, 0, true));
  EXPECT_FALSE(use_tensor_core_attention(90, DType::kF16, -8, true));
}

TEST(AttentionDispatch, MisalignedRowsTakeSimt) {
  EXPECT_FALSE(use_tensor_core_attention(90, DType::kF16, 64, false));
  EXPECT_FALSE(use_tensor_core_attention(80, DType::kBF16, 32, false));
}

// Usable where a constant expression is needed: the decision has no hidden
// state (no device query inside it).
static_assert(use_tensor_core_attention(80, DType::kF16, 8, true));
static_assert(!use_tensor_core_attention(75, DType::kF16, 8, true));

}  // namespace
}  // namespace spembed::detail
