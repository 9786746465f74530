#!/bin/sh
# The same trivial call, and the same hung calls, through timebox and through
# the Python tools a user would reach for (bench/peers/peer_bench.py).
#
#   bench/peers.sh [build-dir]       (default: build/ next to bench/)
#
# Environment: PEERS_N (trivial calls per series, default 100; spawn series
# run a fifth of it), PEERS_DEADLINE_N (hung calls per series, default 3:
# each one that ignores SIGTERM takes 2-3 s with the Python tools).
# Uses /usr/bin/python3 (Debian's, where python3-pebble and
# python3-timeout-decorator install); prints "skipped: not installed" and
# exits 0 without it.  Writes bench/results/peers_timebox.log and peers.log.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build}
results=$here/results
py=/usr/bin/python3
n=${PEERS_N:-100}
nd=${PEERS_DEADLINE_N:-3}
mkdir -p "$results"

if [ ! -x "$py" ]; then
    echo "peers: skipped: not installed ($py)"
    exit 0
fi
for mod in pebble timeout_decorator; do
    "$py" -c "import $mod" 2>/dev/null ||
        echo "peers: $mod: skipped: not installed"
done
exe=$build/bench/bench_peer_tbx
if [ ! -x "$exe" ]; then
    echo "peers.sh: $exe not found; build first" >&2
    exit 1
fi
echo "== peers: timebox side"
"$exe" "$n" "$nd" | tee "$results/peers_timebox.log"
echo "== peers: Python side, timebox's trivial calls interleaved"
"$py" "$here/peers/peer_bench.py" "$results/peers_timebox.log" "$n" "$nd" "$exe" |
    tee "$results/peers.log"
