# Debian packages with CPack: cmake --build build --target package makes
#   libtimebox0         the shared library (libtimebox${TIMEBOX_SOVERSION})                     (component lib)
#   libtimebox-dev      headers, static library, CMake package,
#                       pkg-config file, timebox(3)             (component dev)
#   timebox-forkserver  the daemon, timebox-worker, their man
#                       pages, the systemd units                (component forkserver)
# Configure with -DCMAKE_INSTALL_PREFIX=/usr: the packages install where the
# build was configured to (the units and the library directory say so).
if(NOT CMAKE_INSTALL_PREFIX STREQUAL "/usr")
  message(STATUS "Packages will install under ${CMAKE_INSTALL_PREFIX}; "
                 "Debian packages want -DCMAKE_INSTALL_PREFIX=/usr")
endif()

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME timebox)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL lib dev forkserver)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "timebox developers <timebox@invalid.example>"
  CACHE STRING "The packages' Maintainer field")
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://github.com/timebox/timebox"
  CACHE STRING "The packages' Homepage field")
set(CPACK_DEBIAN_PACKAGE_SOURCE timebox)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# Dependencies on the libraries the binaries link, from dpkg-shlibdeps.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${CMAKE_CURRENT_BINARY_DIR})
set(_tbx_same "(= ${CPACK_DEBIAN_PACKAGE_VERSION}-${CPACK_DEBIAN_PACKAGE_RELEASE})")

set(CPACK_DEBIAN_LIB_PACKAGE_NAME libtimebox${TIMEBOX_SOVERSION})
set(CPACK_DEBIAN_LIB_PACKAGE_SECTION libs)
# libsodium is loaded with dlopen (lib/forkserver/auth.c), which shlibdeps cannot see.
set(CPACK_DEBIAN_LIB_PACKAGE_DEPENDS "libsodium23")
# A shlibs file for the packages built against it, and ldconfig triggers.
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY ">=")
set(CPACK_DEBIAN_LIB_PACKAGE_CONTROL_EXTRA ${CMAKE_CURRENT_SOURCE_DIR}/packaging/triggers)
set(CPACK_DEBIAN_LIB_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_COMPONENT_LIB_DESCRIPTION
  "run a C function in a child process under a deadline
timebox runs a C function in a child process and gives its result back
(msgpack), or stops it at a deadline: SIGTERM to the child's process group,
then SIGKILL.  Children are made by fork, by a forkserver or by posix_spawn,
per call; a libuv API runs thousands of calls on one loop.
.
This package holds the shared library.")

set(CPACK_DEBIAN_DEV_PACKAGE_NAME libtimebox-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_PACKAGE_SHLIBDEPS OFF)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS "libtimebox${TIMEBOX_SOVERSION} ${_tbx_same}, libuv1-dev, libmsgpack-dev, pkg-config")
set(CPACK_COMPONENT_DEV_DESCRIPTION
  "run a C function in a child process under a deadline (development files)
timebox runs a C function in a child process and gives its result back
(msgpack), or stops it at a deadline.
.
This package holds the headers, the static library, the CMake package, the
pkg-config file and the timebox(3) manual page.")

set(CPACK_DEBIAN_FORKSERVER_PACKAGE_NAME timebox-forkserver)
set(CPACK_DEBIAN_FORKSERVER_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_FORKSERVER_PACKAGE_DEPENDS "libtimebox${TIMEBOX_SOVERSION} ${_tbx_same}")
set(CPACK_COMPONENT_FORKSERVER_DESCRIPTION
  "shared timebox forkserver daemon and spawn worker
timebox runs a C function in a child process under a deadline.
.
This package holds timebox-forkserver, a forkserver that the programs of a
user share over a Unix socket (with systemd units for socket activation), and
timebox-worker, the program that serves spawn calls for a host that cannot.")

# Each package's copyright and changelog, as Debian policy wants them.
configure_file(packaging/copyright.in ${CMAKE_CURRENT_BINARY_DIR}/packaging/copyright @ONLY)
configure_file(packaging/changelog.Debian.in
  ${CMAKE_CURRENT_BINARY_DIR}/packaging/changelog.Debian @ONLY)
add_custom_command(OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/packaging/changelog.Debian.gz
  COMMAND gzip -9n -c ${CMAKE_CURRENT_BINARY_DIR}/packaging/changelog.Debian
          > ${CMAKE_CURRENT_BINARY_DIR}/packaging/changelog.Debian.gz
  DEPENDS ${CMAKE_CURRENT_BINARY_DIR}/packaging/changelog.Debian)
add_custom_target(timebox_changelog ALL DEPENDS ${CMAKE_CURRENT_BINARY_DIR}/packaging/changelog.Debian.gz)
foreach(c lib dev forkserver)
  string(TOUPPER ${c} C)
  install(FILES ${CMAKE_CURRENT_BINARY_DIR}/packaging/copyright
                ${CMAKE_CURRENT_BINARY_DIR}/packaging/changelog.Debian.gz
    DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/${CPACK_DEBIAN_${C}_PACKAGE_NAME}
    COMPONENT ${c})
endforeach()

include(CPack)
