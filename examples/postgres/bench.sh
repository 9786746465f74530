#!/bin/bash
# Measures, on a private server (cluster.sh), what README.md's section
# "Inside a database" reports:
#   1. a crashing C function called through timebox (one ERROR) and directly
#      in the backend (crash recovery: every session dropped), with 8 idle
#      sessions connected; the recovery time is read from the server's log;
#   2. the cost a call adds to a query, per method: N calls of 'double' in a
#      PL/pgSQL loop, each timed with clock_timestamp(), against the same
#      loop calling the job in the backend itself (the floor, same run).
#   bench.sh BUILD_DIR [PG_CONFIG] [N]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=examples/postgres/cluster.sh
. "$here/cluster.sh"

cluster_start "$1" "${2:-pg_config}"
N=${3:-1000}
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$here" rev-parse --short HEAD 2>/dev/null ||
    echo '?'), Linux $(uname -r), $(nproc) CPUs, $("$PG_BINDIR/postgres" --version)"
sql -c "ALTER SYSTEM SET log_line_prefix = '%m [%p] '" -c "SELECT pg_reload_conf()" >/dev/null
# The in-process twin of the job, declared for this run only: a crash in it
# is a crash of the backend.
sql -c "CREATE FUNCTION timebox_example_direct(fn text, arg bigint) RETURNS bigint
        AS 'timebox_example', 'timebox_example_direct' LANGUAGE C STRICT"

# (Their pids, for wait: a bare wait would wait for the daemon too.)
idle_pids=()
bystanders() {
    idle_pids=()
    for i in $(seq 8); do
        sql -At -c "SET application_name = 'idle$i'; SELECT pg_sleep(600)" \
            >"$WORK/idle$i.out" 2>&1 &
        idle_pids+=($!)
    done
    for _ in $(seq 100); do
        [ "$(connected)" = 8 ] && return
        sleep 0.05
    done
    fail "the idle sessions did not connect"
}
connected() {
    sql -At -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'idle%'"
}
stop_bystanders() {
    sql -At -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
                WHERE application_name LIKE 'idle%'" >/dev/null 2>&1 || true
    wait "${idle_pids[@]}" || true
}
# Seconds between two log timestamps ("2026-11-30 00:15:01.123 UTC").
log_seconds() {
    awk -v a="$(date -d "$1" +%s.%N)" -v b="$(date -d "$2" +%s.%N)" 'BEGIN { printf "%.3f", b - a }'
}

echo "== a crashing function, 8 idle sessions connected"
started=$(sql -At -c "SELECT pg_postmaster_start_time()")
bystanders
t0=$(now)
out=$(sql -c "SELECT timebox_example_call('crash', 0)" 2>&1 || true)
t1=$(now)
echo "through timebox: $(echo "$out" | grep ERROR)"
echo "  answered in $(elapsed "$t0" "$t1") s; idle sessions still connected: $(connected)/8;" \
    "postmaster restarted: $([ "$(sql -At -c "SELECT pg_postmaster_start_time()")" = "$started" ] && echo no || echo yes)"
echo "result crash_timebox still_connected=$(connected) seconds=$(elapsed "$t0" "$t1")"
stop_bystanders

# Some work since the last checkpoint, as a live server has: recovery
# replays it.
sql -c "CREATE TABLE filler AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 300000) g"
wal_mb=$(sql -At -c "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), redo_lsn) / 1048576.0, 1)
                     FROM pg_control_checkpoint()")
bystanders
t0=$(now)
out=$(sql -c "SELECT timebox_example_direct('crash', 0)" 2>&1 || true)
# The outage a client sees: until a new session gets an answer again.
until sql -At -c "SELECT 1" >/dev/null 2>&1; do sleep 0.01; done
t1=$(now)
wait "${idle_pids[@]}" || true
dropped=$(grep -l "crash of another server process\|server closed the connection" \
    "$WORK"/idle*.out | wc -l)
crash_at=$(grep -m1 "was terminated by signal" "$PG_LOG" | awk '{ print $1, $2, $3 }')
ready_at=$(grep "database system is ready to accept connections" "$PG_LOG" | tail -n 1 |
    awk '{ print $1, $2, $3 }')
echo "directly in the backend: $(echo "$out" | grep -m1 -E "ERROR|FATAL|server closed" || true)"
echo "  idle sessions dropped: $dropped/8; crash recovery of $wal_mb MB of WAL (log, signal to ready):" \
    "$(log_seconds "$crash_at" "$ready_at") s; a new session answered after $(elapsed "$t0" "$t1") s"
echo "result crash_direct dropped=$dropped wal_mb=$wal_mb recovery_s=$(log_seconds "$crash_at" "$ready_at") outage_s=$(elapsed "$t0" "$t1")"

echo
echo "== per-call cost in a query: $N calls of 'double', each timed (ms)"
sql -At <<EOF
CREATE TEMP TABLE t(way text, ms float8);
CREATE TEMP TABLE batch(way text, mean_ms float8);
CREATE FUNCTION pg_temp.one(way text, i bigint) RETURNS bigint LANGUAGE plpgsql AS \$\$
BEGIN
    IF way = 'in-process' THEN RETURN timebox_example_direct('double', i);
    ELSIF way = 'sql' THEN RETURN i * 2;
    ELSE RETURN timebox_example_call('double', i, 5000, way);
    END IF;
END \$\$;
-- Each call timed alone (median, p99), then n calls in a row (the mean,
-- free of clock_timestamp()'s microsecond grain: the floor is below it).
CREATE FUNCTION pg_temp.measure(way text, n int) RETURNS void LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz; r bigint; ms float8[] := '{}';
BEGIN
    FOR i IN 1..n LOOP
        t0 := clock_timestamp();
        r := pg_temp.one(way, i);
        ms := ms || (extract(epoch FROM clock_timestamp() - t0) * 1000)::float8;
        IF r <> 2 * i THEN RAISE 'wrong result'; END IF;
    END LOOP;
    INSERT INTO t SELECT way, unnest(ms);
    t0 := clock_timestamp();
    FOR i IN 1..n LOOP
        r := pg_temp.one(way, i);
    END LOOP;
    INSERT INTO batch VALUES (way, extract(epoch FROM clock_timestamp() - t0) * 1000 / n);
END \$\$;
\o /dev/null
-- A first call of each method outside the measure: starts the servers.
SELECT timebox_example_call('double', 1, 5000, m)
    FROM unnest(ARRAY['fork', 'spawn', 'forkserver', 'shared']) m;
SELECT pg_temp.measure(w, $N)
    FROM unnest(ARRAY['sql', 'in-process', 'fork', 'spawn', 'shared', 'forkserver']) w;
\o
\pset format aligned
\pset tuples_only off
WITH s AS (
    SELECT way, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS median,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99
    FROM t GROUP BY way),
f AS (SELECT mean_ms AS floor FROM batch WHERE way = 'in-process')
SELECT way, round(median::numeric, 4) AS median_ms, round(p99::numeric, 4) AS p99_ms,
       round(mean_ms::numeric, 4) AS mean_ms,
       round((mean_ms - floor)::numeric, 4) AS added_ms,
       round((mean_ms / floor)::numeric, 0) AS mean_to_floor
FROM s JOIN batch USING (way), f ORDER BY mean_ms;
EOF
