#!/usr/bin/env bash
# test_deb: builds the Debian package from this build (cpack -G DEB), checks
# what it holds (dpkg-deb -c/-I), unpacks it into a scratch root (dpkg -x)
# and uses it from there: each program's --version, the man pages, the
# units through systemd-analyze verify and security, the berth account
# through systemd-sysusers --root, the maintainer scripts against stub
# commands, and shared/examples/send_hello.c built with the packaged
# berth.pc. Nothing is installed on the host. Exit 77: a tool is missing.
#
#   test_deb.sh BUILD_DIR SOURCE_DIR CPACK
set -euo pipefail
build=$1 src=$2 cpack=$3

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*" >&2; exit 1; }
for tool in dpkg-deb dpkg dpkg-shlibdeps systemd-analyze systemd-sysusers cc pkg-config groff; do
  command -v "$tool" >/dev/null ||
    skip "$tool is missing (deploy/install-deps.sh installs dpkg-dev, systemd, groff-base)"
done
grep -q '^HELP2MAN_EXECUTABLE:FILEPATH=.*-NOTFOUND' "$build/CMakeCache.txt" &&
  skip "help2man was missing when $build was configured: no man pages (apt-get install help2man, reconfigure)"
version=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$build/CMakeCache.txt")
[ -n "$version" ] || fail "no CMAKE_PROJECT_VERSION in $build/CMakeCache.txt"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/berth-deb.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# --- build the package -------------------------------------------------------
"$cpack" -G DEB --config "$build/CPackConfig.cmake" -B "$tmp/pkg" >"$tmp/cpack.log" 2>&1 ||
  { cat "$tmp/cpack.log" >&2; fail "cpack -G DEB failed"; }
deb=$tmp/pkg/berth_${version}_$(dpkg --print-architecture).deb
[ -f "$deb" ] || { ls "$tmp/pkg" >&2; fail "no $(basename "$deb")"; }
echo "built $(basename "$deb") ($(stat -c %s "$deb") bytes)"

# --- what it holds --------------------------------------------------------------
dpkg-deb -c "$deb" | awk '{print $1, $6}' | sed 's| \./| /|' >"$tmp/contents"
want_path() { # want_path MODE-REGEX PATH-REGEX WHAT
  grep -Eq "^$1 $2\$" "$tmp/contents" || fail "package lacks $3 ($2)"
}
for p in berth berth-node berth-balancer; do
  want_path '-rwxr-xr-x' "/usr/bin/$p" "the $p program"
  want_path '-rw-r--r--' "/usr/share/man/man1/$p\\.1\\.gz" "the $p(1) man page"
done
for u in berth-node.service 'berth-node@.service' berth-balancer.service; do
  want_path '-rw-r--r--' "/usr/lib/systemd/system/$u" "the $u unit"
done
want_path '-rw-r--r--' '/usr/lib/sysusers.d/berth\.conf' "the berth account (sysusers.d)"
want_path 'l[rwx-]+' '/usr/lib/([^/]+/)?libberth\.so\.0' "libberth's soname link"
want_path '-rw-r--r--' "/usr/lib/([^/]+/)?libberth\\.so\\.$version" "libberth"
want_path '-rw-r--r--' '/usr/include/berth/berth\.h' "the public header"
want_path '-rw-r--r--' '/usr/lib/([^/]+/)?pkgconfig/berth\.pc' "berth.pc"
# The example settings become root-only conffiles (they may hold secrets).
for f in node.env balancer.env; do
  want_path '-rw-------' "/etc/berth/$f" "/etc/berth/$f, root-only"
  want_path '-rw-r--r--' "/usr/share/doc/berth/examples/$f" "the $f example"
done
echo "contents: $(wc -l <"$tmp/contents") entries, all expected ones present"

dpkg-deb -f "$deb" Package Version Depends >"$tmp/control"
grep -qx 'Package: berth' "$tmp/control" || fail "Package is not berth: $(cat "$tmp/control")"
grep -qx "Version: $version" "$tmp/control" || fail "Version is not $version"
depends=$(sed -n 's/^Depends: //p' "$tmp/control")
for lib in libssl3 libzmq5 libjansson4 libmicrohttpd12 libcurl4 libnats3.4; do
  [[ ", $depends," == *", $lib "* ]] || fail "Depends lacks $lib: $depends"
done
echo "Depends: $depends"
mkdir "$tmp/control.d"
dpkg-deb -e "$deb" "$tmp/control.d"
diff <(sort "$tmp/control.d/conffiles") <(printf '/etc/berth/balancer.env\n/etc/berth/node.env\n') >&2 ||
  fail "conffiles is not the two /etc/berth/*.env"
grep -qx 'activate-noawait ldconfig' "$tmp/control.d/triggers" || fail "no ldconfig trigger"
for s in postinst prerm postrm; do
  [ -x "$tmp/control.d/$s" ] || fail "no executable $s"
  sh -n "$tmp/control.d/$s" || fail "$s: shell syntax error"
done

# --- unpacked into a scratch root ----------------------------------------------
root=$tmp/root
dpkg -x "$deb" "$root"
libdir=$(dirname "$(find "$root/usr/lib" -name 'libberth.so.0' | head -1)")
for p in berth berth-node berth-balancer; do
  out=$(LD_LIBRARY_PATH=$libdir "$root/usr/bin/$p" --version)
  [ "$out" = "$p $version" ] || fail "$p --version printed '$out', want '$p $version'"
  echo "$out"
done
for p in berth berth-node berth-balancer; do
  page=$root/usr/share/man/man1/$p.1.gz
  warnings=$(zcat "$page" | groff -man -Tutf8 -ww -z 2>&1)
  [ -z "$warnings" ] || fail "$p.1: groff warnings: $warnings"
  zcat "$page" | grep -qi "^\\.TH \"\\?$p\"\\? \"\\?1" || fail "$p.1: no .TH $p 1 line"
done
zcat "$root/usr/share/man/man1/berth-node.1.gz" | grep -q 'BERTH_DRAIN_TIMEOUT' ||
  fail "berth-node.1 lacks the settings table (BERTH_DRAIN_TIMEOUT)"
echo "man pages: berth.1 berth-node.1 berth-balancer.1 format without warnings"

# Every BERTH_* setting the example files name (set or commented out) is
# one the program knows.
for pair in node.env:berth-node balancer.env:berth-balancer; do
  f=${pair%%:*} p=${pair#*:}
  help=$(LD_LIBRARY_PATH=$libdir "$root/usr/bin/$p" --help)
  names=$(sed -En 's/^#?(BERTH_[A-Z0-9_]+)=.*/\1/p' "$root/etc/berth/$f")
  [ -n "$names" ] || fail "$f names no BERTH_* setting"
  for n in $names; do
    grep -qw -- "$n" <<<"$help" || fail "$f: $n is not a $p setting"
  done
  echo "$f: $(wc -w <<<"$names") settings, all known to $p"
done

# --- the units ---------------------------------------------------------------------
# systemd-analyze verify wants each ExecStart binary at its path: a scratch
# copy of the installed units points into the scratch root, and MANPATH
# lets it find the packaged man pages Documentation= names.
units=$tmp/units
mkdir "$units"
for u in "$root"/usr/lib/systemd/system/*.service; do
  grep -q '^ExecStart=/usr/bin/berth' "$u" || fail "$(basename "$u"): ExecStart is not /usr/bin/berth-*"
  sed "s|^ExecStart=/usr/bin/|ExecStart=$root/usr/bin/|" "$u" >"$units/$(basename "$u")"
done
(
  cd "$units"
  out=$(MANPATH=$root/usr/share/man systemd-analyze verify \
    ./berth-node.service ./berth-balancer.service ./berth-node@test.service 2>&1) ||
    fail "systemd-analyze verify: $out"
  # verify reports unknown keys and bad values as warnings, with exit 0.
  [ -z "$out" ] || fail "systemd-analyze verify warned: $out"
  echo "systemd-analyze verify: berth-node.service berth-balancer.service berth-node@test.service clean"
  for u in berth-node.service berth-balancer.service berth-node@test.service; do
    # --threshold is in tenths: fail above an exposure of 2.5 ("OK" is below 4).
    out=$(systemd-analyze security --offline=yes --threshold=25 "./$u" 2>&1) ||
      fail "$u: exposure above 2.5: $(tail -1 <<<"$out")"
    grep -o 'exposure level.*' <<<"$out"
  done
)

# --- the berth account -----------------------------------------------------------
mkdir -p "$tmp/sysroot/etc"
systemd-sysusers --root="$tmp/sysroot" "$root/usr/lib/sysusers.d/berth.conf" >/dev/null 2>&1 ||
  fail "systemd-sysusers rejected berth.conf"
grep -Eq '^berth:x:[0-9]+:[0-9]+:[^:]*:/var/lib/berth:/usr/sbin/nologin$' "$tmp/sysroot/etc/passwd" ||
  fail "sysusers made no berth account: $(cat "$tmp/sysroot/etc/passwd")"
grep -q '^berth:' "$tmp/sysroot/etc/group" || fail "sysusers made no berth group"
grep -h '^User=berth$' "$units"/*.service | wc -l | grep -qx 3 || fail "a unit does not run as User=berth"
echo "sysusers.d: $(grep '^berth:' "$tmp/sysroot/etc/passwd")"

# postinst against stub commands (PATH holds only the stubs): systemd-sysusers
# with the packaged file when it exists, useradd when it does not.
stubs=$tmp/stubs
mkdir "$stubs"
for c in systemd-sysusers useradd systemctl; do
  printf '#!/bin/sh\necho %s "$@" >>%s/calls\n' "$c" "$tmp" >"$stubs/$c"
done
printf '#!/bin/sh\nexit 2\n' >"$stubs/getent"
chmod +x "$stubs"/*
PATH=$stubs /bin/sh "$tmp/control.d/postinst" configure
grep -qx 'systemd-sysusers /usr/lib/sysusers.d/berth.conf' "$tmp/calls" ||
  fail "postinst did not run systemd-sysusers on the packaged file: $(cat "$tmp/calls")"
rm "$stubs/systemd-sysusers" "$tmp/calls"
PATH=$stubs /bin/sh "$tmp/control.d/postinst" configure
grep -Eq '^useradd --system .*--home-dir /var/lib/berth .*berth$' "$tmp/calls" ||
  fail "postinst without systemd-sysusers did not useradd berth: $(cat "$tmp/calls" 2>/dev/null)"
echo "postinst: systemd-sysusers, else useradd"

# --- a libberth program built against the package -----------------------------------
export PKG_CONFIG_PATH=$libdir/pkgconfig
flags=$(pkg-config --cflags --libs berth)
echo "pkg-config: $flags"
# berth.pc finds its prefix from its own place: the paths lead into the root.
[[ $flags == *"-I$root/"* && $flags == *"-L$root/"* ]] || fail "berth.pc does not point into the scratch root"
cc -std=c11 -Wall -Wextra -Werror "$src/shared/examples/send_hello.c" $flags -o "$tmp/send_hello"
LD_LIBRARY_PATH=$libdir ldd "$tmp/send_hello" | grep -q "libberth.so.0 => $libdir/" ||
  fail "send_hello does not load the packaged libberth"
set +e
out=$(LD_LIBRARY_PATH=$libdir "$tmp/send_hello" --balancer http://127.0.0.1:1 hello 2>&1)
rc=$?
set -e
[ "$rc" = 1 ] || fail "send_hello: want exit 1 (no balancer), got $rc: $out"
grep -q "no balancer answered" <<<"$out" || fail "send_hello: missing the library's error text: $out"
echo "$out"
echo ok
