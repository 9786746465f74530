# shellcheck shell=bash
# A private PostgreSQL server for test.sh and bench.sh (sourced, not run).
#
# cluster_start BUILD_DIR PG_CONFIG
#   installs the build (into a temporary prefix; the extension into
#   PostgreSQL's own directories, as `cmake --install` does), creates the
#   unprivileged user timebox_pg if missing (PostgreSQL refuses to run as
#   root), starts one timebox-forkserver daemon as that user, then initdb and
#   pg_ctl in a temporary directory: a server on a Unix socket in that
#   directory only (listen_addresses = ''), its port random.
# Everything is undone by cluster_stop, which an EXIT trap runs on every path.
# A machine that cannot do this (not root, no PostgreSQL binaries) makes the
# script exit 77: ctest counts that as skipped.

PG_USER=timebox_pg

skip() {
    echo "SKIPPED: $*"
    exit 77
}

# What went wrong in a psql output file: its error lines.
errors_in() { grep -E "ERROR|FATAL|PANIC|WARNING|DETAIL|CONTEXT" "$1" | head -n 20; }

fail() {
    echo "FAIL: $*" >&2
    [ -n "${PG_LOG:-}" ] && [ -f "$PG_LOG" ] && tail -n 30 "$PG_LOG" >&2
    exit 1
}

now() { date +%s.%N; }
# awk does the arithmetic: bash has only integers.
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
less_than() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

as_pg() {
    setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups -- env HOME="$WORK" "$@"
}

# psql as the server's superuser; extra arguments follow.
sql() {
    "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK/sock" -p "$PG_PORT" -U "$PG_USER" \
        -d postgres "$@"
}

cluster_stop() {
    set +e
    if [ -n "${PG_DATA:-}" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
        as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1
    fi
    if [ -n "${DAEMON_PID:-}" ]; then
        kill -TERM "$DAEMON_PID" 2>/dev/null
        wait "$DAEMON_PID" 2>/dev/null
    fi
    if [ -n "${PG_PKGLIBDIR:-}" ]; then
        rm -f "$PG_PKGLIBDIR/timebox_example.so" "$PG_PKGLIBDIR/timebox_example_jobs.so" \
            "$PG_SHAREDIR/extension/timebox_example.control" \
            "$PG_SHAREDIR/extension/timebox_example--1.0.sql"
    fi
    if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
        if [ -n "${KEEP_LOG:-}" ] && [ -f "$PG_LOG" ]; then cp "$PG_LOG" "$KEEP_LOG"; fi
        rm -rf "$WORK"
    fi
}

cluster_start() {
    BUILD=$1
    PG_CONFIG=${2:-pg_config}
    command -v "$PG_CONFIG" >/dev/null || skip "no pg_config"
    PG_BINDIR=$("$PG_CONFIG" --bindir)
    PG_PKGLIBDIR=$("$PG_CONFIG" --pkglibdir)
    PG_SHAREDIR=$("$PG_CONFIG" --sharedir)
    for b in initdb pg_ctl psql; do
        [ -x "$PG_BINDIR/$b" ] || skip "no $PG_BINDIR/$b (install postgresql-15)"
    done
    [ "$(id -u)" = 0 ] || skip "the test makes a user for PostgreSQL and must run as root"
    command -v setpriv >/dev/null || skip "no setpriv (util-linux)"
    [ -f "$BUILD/examples/postgres/timebox_example.so" ] ||
        skip "the build has no extension (configure with -DTIMEBOX_POSTGRES=ON)"
    if ! id "$PG_USER" >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER" ||
            skip "cannot create the user $PG_USER"
    fi

    WORK=$(mktemp -d /tmp/tbx-pg-XXXXXX)
    trap cluster_stop EXIT
    trap 'exit 1' INT TERM
    chmod 0755 "$WORK"
    PG_DATA=$WORK/data
    PG_LOG=$WORK/server.log
    PG_PORT=$((5499 + RANDOM % 1000))
    cmake --install "$BUILD" --prefix "$WORK/prefix" >/dev/null || fail "cmake --install"
    [ -f "$PG_PKGLIBDIR/timebox_example.so" ] || fail "the extension was not installed"
    mkdir -m 0700 "$WORK/sock"
    chown "$PG_USER:" "$WORK" "$WORK/sock"

    # The shared forkserver first: it serves every backend started later.
    SOCKET=$WORK/fs/fs.sock
    # Not through as_pg: a function run in the background is a subshell, and
    # $! would name it, not the daemon.  setpriv and env exec, keeping the pid.
    setpriv --reuid="$PG_USER" --regid="$PG_USER" --init-groups -- \
        "$WORK/prefix/bin/timebox-forkserver" --socket "$SOCKET" --foreground --quiet \
        --preload "$PG_PKGLIBDIR/timebox_example_jobs.so" >"$WORK/daemon.log" 2>&1 </dev/null &
    DAEMON_PID=$!
    for _ in $(seq 100); do [ -f "$SOCKET.key" ] && break; sleep 0.05; done
    [ -f "$SOCKET.key" ] || fail "timebox-forkserver did not start: $(cat "$WORK/daemon.log")"

    as_pg "$PG_BINDIR/initdb" -D "$PG_DATA" --auth=trust --no-sync -E UTF8 >/dev/null ||
        fail "initdb"
    cat >>"$PG_DATA/postgresql.conf" <<EOF
listen_addresses = ''
port = $PG_PORT
unix_socket_directories = '$WORK/sock'
max_connections = 40
shared_buffers = 16MB
fsync = off
timebox_example.socket = '$SOCKET'
timebox_example.worker = '$WORK/prefix/bin/timebox-worker'
EOF
    as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start >/dev/null ||
        fail "pg_ctl start"
    POSTMASTER_PID=$(head -n 1 "$PG_DATA/postmaster.pid")
    sql -c "CREATE EXTENSION timebox_example" || fail "CREATE EXTENSION"
}

# Processes of the server's user that are neither the server's own (the
# postmaster and its children: backends, background processes) nor the
# daemon: what a call would leave behind.  "pid ppid stat comm" lines.
strays() {
    ps -u "$PG_USER" -o pid=,ppid=,stat=,comm= |
        awk -v pm="$POSTMASTER_PID" -v d="$DAEMON_PID" '$1 != pm && $2 != pm && $1 != d'
}

# Waits up to 5 s for no strays; fails naming them otherwise.
expect_no_strays() {
    local s
    for _ in $(seq 50); do
        s=$(strays)
        [ -z "$s" ] && return 0
        sleep 0.1
    done
    fail "$1: processes left behind: $s"
}
