#!/usr/bin/env bash
# valgrind memcheck over tests/memcheck.c: every outcome of a call, by every
# method, blocking and async.  Fails on any memory error or definite leak in
# the caller.  Fork children run under valgrind too (a fork does not leave
# it) but are silent: they _exit by design, with the caller's memory still
# mapped.  Spawned workers and the forkserver are fresh programs that run
# natively (no --trace-children): they are the same library code, covered by
# the ASan suites.
#
#   tests/valgrind.sh [build-dir]      default: build
set -euo pipefail
build=${1:-build}
exe=$build/tests/test_memcheck
[[ -x $exe ]] || { echo "valgrind.sh: $exe not built" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind not installed" >&2; exit 2; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
        --errors-for-leak-kinds=definite --error-exitcode=99 --child-silent-after-fork=yes \
        --trace-children=no --log-file="$log" "$exe"; then
    cat "$log"
    echo "valgrind.sh: memcheck failed" >&2
    exit 1
fi
grep -E "ERROR SUMMARY|definitely lost|in use at exit" "$log" || true
