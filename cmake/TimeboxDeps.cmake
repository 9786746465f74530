# timebox's dependencies, found with pkg-config: libuv, and msgpack-c under
# either of its names (msgpack-c 6.x calls the C library "msgpack-c", 4.x
# "msgpack").  Used by the build and by the installed timeboxConfig.cmake.
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)
if(NOT TARGET PkgConfig::TIMEBOX_UV)
  pkg_check_modules(TIMEBOX_UV REQUIRED IMPORTED_TARGET GLOBAL libuv>=1.40)
endif()
if(NOT TARGET PkgConfig::TIMEBOX_MSGPACK)
  pkg_search_module(TIMEBOX_MSGPACK REQUIRED IMPORTED_TARGET GLOBAL msgpack-c msgpack)
endif()
