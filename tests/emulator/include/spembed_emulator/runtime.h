// Host side of the CUDA emulator: what the launch helper, the emulated CUB and
// the emulator's own tests call. The CUDA runtime API itself (cudaMalloc,
// streams, graphs, ...) is declared by the toolkit's cuda_runtime_api.h and
// defined by the emulator's runtime library, which the emulation build links
// in place of cudart.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace spembed::emu {

// Launches a kernel: `thread_body` is run once per CUDA thread of the grid, as
// a fiber, with threadIdx / blockIdx / ... set. Checks the launch
// configuration as the CUDA runtime does (the error is returned by the next
// cudaGetLastError, not sticky); a fault found while the kernel runs (a
// divergent barrier, a bad warp-collective mask, ...) is printed, kept for
// last_fault(), and becomes the sticky error. Runs now, in stream order, or is
// recorded when `stream` is capturing a graph.
void launch(const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem_bytes,
            cudaStream_t stream, std::function<void()> thread_body);

// Host work in stream order (emulated CUB's device-wide algorithms): run now,
// or recorded into the graph when `stream` is capturing. Returns the sticky
// error, if any, without running `work`.
cudaError_t enqueue_host_work(cudaStream_t stream, const char* what, std::function<void()> work);

// The report of the last kernel fault ("" if none since the last reset).
std::string last_fault();
// Counts of kernel launches run and of faults found, since the process began.
long long launches_run();
long long faults_found();
// Launches run so far of the kernels whose (demangled) name contains
// `name_part`: lets a test check which kernel a dispatch really chose.
long long launches_of(const std::string& name_part);

// Sets the scheduling seed, as SPEMBED_EMULATION_SEED does at start-up: from
// this call on, grids run their threads in the orders a fresh process started
// with SPEMBED_EMULATION_SEED=seed would (the count of grids run restarts).
// Thread-safe; waits for a grid in progress. Host code only: from a kernel it
// deadlocks.
void set_seed(uint64_t seed);

// The compute capability the emulated device reports (major * 10 + minor;
// 90 at start-up, the H200's): cudaDeviceGetAttribute and
// cudaGetDeviceProperties answer with it, so a test can show what the library
// does on an older device (e.g. 75: no tensor-core attention). Returns the
// previous value. Host code only.
int set_compute_capability(int capability);

// The byte every fresh device allocation and every block's dynamic shared
// memory is filled with: as fp32 / fp16 / bf16 it is a NaN, as an index it is
// -1 (or a huge unsigned), so a read of memory nobody wrote shows in results.
constexpr unsigned char kPoisonByte = 0xFF;

}  // namespace spembed::emu
