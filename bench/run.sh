#!/bin/sh
# Runs every benchmark scenario.
#
#   bench/run.sh [build-dir]        (default: build/ next to bench/)
#
# Environment: FORK_N (default 2000), LATENESS_N (default 200), METHOD_N
# (default 500 at caller RSS 0), METHOD_N_1G (40 at 1 GiB) and METHOD_N_4G
# (12 at 4 GiB, where each fork takes tens of milliseconds).
# Appends one row per series to bench/results/<scenario>.csv, keeps each
# scenario's output in bench/results/<scenario>.log, and rewrites
# bench/results/summary.md with a table of this run.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build}
results=$here/results
mkdir -p "$results"
BENCH_RESULTS_DIR=$results
export BENCH_RESULTS_DIR

run() {
    scenario=$1
    log=$2
    shift 2
    exe=$build/bench/bench_$scenario
    if [ ! -x "$exe" ]; then
        echo "run.sh: $exe not found; build first (cmake --build build)" >&2
        exit 1
    fi
    echo "== $scenario $*"
    "$exe" "$@" | tee "$results/$log.log"
}

run fork_latency fork_latency "${FORK_N:-2000}"
run deadline_lateness deadline_lateness "${LATENESS_N:-200}"
run method_latency method_latency_rss0 "${METHOD_N:-500}" 0
run method_latency method_latency_rss1024 "${METHOD_N_1G:-40}" 1024
run method_latency method_latency_rss4096 "${METHOD_N_4G:-12}" 4096

commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)
{
    echo "# timebox benchmarks"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit, $(uname -sr)," \
        "$(nproc) CPUs. Times in microseconds; x floor = ratio to the floor" \
        "measured in the same run."
    echo
    echo "| scenario | series | n | median | p99 | median x floor | p99 x floor |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    cat "$results"/fork_latency.log "$results"/deadline_lateness.log \
        "$results"/method_latency_rss*.log |
        awk '/^RESULT / {
            delete f
            for (i = 2; i <= NF; i++) {
                split($i, kv, "=")
                f[kv[1]] = kv[2]
            }
            if (!("median_us" in f))
                next
            mx = ("median_x" in f) ? sprintf("%.2f", f["median_x"]) : "-"
            px = ("p99_x" in f) ? sprintf("%.2f", f["p99_x"]) : "-"
            printf "| %s | %s | %s | %.1f | %.1f | %s | %s |\n", f["scenario"],
                f["name"], f["n"], f["median_us"], f["p99_us"], mx, px
        }'
} >"$results/summary.md"
echo "== wrote $results/summary.md"
