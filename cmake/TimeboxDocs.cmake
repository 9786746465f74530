# The docs target: the API reference, with Doxygen, from the public headers
# (docs/Doxyfile.in).  Fails on a public name without documentation.  In a
# project that vendors timebox it is timebox_docs (its own docs stays its).
set(_tbx_docs docs)
if(NOT TIMEBOX_TOP_LEVEL)
  set(_tbx_docs timebox_docs)
endif()
find_package(Doxygen QUIET)
if(DOXYGEN_FOUND)
  configure_file(docs/Doxyfile.in ${CMAKE_CURRENT_BINARY_DIR}/Doxyfile @ONLY)
  add_custom_target(${_tbx_docs}
    COMMAND ${DOXYGEN_EXECUTABLE} ${CMAKE_CURRENT_BINARY_DIR}/Doxyfile
    DEPENDS include/timebox.h include/timebox/uv.h docs/doxygen-filter.sed
    WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}
    COMMENT "API reference: ${CMAKE_CURRENT_BINARY_DIR}/docs/html/index.html"
    VERBATIM)
else()
  add_custom_target(${_tbx_docs}
    COMMAND ${CMAKE_COMMAND} -E echo "docs: doxygen not found (apt-get install doxygen)"
    COMMAND ${CMAKE_COMMAND} -E false
    VERBATIM)
endif()
