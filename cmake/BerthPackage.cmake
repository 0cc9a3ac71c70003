# Bare-metal deployment: man pages made from the programs' --help
# (help2man), the systemd units, the berth account and the example settings
# as install() rules, and the Debian package (cpack -G DEB) built from them.
# Included at the end of the top-level CMakeLists.txt.
include(GNUInstallDirs)
set(BERTH_SYSTEMD_SRC ${PROJECT_SOURCE_DIR}/deploy/systemd)

# --- man pages ---------------------------------------------------------------
# One section-1 page per program, written by help2man from its --help and
# --version at build time, gzipped as Debian installs them. help2man runs a
# wrapper named after the program that reshapes the settings table of
# --help into an option list (cmake/help_for_man.awk).
find_program(HELP2MAN_EXECUTABLE help2man)
find_program(GZIP_EXECUTABLE gzip)
find_program(AWK_EXECUTABLE awk)
function(berth_man_page target name summary)
  set(page ${CMAKE_BINARY_DIR}/man/${name}.1)
  set(wrapper ${CMAKE_BINARY_DIR}/man/bin/${name})
  file(GENERATE OUTPUT ${wrapper}
    CONTENT "#!/bin/sh\n\"$<TARGET_FILE:${target}>\" \"$@\" | ${AWK_EXECUTABLE} -f \"${PROJECT_SOURCE_DIR}/cmake/help_for_man.awk\"\n"
    FILE_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE)
  add_custom_command(OUTPUT ${page}.gz
    COMMAND ${HELP2MAN_EXECUTABLE} --no-info --section=1 --name=${summary}
            --source=berth --output=${page} ${wrapper}
    COMMAND ${GZIP_EXECUTABLE} -9nf ${page}
    DEPENDS ${target} ${PROJECT_SOURCE_DIR}/cmake/help_for_man.awk
    COMMENT "help2man: ${name}.1"
    VERBATIM)
  add_custom_target(man_${target} ALL DEPENDS ${page}.gz)
  install(FILES ${page}.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
endfunction()
if(HELP2MAN_EXECUTABLE AND GZIP_EXECUTABLE AND AWK_EXECUTABLE)
  berth_man_page(berth-node berth-node "TLS listener node that heartbeats to a berth balancer")
  berth_man_page(berth-balancer berth-balancer "berth balancer: node heartbeats in, HTTP/JSON lookups out")
  berth_man_page(berth_cli berth "berth client: pick a node, ping it, send messages, tail journals")
else()
  message(STATUS "help2man not found: no man pages (apt-get install help2man, then reconfigure)")
endif()

# --- systemd units, account, settings --------------------------------------------
# The units name /usr/bin; at install time that becomes the prefix's bindir,
# so `cmake --install --prefix /opt/berth` gets units that start its binaries.
foreach(unit berth-node.service berth-node@.service berth-balancer.service)
  install(CODE "
    file(READ \"${BERTH_SYSTEMD_SRC}/${unit}\" unit_text)
    string(REPLACE \"=/usr/bin/\" \"=\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR}/\"
           unit_text \"\${unit_text}\")
    file(WRITE \"${CMAKE_BINARY_DIR}/systemd/${unit}\" \"\${unit_text}\")
    file(INSTALL \"${CMAKE_BINARY_DIR}/systemd/${unit}\"
         DESTINATION \"\${CMAKE_INSTALL_PREFIX}/lib/systemd/system\")")
endforeach()
install(FILES ${BERTH_SYSTEMD_SRC}/berth.sysusers DESTINATION lib/sysusers.d RENAME berth.conf)
install(FILES ${BERTH_SYSTEMD_SRC}/node.env ${BERTH_SYSTEMD_SRC}/balancer.env
  DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)
# The same files as /etc/berth conffiles, in the package only: component
# conffiles is left out of a plain `cmake --install`, so installing into a
# prefix never writes the host's /etc. They may come to hold secrets (admin
# token, NATS password) and only systemd reads them: root-only.
install(FILES ${BERTH_SYSTEMD_SRC}/node.env ${BERTH_SYSTEMD_SRC}/balancer.env
  DESTINATION /etc/berth PERMISSIONS OWNER_READ OWNER_WRITE
  COMPONENT conffiles EXCLUDE_FROM_ALL)

# --- the Debian package ---------------------------------------------------------
# cpack -G DEB --config <build>/CPackConfig.cmake: one package, berth, with
# the programs, libberth (library, header, berth.pc), units and man pages.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME berth)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR berth)
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
  "TLS listener nodes, a heartbeat balancer and the libberth client")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
# The default project entry (every component but conffiles) plus conffiles.
set(CPACK_INSTALL_CMAKE_PROJECTS
  "${CMAKE_BINARY_DIR};${PROJECT_NAME};ALL;/"
  "${CMAKE_BINARY_DIR};${PROJECT_NAME};conffiles;/")
set(BERTH_PACKAGE_MAINTAINER "berth maintainers <maintainers@berth.invalid>"
  CACHE STRING "Maintainer field of the Debian package")
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${BERTH_PACKAGE_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION "${CPACK_PACKAGE_DESCRIPTION_SUMMARY}
berth-node accepts TLS sessions and journals every message before its ACK;
berth-balancer tracks the nodes by their CurveZMQ heartbeats and answers
HTTP lookups; libberth and the berth CLI pick a node and send with failover.
systemd units (berth-node, berth-node@, berth-balancer) run them as user
berth, configured in /etc/berth/*.env.")
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
# Depends from what the binaries and libberth.so link (dpkg-shlibdeps).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_SUGGESTS nats-server)
# Our own maintainer scripts replace the ones CPack would write with an
# ldconfig call: the ldconfig trigger stands in for it. conffiles keeps an
# edited /etc/berth/*.env across upgrades.
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
  ${BERTH_SYSTEMD_SRC}/debian/conffiles
  ${BERTH_SYSTEMD_SRC}/debian/triggers
  ${BERTH_SYSTEMD_SRC}/debian/postinst
  ${BERTH_SYSTEMD_SRC}/debian/prerm
  ${BERTH_SYSTEMD_SRC}/debian/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
