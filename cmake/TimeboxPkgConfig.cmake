# Writes timebox.pc into the build tree and installs it.
#
# The .pc file finds its prefix from its own directory (${pcfiledir}), so an
# install made with `cmake --install build --prefix DIR`, or staged with
# DESTDIR and moved, still points at its own headers and libraries.  Install
# directories given as absolute paths are written as they are.
file(RELATIVE_PATH _tbx_pc_up "/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/")
string(REGEX REPLACE "/$" "" _tbx_pc_up "${_tbx_pc_up}")
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(TIMEBOX_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(TIMEBOX_PC_LIBDIR "${CMAKE_INSTALL_LIBDIR}")
else()
  set(TIMEBOX_PC_PREFIX "\${pcfiledir}/${_tbx_pc_up}")
  set(TIMEBOX_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
endif()
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(TIMEBOX_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
  set(TIMEBOX_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
unset(_tbx_pc_up)

configure_file(${CMAKE_CURRENT_LIST_DIR}/timebox.pc.in ${CMAKE_CURRENT_BINARY_DIR}/timebox.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/timebox.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig
  COMPONENT dev)
