#!/usr/bin/env bash
# The library's rooms (lib/README.md): a file's includes say which process
# it runs in, so each file may include only its own room's header and the
# headers of the rooms below it.  Checks every file under lib/ against the
# table below; a file the table does not know is a breach too (a new file
# takes its room's row).  Prints each breach; exits 1 if there is one.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The room a file is in, by its path under lib/.
room_of() {
    case $1 in
    os.h | os_linux.c | fdpass.c | atfork.c | log.c | errors.c | version.c) echo os ;;
    wire.h | wire.c | bulk.c) echo wire ;;
    cgroup.h | cgroup_impl.h | cgroup.c | cgroup_pool.c) echo cgroup ;;
    child.h | child_setup.c | child.c | worker.c | worker_main.c | request_recv.c | registry.c)
        echo child ;;
    loop.h | loop.c | deadline.c) echo loop ;;
    trace.h | trace_impl.h | trace.c | trace_unwind.c | trace_cache.c) echo trace ;;
    launch_*.c) echo launcher ;;
    prepare.c) echo prepare ;;
    engine.h | engine.c | escalate.c | cancel.c | queue.c | request.c | streams.c | verdict.c | slots.c | call.c | \
        methods.c | own_child.c | diagnose.c | nest.c) echo engine ;;
    init.c) echo init ;;
    forkserver/forkserver.h | forkserver/auth.h | forkserver/unixsock.c | forkserver/auth.c)
        echo fs_common ;;
    forkserver/client.h | forkserver/client.c | forkserver/client_start.c | \
        forkserver/client_warm.c | forkserver/launch_forkserver.c | forkserver/launch_pool.c | \
        forkserver/pool.h | forkserver/pool_own.c)
        echo fs_client ;;
    forkserver/server.h | forkserver/server*.c | forkserver/pool_serve.c | forkserver/main.c | \
        forkserver/sd_daemon.h | forkserver/sd_daemon*.c) echo fs_server ;;
    *) echo unknown ;;
    esac
}

# What each room may include (the public headers are below every room;
# timebox/uv.h, as <uv.h>, only where a loop runs).
declare -A allowed=(
    [os]="os.h"
    [wire]="wire.h os.h"
    # Per-call cgroups: made and killed by the caller and the server, joined
    # by the child (tbx__cgroup_join is async-signal-safe).
    [cgroup]="cgroup.h cgroup_impl.h os.h"
    [child]="child.h wire.h cgroup.h"
    [loop]="loop.h os.h"
    # The tracer runs in the processes that own children: the caller, the server.
    [trace]="trace.h trace_impl.h os.h"
    [engine]="engine.h loop.h wire.h cgroup.h trace.h"
    # A launcher makes the child: it knows the child's side too.
    [launcher]="engine.h child.h"
    # Refuses a call made by a worker that never served (child.h says which).
    [prepare]="engine.h child.h"
    # Every process at its start: becomes a worker or a server, or returns.
    [init]="child.h forkserver/forkserver.h"
    [fs_common]="forkserver/forkserver.h forkserver/auth.h wire.h"
    [fs_client]="forkserver/client.h forkserver/pool.h engine.h forkserver/forkserver.h"
    # The daemon's systemd glue (sd_daemon.h) is the daemon's alone.
    [fs_server]="forkserver/server.h forkserver/sd_daemon.h child.h loop.h forkserver/forkserver.h cgroup.h ../cgroup.h trace.h"
)
# Rooms whose processes run no libuv loop (the child, the worker): never <uv.h>.
no_uv="os wire cgroup child fs_common trace"

bad=0
breach() {
    echo "$1"
    bad=1
}

while IFS= read -r path; do
    file=${path#lib/}
    room=$(room_of "$file")
    if [[ $room == unknown ]]; then
        breach "$path: in no room of scripts/check-rooms.sh (see lib/README.md)"
        continue
    fi
    dir=$(dirname "$file")
    while IFS= read -r inc; do
        # As the compiler finds it: next to the file, else from lib/.
        name=$inc
        [[ $dir != . && -e lib/$dir/$inc ]] && name=$dir/$inc
        name=$(realpath -m --relative-to=lib "lib/$name")
        [[ -e lib/$name ]] || continue # a public header (include/): below every room
        [[ " ${allowed[$room]} " == *" $name "* || $name == "$file" ]] ||
            breach "$path: includes \"$inc\", not a header its room ($room) may include"
    done < <(sed -n 's/^#include "\(.*\)"/\1/p' "$path")
    if [[ " $no_uv " == *" $room "* ]] && grep -Eq '^#include [<"](uv|timebox/uv)\.h[>"]' "$path"; then
        breach "$path: includes libuv, but its room ($room) runs in no process with a loop"
    fi
done < <(find lib -name '*.[ch]' | sort)
exit $bad
