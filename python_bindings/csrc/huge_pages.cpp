// CPU tables on transparent huge pages. A lookup into a table of millions of
// rows touches a different 4 KiB page with almost every id, so on the CPU it
// waits on page walks more than on memory; with 2 MiB pages the TLB covers
// the table and the same lookups run 1.3x (uniform ids) to 1.8x (Zipf ids)
// faster. The nn modules put the tables and optimizer states they create on
// such pages (docs/python.md, "CPU tables on huge pages").
#include "huge_pages.h"

#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace spembed_torch {

at::Tensor to_huge_pages(const at::Tensor& src) {
  TORCH_CHECK_VALUE(src.device().is_cpu(), "spembed.to_huge_pages: src must be a CPU tensor, got ",
                    src.device());
  const size_t bytes = static_cast<size_t>(src.numel()) * src.element_size();
  constexpr size_t kHugePage = size_t{2} << 20;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes >= kHugePage) {
    // Mapped with a huge page of slack so that the tensor can start on a
    // huge-page boundary; advised before the first touch, so that the copy's
    // page faults take whole huge pages.
    const size_t span = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    const size_t mapped = span + kHugePage;
    void* base = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base != MAP_FAILED) {
      const uintptr_t start =
          (reinterpret_cast<uintptr_t>(base) + kHugePage - 1) / kHugePage * kHugePage;
      void* data = reinterpret_cast<void*>(start);
      // Refused (THP disabled, an old kernel): ordinary pages, same tensor.
      (void)madvise(data, span, MADV_HUGEPAGE);
      at::Tensor out = at::from_blob(
          data, src.sizes(), [base, mapped](void*) { munmap(base, mapped); },
          src.options().memory_format(at::MemoryFormat::Contiguous));
      out.copy_(src);
      return out;
    }
  }
#endif
  return src.contiguous().clone();
}

}  // namespace spembed_torch
