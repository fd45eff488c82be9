# The emulation build (SPEMBED_EMULATION=ON): the kernels' .cu files compiled
# by the host compiler as C++ against tests/emulator, linked with the
# emulator's CUDA runtime in place of cudart. docs/emulation.md says what it
# checks and what it cannot.

if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  message(FATAL_ERROR "SPEMBED_EMULATION needs g++ (fibers, sanitizer fiber API)")
endif()

# Sanitizers apply to everything built here, the emulator's runtime included
# (its scheduler opts out of ThreadSanitizer's instrumentation itself).
if(SPEMBED_SANITIZER STREQUAL "address")
  set(SPEMBED_SANITIZER_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=all
      -fno-omit-frame-pointer)
elseif(SPEMBED_SANITIZER STREQUAL "thread")
  set(SPEMBED_SANITIZER_FLAGS -fsanitize=thread -fno-omit-frame-pointer)
elseif(NOT SPEMBED_SANITIZER STREQUAL "")
  message(FATAL_ERROR "SPEMBED_SANITIZER must be address, thread or empty")
endif()
add_compile_options(${SPEMBED_SANITIZER_FLAGS})
add_link_options(${SPEMBED_SANITIZER_FLAGS})

# Turns the .cu sources of `target` into emulated C++: compiled with -x c++,
# the emulator's device layer included first, the emulator's CUB ahead of the
# toolkit's, and no contraction of a*b+c (the _rn intrinsics promise two
# roundings).
function(spembed_emulate_cuda_sources target)
  get_target_property(sources ${target} SOURCES)
  foreach(src IN LISTS sources)
    if(src MATCHES "\\.cu$")
      set_source_files_properties(${src} TARGET_DIRECTORY ${target} PROPERTIES
        LANGUAGE CXX
        COMPILE_OPTIONS "-x;c++;-include;spembed_emulator/device.h;-ffp-contract=off;-Wno-unknown-pragmas")
    endif()
  endforeach()
  target_compile_definitions(${target} PRIVATE SPEMBED_EMULATION=1)
  target_include_directories(${target} BEFORE PRIVATE
    ${CMAKE_SOURCE_DIR}/tests/emulator/include)
endfunction()

# After the function: the emulator's own tests use it.
add_subdirectory(${CMAKE_CURRENT_LIST_DIR}/../tests/emulator
                 ${CMAKE_CURRENT_BINARY_DIR}/tests/emulator)
