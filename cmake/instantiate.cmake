# Explicit template instantiations, one generated .cu file per (family, type),
# so that the instantiations compile in parallel and their list is stated once
# (the family's CMakeLists.txt) instead of in hand-written one-line files.
#
#   spembed_instantiate(<family> HEADER <header> TYPES <type>...
#                       INSTANCE <declaration>...)
#
# writes ${PROJECT_BINARY_DIR}/generated/kernels/<family>_<suffix>.cu for each
# type (suffix: f32 for float, f16 for __half, bf16 for __nv_bfloat16, f64
# for double), each
# including <header> and holding the explicit instantiation declarations (no
# trailing semicolon) with @T@ replaced by the type, and adds
# it to the spembed target. The files are rewritten only when their text
# changes. (tests/emulator's mutation builds compile one of them again, by
# this path.)
# Embedding tables: the 16/32-bit float types, and double.
set(SPEMBED_TABLE_TYPES float __half __nv_bfloat16 double)
# Attention inputs: no double.
set(SPEMBED_ATTENTION_TYPES float __half __nv_bfloat16)
set(SPEMBED_HALF_TYPES __half __nv_bfloat16)
set(_spembed_instantiate_template ${CMAKE_CURRENT_LIST_DIR}/instantiate.cu.in)

function(spembed_instantiate family)
  cmake_parse_arguments(ARG "" "HEADER" "TYPES;INSTANCE" ${ARGN})
  list(JOIN ARG_INSTANCE ";\n" text)
  foreach(type IN LISTS ARG_TYPES)
    if(type STREQUAL "float")
      set(suffix f32)
    elseif(type STREQUAL "__half")
      set(suffix f16)
    elseif(type STREQUAL "__nv_bfloat16")
      set(suffix bf16)
    elseif(type STREQUAL "double")
      set(suffix f64)
    else()
      message(FATAL_ERROR "spembed_instantiate: no file suffix for type ${type}")
    endif()
    set(SPEMBED_INSTANCE_HEADER ${ARG_HEADER})
    string(REPLACE "@T@" "${type}" SPEMBED_INSTANCE_TEXT "${text};")
    set(SPEMBED_INSTANCE_FAMILY ${family})
    set(out ${PROJECT_BINARY_DIR}/generated/kernels/${family}_${suffix}.cu)
    configure_file(${_spembed_instantiate_template} ${out} @ONLY)
    target_sources(spembed PRIVATE ${out})
  endforeach()
endfunction()
