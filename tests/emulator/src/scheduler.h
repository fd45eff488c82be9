// The emulator's grid executor: runs a launch block by block, each block's
// threads as fibers on one worker OS thread, and implements the device-side
// rendezvous points declared in spembed_emulator/device.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <functional>
#include <string>

namespace spembed::emu {

struct GridLaunch {
  const void* kernel = nullptr;  // for the fault report
  dim3 grid;
  dim3 block;
  size_t dynamic_smem_bytes = 0;
  std::function<void()> thread_body;
};

// Runs every block of the launch; returns "" or the fault report (kernel,
// block, thread, what happened). Stops at the first faulting block.
std::string run_grid(const GridLaunch& launch);

// "name (file:line)" of a code address, for reports.
std::string describe_code(const void* address);

}  // namespace spembed::emu
