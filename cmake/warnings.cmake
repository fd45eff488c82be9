# Warnings as errors on spembed's own code (not on third-party headers, which
# are included as system headers). ptxas warns on register spills and local
# memory use and, with -Werror, fails the build: no kernel may spill.
function(spembed_target_warnings target)
  set(cxx_flags -Wall -Wextra -Wshadow -Wno-unused-parameter)
  if(SPEMBED_WERROR)
    list(APPEND cxx_flags -Werror)
  endif()
  string(REPLACE ";" "," host_flags "${cxx_flags}")
  # --resource-usage prints ptxas's per-kernel report (registers, stack, local
  # memory), which the launcher below keeps for scripts/check_kernel_resources.sh.
  set(cuda_flags -Xcompiler=${host_flags} -Xptxas=-warn-spills,-warn-lmem-usage
      --resource-usage --expt-relaxed-constexpr)
  if(SPEMBED_WERROR)
    list(APPEND cuda_flags --Werror=all-warnings -Xptxas=-Werror)
  endif()
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:${cxx_flags}>
    $<$<COMPILE_LANGUAGE:C>:-Wall -Wextra $<$<BOOL:${SPEMBED_WERROR}>:-Werror>>
    $<$<COMPILE_LANGUAGE:CUDA>:${cuda_flags}>)
endfunction()

set(CMAKE_CUDA_COMPILER_LAUNCHER ${CMAKE_CURRENT_LIST_DIR}/nvcc_with_ptxas_log.sh)
