# What `cmake --install` puts where, and the Debian package CPack builds from it
# (scripts/package-test.sh builds and installs it). Included by the top-level CMakeLists.txt.
include(GNUInstallDirs)

install(TARGETS cofid cofi-sim cofi RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES ${CMAKE_SOURCE_DIR}/packaging/cofid.service DESTINATION /lib/systemd/system)
install(FILES ${CMAKE_SOURCE_DIR}/packaging/cofid.json DESTINATION /etc/cofi)
install(FILES ${CMAKE_SOURCE_DIR}/packaging/cofid.env DESTINATION /etc/cofi RENAME cofid.env)
install(FILES ${CMAKE_SOURCE_DIR}/README.md ${CMAKE_SOURCE_DIR}/docs/ARCHITECTURE.md
              ${CMAKE_SOURCE_DIR}/docs/PACKAGING.md ${CMAKE_SOURCE_DIR}/openapi/openapi.json
        DESTINATION ${CMAKE_INSTALL_DOCDIR})

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME cofi)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "cofi maintainers <cofi@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "control plane that drives recorded calls through GPU nodes and an NLP API")
set(CPACK_PACKAGE_DESCRIPTION
    "cofid (the service, a systemd unit with Type=notify), cofi (its command-line client)\nand cofi-sim (a simulator of the GPU nodes and the NLP API).")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# dpkg-shlibdeps finds the library packages and versions (libmicrohttpd12, libcurl4,
# libjansson4, libpq5, libc6); without it, the list by hand.
find_program(DPKG_SHLIBDEPS dpkg-shlibdeps)
if(DPKG_SHLIBDEPS)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
else()
  set(CPACK_DEBIAN_PACKAGE_DEPENDS "libc6, libmicrohttpd12, libcurl4, libjansson4, libpq5")
endif()
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "postgresql (>= 15)")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${CMAKE_SOURCE_DIR}/packaging/debian/conffiles;${CMAKE_SOURCE_DIR}/packaging/debian/postinst;${CMAKE_SOURCE_DIR}/packaging/debian/prerm;${CMAKE_SOURCE_DIR}/packaging/debian/postrm")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_OUTPUT_FILE_PREFIX ${CMAKE_BINARY_DIR}/packages)
include(CPack)
