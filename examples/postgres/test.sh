#!/bin/bash
# The PostgreSQL example against a real server (ctest: postgres).
#   test.sh BUILD_DIR [PG_CONFIG]
# Checks, on a private server (cluster.sh):
#   - 8 concurrent sessions call every fn under every method: right results,
#     right errors (SQLSTATE and message);
#   - a crash is one ERROR: no crash recovery (pg_postmaster_start_time()
#     unchanged, no "terminated by signal" in the log), a bystander session
#     still connected;
#   - statement_timeout, pg_cancel_backend() and pg_terminate_backend() end a
#     call in flight (a job deaf to SIGTERM) on time, under every method, and
#     leave no process behind;
#   - 'shared' is served by the one daemon started before the server;
#   - after the run, no process of any call remains.
# Exit 0: passed; 77: skipped (said why); anything else: failed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=examples/postgres/cluster.sh
. "$here/cluster.sh"

cluster_start "$1" "${2:-pg_config}"
METHODS="fork spawn forkserver shared"
GRACE_S=0.2 # timebox_example.grace_ms's default
# Generous for a slow, shared machine: the call must end within the grace
# period plus this (the promise is 100 ms plus the grace period).
SLACK_S=1.5

started=$(sql -At -c "SELECT pg_postmaster_start_time()")

# ------------------------------------------------ 8 concurrent sessions
sql -At -c "SET application_name = 'bystander'; SELECT pg_sleep(300)" \
    >"$WORK/bystander.out" 2>&1 &
bystander=$!

cat >"$WORK/session.sql" <<'EOF'
DO $$
DECLARE
    m text;
    r bigint;
    st text;
    msg text;
BEGIN
    FOREACH m IN ARRAY ARRAY['fork', 'spawn', 'forkserver', 'shared'] LOOP
        r := timebox_example_call('double', 21, 10000, m);
        IF r <> 42 THEN RAISE 'double under %: %', m, r; END IF;
        r := timebox_example_call('double', -5, 10000, m);
        IF r <> -10 THEN RAISE 'double(-5) under %: %', m, r; END IF;
        r := timebox_example_call('sleep', 30, 10000, m);
        IF r <> 30 THEN RAISE 'sleep under %: %', m, r; END IF;
        BEGIN
            PERFORM timebox_example_call('crash', 0, 10000, m);
            RAISE 'crash under % returned', m;
        EXCEPTION WHEN external_routine_exception THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            IF msg NOT LIKE '%crash crashed: Segmentation fault%' THEN
                RAISE 'crash under %: %', m, msg;
            END IF;
        END;
        BEGIN
            PERFORM timebox_example_call('spin', 0, 300, m);
            RAISE 'spin under % returned', m;
        EXCEPTION WHEN query_canceled THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            IF msg NOT LIKE '%spin did not finish within its deadline of 300 ms%' THEN
                RAISE 'spin under %: %', m, msg;
            END IF;
        END;
        BEGIN
            PERFORM timebox_example_call('sleep', 60000, 200, m);
            RAISE 'a long sleep under % returned', m;
        EXCEPTION WHEN query_canceled THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            IF msg NOT LIKE '%deadline of 200 ms%' THEN RAISE 'sleep under %: %', m, msg; END IF;
        END;
        BEGIN
            PERFORM timebox_example_call('nosuch', 0, 1000, m);
            RAISE 'an unknown fn under % returned', m;
        EXCEPTION WHEN invalid_parameter_value THEN NULL;
        END;
    END LOOP;
    BEGIN
        PERFORM timebox_example_call('double', 9223372036854775807, 10000, 'fork');
        RAISE 'an overflow returned';
    EXCEPTION WHEN external_routine_exception THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        IF msg NOT LIKE '%double failed: 2 * 9223372036854775807 is out of range%' THEN
            RAISE 'overflow: %', msg;
        END IF;
    END;
    BEGIN
        PERFORM timebox_example_call('double', 1, 1000, 'carrier-pigeon');
        RAISE 'an unknown method returned';
    EXCEPTION WHEN invalid_parameter_value THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE;
        IF st <> '22023' THEN RAISE 'unknown method: %', st; END IF;
    END;
    RAISE NOTICE 'session ok';
END
$$;
EOF
pids=()
for i in $(seq 8); do
    sql -f "$WORK/session.sql" >"$WORK/session$i.out" 2>&1 &
    pids+=($!)
done
for i in $(seq 8); do
    wait "${pids[$((i - 1))]}" || fail "session $i: $(errors_in "$WORK/session$i.out")"
    grep -q "session ok" "$WORK/session$i.out" || fail "session $i: $(errors_in "$WORK/session$i.out")"
done
echo "ok: 8 concurrent sessions, every fn under every method"

# ------------------------------------------------------ no crash recovery
[ "$(sql -At -c "SELECT pg_postmaster_start_time()")" = "$started" ] ||
    fail "the postmaster restarted"
! grep -q "terminated by signal" "$PG_LOG" || fail "a server process was terminated by a signal"
! grep -q "reinitializing" "$PG_LOG" || fail "the server went through crash recovery"
[ "$(sql -At -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bystander'")" = 1 ] ||
    fail "the bystander session was dropped"
expect_no_strays "after the sessions"
echo "ok: 32 crashes, no crash recovery, the bystander still connected"

# ----------------------------------------------------------- interrupts
# The pid of the backend whose application_name is $1, once its call has a
# running child: a descendant of the backend (or of the daemon, for
# 'shared') in state R, the spinning job.
call_running() {
    local app=$1 backend
    for _ in $(seq 100); do
        backend=$(sql -At -c "SELECT pid FROM pg_stat_activity WHERE application_name = '$app'
                                AND state = 'active'")
        if [ -n "$backend" ]; then
            if ps -u "$PG_USER" -o pid=,ppid=,stat= | awk -v b="$backend" -v d="$DAEMON_PID" '
                { parent[$1] = $2; state[$1] = $3 }
                END {
                    for (p in parent) {
                        if (state[p] !~ /^R/ || p == b) continue
                        for (q = parent[p]; q > 1; q = parent[q])
                            if (q == b || q == d) exit 0
                    }
                    exit 1
                }'; then
                echo "$backend"
                return 0
            fi
        fi
        sleep 0.05
    done
    return 1
}

# interrupt METHOD HOW: a spin call with a 20 s deadline, ended by HOW
# (cancel: pg_cancel_backend; terminate: pg_terminate_backend).
interrupt() {
    local m=$1 how=$2 app="victim_$1_$2" backend t0 t1 took out
    out=$WORK/$app.out
    sql -c "SET application_name = '$app'" \
        -c "SELECT timebox_example_call('spin', 0, 20000, '$m')" >"$out" 2>&1 &
    local victim=$!
    backend=$(call_running "$app") || fail "$m/$how: the call never ran"
    t0=$(now)
    sql -At -c "SELECT pg_${how}_backend($backend)" >/dev/null
    wait "$victim" && fail "$m/$how: the call returned: $(errors_in "$out")"
    t1=$(now)
    took=$(elapsed "$t0" "$t1")
    case $how in
    cancel) grep -q "canceling statement due to user request" "$out" ;;
    terminate) grep -q "terminating connection due to administrator command" "$out" ;;
    esac || fail "$m/$how: $(errors_in "$out")"
    less_than "$took" "$(awk -v g=$GRACE_S -v s=$SLACK_S 'BEGIN { print g + s }')" ||
        fail "$m/$how: the call ended $took s after the request"
    expect_no_strays "$m/$how"
    echo "ok: pg_${how}_backend ends a '$m' call in $took s, nothing left"
}

statement_timeout() {
    local m=$1 t0 t1 took out=$WORK/timeout_$1.out
    t0=$(now)
    sql -c "SET statement_timeout = 300" \
        -c "SELECT timebox_example_call('spin', 0, 20000, '$m')" >"$out" 2>&1 &&
        fail "$m/statement_timeout: the call returned"
    t1=$(now)
    took=$(elapsed "$t0" "$t1")
    grep -q "canceling statement due to statement timeout" "$out" ||
        fail "$m/statement_timeout: $(errors_in "$out")"
    less_than "$took" "$(awk -v g=$GRACE_S -v s=$SLACK_S 'BEGIN { print 0.3 + g + s }')" ||
        fail "$m/statement_timeout: a 300 ms timeout ended the call after $took s"
    expect_no_strays "$m/statement_timeout"
    echo "ok: statement_timeout = 300 ms ends a '$m' call in $took s (psql included), nothing left"
}

for m in $METHODS; do
    statement_timeout "$m"
    interrupt "$m" cancel
    interrupt "$m" terminate
done

# ------------------------------------------- a daemon that is not there
out=$WORK/nodaemon.out
sql -v VERBOSITY=verbose -c "SET timebox_example.socket = '$WORK/nobody/fs.sock'" \
    -c "SELECT timebox_example_call('double', 1, 1000, 'shared')" >"$out" 2>&1 &&
    fail "a call to a missing daemon returned"
grep -q "ERROR:  58000: timebox_example: could not attach to the forkserver" "$out" ||
    fail "a missing daemon: $(errors_in "$out")"
echo "ok: a missing daemon is an ERROR (58000)"

# ---------------------------------------------------------- the end
kill -0 "$DAEMON_PID" 2>/dev/null || fail "the shared daemon died"
[ "$(sql -At -c "SELECT timebox_example_call('double', 4, 5000, 'shared')")" = 8 ] ||
    fail "the daemon no longer serves"
[ "$(sql -At -c "SELECT pg_postmaster_start_time()")" = "$started" ] ||
    fail "the postmaster restarted"
! grep -q "terminated by signal" "$PG_LOG" || fail "a server process was terminated by a signal"
sql -At -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
            WHERE application_name = 'bystander'" >/dev/null
wait "$bystander" || true
grep -q "canceling statement due to user request" "$WORK/bystander.out" ||
    fail "the bystander: $(errors_in "$WORK/bystander.out")"
expect_no_strays "at the end"
echo "ok: one daemon served every backend; no process of any call remains"
echo "PASS"
