#!/usr/bin/env bash
# test_install: `cmake --install` into a temp prefix, then compile and link
# shared/examples/send_hello.c with `pkg-config --cflags --libs berth` and
# run it against a balancer that is not there: it must fail cleanly with
# the library's error text.
set -euo pipefail
build=$1 src=$2
prefix=$(mktemp -d "${TMPDIR:-/tmp}/berth-install.XXXXXX")
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(find "$prefix" -name berth.pc -printf '%h\n' | head -1)
[ -n "$libdir" ] || { echo "berth.pc not installed" >&2; exit 1; }
export PKG_CONFIG_PATH=$libdir
flags=$(pkg-config --cflags --libs berth)
echo "pkg-config: $flags"
cc -std=c11 -Wall -Wextra -Werror "$src/shared/examples/send_hello.c" $flags -o "$prefix/send_hello"
# Only the public API may be exported.
if nm -D --defined-only "$(dirname "$libdir")/libberth.so" | awk '{print $3}' | grep -v '^berth_' | grep -q .; then
  echo "libberth.so exports symbols outside berth_*:" >&2
  nm -D --defined-only "$(dirname "$libdir")/libberth.so" | grep -v ' berth_' >&2
  exit 1
fi
set +e
out=$(LD_LIBRARY_PATH="$(dirname "$libdir")" "$prefix/send_hello" --balancer http://127.0.0.1:1 hello 2>&1)
rc=$?
set -e
echo "$out"
[ "$rc" = 1 ] || { echo "want exit 1, got $rc" >&2; exit 1; }
echo "$out" | grep -q "no balancer answered" || { echo "missing the error text" >&2; exit 1; }
echo ok
