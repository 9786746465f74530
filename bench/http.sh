#!/bin/sh
# Drives bench_http_host with wrk: one deadlined call per HTTP request.
#
#   bench/http.sh [build-dir]
#
# Environment: HTTP_METHODS (default "none fork forkserver pool": none is
# the floor, the same server answering with no call; spawn and auto work too), HTTP_SECONDS (default 10 per method), HTTP_CONNECTIONS (32),
# HTTP_THREADS (wrk's, default 2; the pool keeps HTTP_CONNECTIONS processes), HTTP_HANG_EVERY (20: one call in 20
# never returns and is cut at its deadline), HTTP_TIMEOUT_MS (50).
# 127.0.0.1 only.  For each method: req/s and latency percentiles from wrk,
# outcome counts from the host, and whether any child was left (the host
# exits 1 if one was, or if a call ended otherwise than its kind says).
# Prints one RESULT line per method (scenario=http) and keeps each run's
# output in bench/results/http_<method>.log when bench/results exists.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build}
host=$build/bench/bench_http_host
methods=${HTTP_METHODS:-none fork forkserver pool}
secs=${HTTP_SECONDS:-10}
conns=${HTTP_CONNECTIONS:-32}
threads=${HTTP_THREADS:-2}
hang=${HTTP_HANG_EVERY:-20}
tmo=${HTTP_TIMEOUT_MS:-50}
results=${BENCH_RESULTS_DIR:-$here/results}

command -v wrk >/dev/null || { echo "http.sh: wrk not installed (apt-get install wrk); skipped"; exit 0; }
[ -x "$host" ] || { echo "http.sh: $host not found; build first" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for m in $methods; do
    # A free port: ask the kernel for one through a short-lived listener.
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$host" "$m" "$port" "$hang" "$tmo" "$conns" >"$tmp/host.out" 2>&1 &
    hpid=$!
    for _ in $(seq 50); do
        grep -q "^http_host:" "$tmp/host.out" && break
        sleep 0.1
    done
    if ! kill -0 "$hpid" 2>/dev/null; then
        cat "$tmp/host.out"
        echo "http.sh: $m: the host did not start" >&2
        status=1
        continue
    fi
    wrk -t"$threads" -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$port/" >"$tmp/wrk.out" 2>&1 || true
    kill -TERM "$hpid"
    hrc=0
    wait "$hpid" || hrc=$?
    [ -d "$results" ] && cat "$tmp/wrk.out" "$tmp/host.out" >"$results/http_$m.log"
    echo "== http $m ($conns connections, ${secs} s, 1 call in $hang hangs, deadline $tmo ms, load $(cut -d' ' -f1-3 /proc/loadavg))"
    cat "$tmp/wrk.out"
    grep '^RESULT' "$tmp/host.out" || cat "$tmp/host.out"
    [ "$hrc" = 0 ] || { echo "http.sh: $m: the host reported a wrong outcome or a child left (exit $hrc)" >&2; status=1; }
    # wrk prints latencies with units (us, ms, s): all in milliseconds here.
    awk -v m="$m" -v hrc="$hrc" '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
            return v + 0
        }
        /^Requests\/sec:/ { rps = $2 }
        /^ +50%/ { p50 = ms($2) } /^ +75%/ { p75 = ms($2) }
        /^ +90%/ { p90 = ms($2) } /^ +99%/ { p99 = ms($2) }
        /^RESULT scenario=http_host/ {
            for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        }
        END {
            printf "RESULT scenario=http name=%s req_s=%.0f p50_ms=%.2f p75_ms=%.2f p90_ms=%.2f " \
                "p99_ms=%.2f requests=%s ok=%s timeout=%s late=%s other=%s children_left=%s " \
                "host_rc=%s\n", m, rps, p50, p75, p90, p99, f["requests"], f["ok"], f["timeout"],
                f["late"], f["other"], f["children_left"], hrc
        }' "$tmp/wrk.out" "$tmp/host.out"
done
exit $status
