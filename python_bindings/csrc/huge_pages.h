// CPU tensors on transparent huge pages (see huge_pages.cpp).
#pragma once

#include <ATen/core/Tensor.h>

namespace spembed_torch {

// A contiguous copy of the CPU tensor `src`. From 2 MiB on, its memory is
// mapped on its own, starts on a 2 MiB boundary and is advised as huge pages
// (Linux); smaller tensors, or where mapping fails, get an ordinary copy.
at::Tensor to_huge_pages(const at::Tensor& src);

}  // namespace spembed_torch
