# Man pages (man/, written by hand) and the systemd units of the shared
# forkserver (systemd/), installed with the packages' components.

# Debian wants man pages compressed; gzip -n keeps the build reproducible.
set(_tbx_man_pages timebox.3:dev timebox-worker.1:forkserver timebox-forkserver.8:forkserver)
set(_tbx_man_out)
foreach(entry ${_tbx_man_pages})
  string(REPLACE ":" ";" entry "${entry}")
  list(GET entry 0 page)
  list(GET entry 1 component)
  string(REGEX REPLACE ".*\\.([0-9])$" "\\1" section "${page}")
  set(gz ${CMAKE_CURRENT_BINARY_DIR}/man/${page}.gz)
  add_custom_command(OUTPUT ${gz}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/man
    COMMAND gzip -9n -c ${CMAKE_CURRENT_SOURCE_DIR}/man/${page} > ${gz}
    DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/man/${page}
    COMMENT "Compressing man/${page}")
  list(APPEND _tbx_man_out ${gz})
  install(FILES ${gz} DESTINATION ${CMAKE_INSTALL_MANDIR}/man${section} COMPONENT ${component})
endforeach()
add_custom_target(timebox_man ALL DEPENDS ${_tbx_man_out})

# The units name the daemon by its installed path.  They go below the
# prefix (lib/systemd/system), so an install into a prefix of one's own
# touches nothing outside it; the packages install them for /usr.
set(TIMEBOX_SYSTEMD_UNITDIR "lib/systemd/system" CACHE STRING
  "Where the systemd units are installed, relative to the prefix or absolute")
foreach(unit timebox-forkserver@.socket timebox-forkserver@.service)
  configure_file(systemd/${unit}.in ${CMAKE_CURRENT_BINARY_DIR}/systemd/${unit} @ONLY)
  install(FILES ${CMAKE_CURRENT_BINARY_DIR}/systemd/${unit}
    DESTINATION ${TIMEBOX_SYSTEMD_UNITDIR} COMPONENT forkserver)
endforeach()
