# `cmake --install` produces a package found with find_package(spembed).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS spembed EXPORT spembedTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/spembed DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT spembedTargets NAMESPACE spembed::
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/spembed)
configure_package_config_file(cmake/spembedConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/spembedConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/spembed)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/spembedConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/spembedConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/spembedConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/spembed)
