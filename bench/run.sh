#!/bin/sh
# Runs every benchmark scenario.
#
#   bench/run.sh [build-dir]        (default: build/ next to bench/)
#
# Environment: FORK_N (default 2000), LATENESS_N (default 200), METHOD_N
# (default 500 at caller RSS 0), METHOD_N_256M (100 at 256 MiB), METHOD_N_1G
# (40 at 1 GiB), CONTAIN_N (1000), CONTAIN_SPARSE_N (20, each 50 ms after the last) and METHOD_N_4G (12 at 4 GiB, where each fork takes tens of
# milliseconds); PAYLOAD_N (50 runs per size, fewer at large sizes) and
# PAYLOAD_MAX_MIB (256); ASYNC_N (2000 calls per series) and ASYNC_SPAWN_N
# (400); LIBDW_LINK_N (2000); TRACE_COST_N (100); CALLER_COST_N (5) and CALLER_COST_MIB (1024); PEERS_N and
# PEERS_DEADLINE_N (see peers.sh); POOL_N (2000); PINGPONG_N (3000); HTTP_* (see http.sh).
# SKIP_PAYLOAD=1, SKIP_ASYNC=1, SKIP_CALLER_COST=1, SKIP_PEERS=1,
# SKIP_HTTP=1 and SKIP_PLOTS=1 leave a part out (the
# whole run takes about 5 minutes on a 2-vCPU VM).  BENCH_COMMIT names the
# commit in summary.md when bench/ is not in a git checkout (git archive).
# Appends one row per series to bench/results/<scenario>.csv, keeps each
# scenario's output in bench/results/<scenario>.log, draws the plots
# (plot.sh), and rewrites bench/results/summary.md with tables of this run.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build}
results=$here/results
mkdir -p "$results"
stamp=$results/.run-start
touch "$stamp"
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
run method_latency method_latency_rss256 "${METHOD_N_256M:-100}" 256
run method_latency method_latency_rss1024 "${METHOD_N_1G:-40}" 1024
run method_latency method_latency_rss4096 "${METHOD_N_4G:-12}" 4096
run warm_latency warm_latency "${WARM_N:-1000}"
run containment containment "${CONTAIN_N:-1000}" "${CONTAIN_SPARSE_N:-20}"
# Built only where libdw-dev is installed.
[ ! -x "$build/bench/bench_libdw_link" ] ||
    run libdw_link libdw_link "${LIBDW_LINK_N:-2000}"
[ ! -x "$build/bench/bench_trace_cost" ] ||
    run trace_cost trace_cost "${TRACE_COST_N:-100}"
run pool_latency pool_latency "${POOL_N:-2000}"
run fds_in_flight fds_in_flight 100
run pingpong pingpong "${PINGPONG_N:-3000}"
[ "${SKIP_PAYLOAD:-0}" = 1 ] ||
    run payload payload "${PAYLOAD_N:-50}" "${PAYLOAD_MAX_MIB:-256}"
[ "${SKIP_ASYNC:-0}" = 1 ] ||
    run async_throughput async_throughput "${ASYNC_N:-2000}" "${ASYNC_SPAWN_N:-400}"
[ "${SKIP_CALLER_COST:-0}" = 1 ] ||
    run caller_cost caller_cost "${CALLER_COST_N:-5}" "${CALLER_COST_MIB:-1024}"
[ "${SKIP_PEERS:-0}" = 1 ] || sh "$here/peers.sh" "$build"
[ "${SKIP_HTTP:-0}" = 1 ] || sh "$here/http.sh" "$build" | tee "$results/http.log"
[ "${SKIP_PLOTS:-0}" = 1 ] || sh "$here/plot.sh" "$results"

# Logs of this run only: a part left out keeps no stale log in the summary.
logs() {
    for f in "$@"; do
        [ -f "$results/$f" ] && [ "$results/$f" -nt "$stamp" ] && echo "$results/$f"
    done
    return 0
}

commit=${BENCH_COMMIT:-$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)}
{
    echo "# timebox benchmarks"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit, $(uname -sr)," \
        "$(nproc) CPUs. Times in microseconds; x floor = ratio to the floor" \
        "measured in the same run."
    echo
    echo "| scenario | series | n | median | p99 | median x floor | p99 x floor |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    cat $(logs fork_latency.log deadline_lateness.log method_latency_rss0.log \
        method_latency_rss256.log method_latency_rss1024.log method_latency_rss4096.log \
        warm_latency.log containment.log libdw_link.log trace_cost.log pool_latency.log \
        caller_cost.log async_throughput.log) |
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
    if [ -n "$(logs payload.log)" ]; then
        echo
        echo "Payload throughput, MB/s (10^6 bytes / median time), x = vs the best of the three"
        echo "floors at that size (pipe, 1 MiB pipe, memfd):"
        echo
        awk '/^RESULT scenario=payload_mbps / {
            delete f
            for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
            if (!(f["name"] in cs)) { cs[f["name"]] = 1; cols[++nc] = f["name"] }
            if (!(f["size"] in ss)) { ss[f["size"]] = 1; sizes[++ns] = f["size"] }
            v[f["size"], f["name"]] = f["mb_s"]; x[f["size"], f["name"]] = f["x_best"]
        }
        END {
            printf "| size |"; for (i = 1; i <= nc; i++) printf " %s |", cols[i]; printf "\n"
            printf "|---:|"; for (i = 1; i <= nc; i++) printf "---:|"; printf "\n"
            for (j = 1; j <= ns; j++) {
                b = sizes[j]
                lab = (b >= 1048576) ? b / 1048576 " MiB" : b / 1024 " KiB"
                printf "| %s |", lab
                for (i = 1; i <= nc; i++) {
                    if (cols[i] ~ /_floor$/)
                        printf " %.0f |", v[b, cols[i]]
                    else
                        printf " %.0f (%.2fx) |", v[b, cols[i]], x[b, cols[i]]
                }
                printf "\n"
            }
        }' "$results/payload.log"
    fi
    if [ -n "$(logs async_throughput.log)" ]; then
        echo
        echo "Async throughput, calls per second on one libuv loop, x = vs the raw fork floor"
        echo "at the same concurrency:"
        echo
        echo "| in flight | series | calls | failed | calls/s | x floor |"
        echo "|---:|---|---:|---:|---:|---:|"
        awk '/^RESULT scenario=async_throughput_rate / {
            delete f
            for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
            printf "| %s | %s | %s | %s | %.0f | %.2f |\n", f["in_flight"], f["name"],
                f["calls"], f["failed"], f["calls_per_s"], f["x_floor"]
        }' "$results/async_throughput.log"
    fi
    if [ -n "$(logs http.log)" ]; then
        echo
        echo "HTTP host (bench/http.sh: wrk, 127.0.0.1, one deadlined call per request, one in"
        echo "20 hanging and cut at its deadline); latencies in milliseconds:"
        echo
        echo "| method | req/s | p50 | p90 | p99 | requests | ok | timeout | of them quick calls | other | children left |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        awk '/^RESULT scenario=http / {
            delete f
            for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", f["name"],
                f["req_s"], f["p50_ms"], f["p90_ms"], f["p99_ms"], f["requests"], f["ok"],
                f["timeout"], f["late"], f["other"], f["children_left"]
        }' "$results/http.log"
    fi
    if [ -n "$(logs peers.log)" ]; then
        echo
        echo "Peers, one trivial call (timeout 10 s); x tbx_<m> = median / timebox's median"
        echo "by that method in the same run:"
        echo
        echo "| series | n | median | p99 | x tbx_fork | x tbx_forkserver | x tbx_spawn | x tbx_pool |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
        awk '/^RESULT scenario=peers / {
            delete f
            for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
            printf "| %s | %s | %.1f | %.1f | %s | %s | %s | %s |\n", f["name"], f["n"],
                f["median_us"], f["p99_us"], f["x_tbx_fork"], f["x_tbx_forkserver"],
                f["x_tbx_spawn"], f["x_tbx_pool"]
        }' "$results/peers.log"
        echo
        echo "Peers, deadline 0.1 s on a function that never returns (hang) or ignores"
        echo "SIGTERM (ignore): seconds until the call returns (notes in peers.log):"
        echo
        echo "| series | n | returns after (s) |"
        echo "|---|---:|---:|"
        awk '/^RESULT scenario=peers_deadline / {
            delete f
            for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
            printf "| %s | %s | %.3f |\n", f["name"], f["n"], f["return_s"]
        }' "$results/peers.log"
    fi
} >"$results/summary.md"
echo "== wrote $results/summary.md"
