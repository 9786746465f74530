#!/usr/bin/env bash
# Runs each libFuzzer target for a while, starting from the seed corpus in
# fuzz/corpus/<target>/ (read-only: what a run finds goes to a scratch copy).
#
#   fuzz/run.sh [build-dir] [seconds per target]     defaults: build-fuzz, 60
#
# Exits non-zero if a target crashes, leaks or trips a sanitizer; the input
# that did it is left as crash-*/leak-*/timeout-* in the scratch directory,
# whose path is printed.  Build the targets first (see fuzz/CMakeLists.txt).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build=${1:-build-fuzz}
secs=${2:-60}
targets=(frames request control)
work=$(mktemp -d "${TMPDIR:-/tmp}/timebox-fuzz.XXXXXX")
echo "fuzz: ${secs}s per target, scratch in $work"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=()
for t in "${targets[@]}"; do
    exe=$build/fuzz/fuzz_$t
    [[ -x $exe ]] || { echo "fuzz: $exe not built" >&2; exit 2; }
    mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
    cp "$here/corpus/$t"/* "$work/$t/corpus/"
    echo "---- fuzz_$t"
    if "$exe" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$work/$t/artifacts/" \
        "$work/$t/corpus" >"$work/$t/log" 2>&1; then
        grep -E "^#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb" "$work/$t/log" || true
        echo "fuzz_$t: ok ($(ls "$work/$t/corpus" | wc -l) inputs in its corpus)"
    else
        tail -n 60 "$work/$t/log"
        echo "fuzz_$t: FAILED; reproducer(s):" $(ls "$work/$t/artifacts") >&2
        failed+=("$t")
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz: failed: ${failed[*]} (scratch kept in $work)" >&2
    exit 1
fi
rm -rf "$work"
