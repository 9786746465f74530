#!/bin/sh
# Draws the README's plots from the logs bench/run.sh wrote.
#
#   bench/plot.sh [results-dir]      (default: bench/results)
#
# latency_vs_rss.png      median time of a trivial call per start method and
#                         its floors, against the caller's RSS, from
#                         method_latency_rss<MiB>.log (log scale)
# payload_throughput.png  MB/s of args and results per method and of the raw
#                         pipe and memfd, against the payload size, from payload.log
# Needs gnuplot (Debian: apt-get install gnuplot-nox); says so and exits 0
# without it.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
results=${1:-$here/results}
if ! command -v gnuplot >/dev/null 2>&1; then
    echo "plot.sh: skipped: gnuplot not installed (apt-get install gnuplot-nox)"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- latency vs caller RSS: one row per RSS, one column per series ---
series="fork_floor tbx_fork spawn_floor tbx_spawn tbx_forkserver"
found=0
for log in "$results"/method_latency_rss*.log; do
    [ -f "$log" ] && found=1
done
for log in "$results"/method_latency_rss*.log; do
    [ -f "$log" ] || continue
    awk -v series="$series" '/^RESULT scenario=method_latency_rss/ && / median_us=/ {
            delete f
            for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
            rss = f["scenario"]; sub(/method_latency_rss/, "", rss)
            med[f["name"]] = f["median_us"] / 1000; p99[f["name"]] = f["p99_us"] / 1000
        }
        END {
            n = split(series, s, " ")
            printf "%s", rss
            for (i = 1; i <= n; i++) printf " %s %s", med[s[i]], p99[s[i]]
            printf "\n"
        }' "$log"
done | sort -n >"$tmp/rss.dat"
if [ "$found" = 1 ]; then
    gnuplot <<GP
set terminal pngcairo size 900,560 font ",11"
set output "$results/latency_vs_rss.png"
set title "Trivial call latency vs caller RSS (median; bars: p99)"
set xlabel "caller RSS"
set ylabel "milliseconds (log scale)"
set logscale y
set grid ytics mytics xtics
set key bottom right
set xtics ("0" 0, "256 MiB" 1, "1 GiB" 2, "4 GiB" 3)
set xrange [-0.3:3.3]
lab(x) = x == 0 ? 0 : x == 256 ? 1 : x == 1024 ? 2 : x == 4096 ? 3 : log(x/256)/log(4) + 1
plot "$tmp/rss.dat" u (lab(\$1)-0.06):2:2:3 w yerrorlines lw 2 pt 7 t "fork floor", \
     "" u (lab(\$1)-0.03):4:4:5 w yerrorlines lw 2 pt 5 t "tbx fork", \
     "" u (lab(\$1)):6:6:7 w yerrorlines lw 2 pt 9 dt 2 t "spawn floor", \
     "" u (lab(\$1)+0.03):8:8:9 w yerrorlines lw 2 pt 11 t "tbx spawn", \
     "" u (lab(\$1)+0.06):10:10:11 w yerrorlines lw 2 pt 13 t "tbx forkserver"
GP
    echo "plot.sh: wrote $results/latency_vs_rss.png"
else
    echo "plot.sh: no method_latency_rss*.log in $results"
fi

# --- payload throughput: one row per size, one column per series ---
if [ -f "$results/payload.log" ]; then
    pseries="pipe_floor pipe1m_floor memfd_floor args_fork args_spawn args_forkserver result_fork result_spawn result_forkserver"
    awk -v series="$pseries" '/^RESULT scenario=payload_mbps / {
            delete f
            for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
            v[f["size"], f["name"]] = f["mb_s"]
            if (!(f["size"] in seen)) { seen[f["size"]] = 1; sizes[++ns] = f["size"] }
        }
        END {
            n = split(series, s, " ")
            for (j = 1; j <= ns; j++) {
                printf "%s", sizes[j]
                for (i = 1; i <= n; i++) printf " %s", v[sizes[j], s[i]]
                printf "\n"
            }
        }' "$results/payload.log" >"$tmp/payload.dat"
    gnuplot <<GP
set terminal pngcairo size 900,560 font ",11"
set output "$results/payload_throughput.png"
set title "Payload throughput per start method vs raw pipe and memfd (MB/s = 10^6 B / median time)"
set xlabel "payload size"
set ylabel "MB/s (log scale)"
set logscale xy
set grid
set key bottom right
set xtics ("1K" 1024, "4K" 4096, "16K" 16384, "64K" 65536, "256K" 262144, "1M" 1048576, \
           "4M" 4194304, "16M" 16777216, "64M" 67108864, "256M" 268435456)
plot "$tmp/payload.dat" u 1:2 w lp lw 3 lc rgb "black" pt 7 t "raw pipe (fork, write, read)", \
     "" u 1:3 w lp lw 2 lc rgb "gray50" dt 3 pt 6 t "raw pipe, 1 MiB pipe buffer", \
     "" u 1:4 w lp lw 2 lc rgb "gray30" dt 4 pt 4 t "raw memfd (fork, pwrite, mmap)", \
     "" u 1:5 w lp lw 2 lc 1 pt 5 t "args, fork", \
     "" u 1:6 w lp lw 2 lc 2 pt 5 t "args, spawn", \
     "" u 1:7 w lp lw 2 lc 3 pt 5 t "args, forkserver", \
     "" u 1:8 w lp lw 2 lc 1 dt 2 pt 9 t "result, fork", \
     "" u 1:9 w lp lw 2 lc 2 dt 2 pt 9 t "result, spawn", \
     "" u 1:10 w lp lw 2 lc 3 dt 2 pt 9 t "result, forkserver"
GP
    echo "plot.sh: wrote $results/payload_throughput.png"
else
    echo "plot.sh: no payload.log in $results"
fi
