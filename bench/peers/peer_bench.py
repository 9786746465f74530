"""What a Python user of a timeout helper pays per call, next to timebox.

    peer_bench.py TBX_LOG [calls [deadline_calls [PEER_TBX]]]

TBX_LOG holds the RESULT lines of bench_peer_tbx, run just before by
bench/peers.sh (the same calls through timebox).  With PEER_TBX (that
program's path), timebox's trivial calls are made in the same rotation as
the Python tools' (PEER_TBX serve times each one and says how long it took)
and the ratios are to those: the VM's speed drifts within a run, and only
interleaved samples share it.  Series, one fresh child process per call
unless said otherwise:

  timebox_<method>   (with PEER_TBX) tbx_call of a function returning 42,
                     timeout 10 s, by fork, forkserver, spawn

  mp_<method>        multiprocessing Process + Queue per call, as a timeout
                     decorator does it: start, q.get(timeout), join; for
                     the start methods fork, forkserver, spawn
  pebble_fresh       pebble.ProcessPool(max_workers=1) per call, schedule
                     with timeout, result(), leave the pool (close + join)
  pebble_reused      one pebble.ProcessPool for all calls (the worker is
                     reused: not a fresh process per call)
  timeout_decorator  @timeout_decorator.timeout(10, use_signals=False)
                     (Debian's python3-timeout-decorator, which forks a
                     multiprocessing.Process per call and polls every 10 ms)

Deadline behaviour, timeout 0.1 s, for a function that sleeps forever
(_hang) and one that ignores SIGTERM then sleeps (_ignore): the time until
the call returns (raises), and whether the child is still alive then and
2 s later.  mp_<method> does what a user writes: terminate(), join(); a
join on a child that ignores SIGTERM never returns, so the bench gives up
after 2 s, says so and kills the child itself.
"""

import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import time

try:
    import pebble
except ImportError:
    pebble = None
try:
    import timeout_decorator
except ImportError:
    timeout_decorator = None


def answer():
    return 42


def hang():
    while True:
        time.sleep(3600)


def ignore_term():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(3600)


def _target(q, fn):
    q.put(fn())


def _pid_target(q, fn):
    q.put(os.getpid())
    fn()


def alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---- one trivial call per tool ----

def mp_call(ctx):
    q = ctx.Queue()
    p = ctx.Process(target=_target, args=(q, answer))
    p.start()
    try:
        r = q.get(timeout=10)
    except queue.Empty:
        p.terminate()
        raise
    finally:
        p.join()
    assert r == 42


def pebble_fresh_call():
    with pebble.ProcessPool(max_workers=1) as pool:
        assert pool.schedule(answer, timeout=10).result() == 42


POOL = None


def pebble_reused_call():
    assert POOL.schedule(answer, timeout=10).result() == 42


TD_ANSWER = None


def td_call():
    assert TD_ANSWER() == 42


# ---- deadline behaviour ----

def mp_deadline(ctx, fn):
    """Returns (seconds to return, child pid, note)."""
    q = ctx.Queue()
    p = ctx.Process(target=_pid_target, args=(q, fn))
    t0 = time.monotonic()
    p.start()
    pid = q.get(timeout=10)
    deadline = t0 + 0.1
    note = ""
    try:
        q.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        p.terminate()
        p.join(2)
        if p.is_alive():
            note = "join() hung (gave up at 2 s)"
            p.kill()
            p.join()
    return time.monotonic() - t0, pid, note


def pebble_deadline(fn, pool=None):
    t0 = time.monotonic()
    if pool is None:
        with pebble.ProcessPool(max_workers=1) as p:
            f = p.schedule(fn, timeout=0.1)
            try:
                f.result()
            except TimeoutError:
                pass
            raised = time.monotonic() - t0
        return raised, time.monotonic() - t0
    f = pool.schedule(fn, timeout=0.1)
    try:
        f.result()
    except TimeoutError:
        pass
    return time.monotonic() - t0, None


def report_pid_then(path, fn):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    fn()


def td_deadline(fn):
    """Returns (seconds to return, the child's pid)."""
    wrapped = timeout_decorator.timeout(0.1, use_signals=False)(report_pid_then)
    path = "/tmp/peer_bench.%d.pid" % os.getpid()
    if os.path.exists(path):
        os.unlink(path)
    t0 = time.monotonic()
    try:
        wrapped(path, fn)
    except timeout_decorator.TimeoutError:
        pass
    took = time.monotonic() - t0
    with open(path) as f:
        pid = int(f.read())
    os.unlink(path)
    return took, pid


# ---- statistics and output ----

# timebox's methods, each timed in the same rotation (pool: one pooled process
# kept for all calls, as pebble_reused keeps one worker).
TBX_METHODS = ("fork", "forkserver", "spawn", "pool")

class TimeboxServe:
    """bench_peer_tbx serve: one trivial call per request, timed there."""

    def __init__(self, exe):
        self.p = subprocess.Popen([exe, "serve"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1)

    def call(self, method):
        self.p.stdin.write(method + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            sys.exit("peer_bench.py: bench_peer_tbx serve stopped")
        return float(line)

    def close(self):
        # Not EOF: the tools' fork children hold the pipe's write end too.
        self.p.stdin.write("quit\n")
        self.p.stdin.flush()
        self.p.wait()


def stats(v):
    v = sorted(v)
    n = len(v)
    med = v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
    p99 = v[max(0, min(n - 1, -(-99 * n // 100) - 1))]
    return n, med, p99


def read_tbx(path):
    med = {}
    with open(path) as f:
        for line in f:
            if not line.startswith("RESULT scenario=peers_timebox "):
                continue
            kv = dict(x.split("=", 1) for x in line.split()[1:])
            med[kv["name"]] = float(kv["median_us"])
            med[kv["name"] + ".n"] = int(kv["n"])
    return med


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: peer_bench.py TBX_LOG [calls [deadline_calls]]")
    tbx = read_tbx(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    nd = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    serve = TimeboxServe(sys.argv[4]) if len(sys.argv) > 4 else None
    print("python %s, pebble %s, timeout_decorator %s" % (
        sys.version.split()[0],
        getattr(pebble, "__version__", "installed") if pebble else "skipped: not installed",
        "installed" if timeout_decorator else "skipped: not installed"))
    print("wrapt_timeout_decorator: skipped: not packaged by Debian 12")

    global POOL, TD_ANSWER
    series = {}  # name -> (calls, fn)
    for m in ("fork", "forkserver", "spawn"):
        ctx = mp.get_context(m)
        series["mp_" + m] = (n if m != "spawn" else max(10, n // 5), lambda c=ctx: mp_call(c))
    if pebble:
        POOL = pebble.ProcessPool(max_workers=1)
        series["pebble_fresh"] = (n, pebble_fresh_call)
        series["pebble_reused"] = (n, pebble_reused_call)
    if timeout_decorator:
        TD_ANSWER = timeout_decorator.timeout(10, use_signals=False)(answer)
        series["timeout_decorator"] = (max(10, n // 2), td_call)

    if serve:
        for m in TBX_METHODS:
            series["timebox_" + m] = (n, lambda m=m: serve.call(m))

    names = list(series)
    samples = {k: [] for k in names}
    warm = 3
    top = max(c for c, _ in series.values()) + warm
    for i in range(top):
        for j in range(len(names)):
            k = names[(i + j) % len(names)]
            calls, fn = series[k]
            if i >= calls + warm:
                continue
            t0 = time.perf_counter_ns()
            took = fn()
            us = (time.perf_counter_ns() - t0) / 1e3
            if k.startswith("timebox_"):
                us = took  # timed where the call was made, without the pipe to it
            if i >= warm:
                samples[k].append(us)

    if serve:
        serve.close()
        ref = [(m, stats(samples["timebox_" + m])[1]) for m in TBX_METHODS]
        names = [k for k in names if not k.startswith("timebox_")]
        how = "interleaved with these"
    else:
        ref = [(m, tbx.get(m + "_trivial")) for m in TBX_METHODS]
        how = "from bench_peer_tbx, run just before"
    print("\npeers: one trivial call (returns 42, timeout 10 s), microseconds;"
          " x tbx_<m> = median / timebox's median by that method (%s)" % how)
    print("%-20s %5s %10s %10s %10s %10s %10s %10s" % ("series", "n", "median", "p99",
                                                       "x tbx_fork", "x tbx_fs", "x tbx_spawn",
                                                       "x tbx_pool"))
    for m, med in ref:
        if med:
            print("%-20s %5s %10.1f %10s %10s %10s %10s %10s" % ("timebox_" + m, "-", med, "-",
                                                                 "", "", "", ""))
    for k in names:
        cnt, med, p99 = stats(samples[k])
        xs = ["%9.1fx" % (med / r) if r else "-" for _, r in ref]
        print("%-20s %5d %10.1f %10.1f %10s %10s %10s %10s" % (k, cnt, med, p99, *xs))
    print()
    for k in names:
        cnt, med, p99 = stats(samples[k])
        line = "RESULT scenario=peers name=%s n=%d median_us=%.2f p99_us=%.2f" % (k, cnt, med, p99)
        for m, r in ref:
            if r:
                line += " x_tbx_%s=%.2f" % (m, med / r)
        print(line)

    # deadline behaviour
    print("\npeers: deadline 0.1 s on a function that never returns; seconds until the call"
          " returns (median of %d), child alive at return / 2 s later" % nd)
    rows = []
    for kind, fn in (("hang", hang), ("ignore", ignore_term)):
        for m in ("fork", "forkserver", "spawn"):
            ctx = mp.get_context(m)
            took, left, notes = [], [0, 0], set()
            for _ in range(nd):
                t, pid, note = mp_deadline(ctx, fn)
                took.append(t)
                if note:
                    notes.add(note)
            rows.append(("mp_%s_%s" % (m, kind), took, "reaped by join()" if not notes
                         else "; ".join(sorted(notes)) + ", then SIGKILL by the bench"))
        if pebble:
            took, total = [], []
            for _ in range(nd):
                r, t = pebble_deadline(fn)
                took.append(r)
                total.append(t)
            rows.append(("pebble_fresh_%s" % kind, took,
                         "pool exit after %.2f s" % stats(total)[1]))
            took, broke = [], 0
            for _ in range(nd):
                try:
                    took.append(pebble_deadline(fn, POOL)[0])
                except RuntimeError:  # "Unexpected error within the Pool"
                    broke += 1
                    POOL.stop()
                    POOL.join()
                    POOL = pebble.ProcessPool(max_workers=1)
            note = "pebble stops the worker: SIGTERM, SIGKILL 3 s later"
            if broke:
                note += "; the pool broke %d time(s) (RuntimeError), made anew" % broke
            rows.append(("pebble_reused_%s" % kind, took or [float("nan")], note))
        if timeout_decorator:
            took, at_return, later = [], 0, 0
            for _ in range(nd):
                t, pid = td_deadline(fn)
                took.append(t)
                at_return += alive(pid)
                time.sleep(2)
                if alive(pid):
                    later += 1
                    os.kill(pid, signal.SIGKILL)
                mp.active_children()  # reaps it
            rows.append(("timeout_decorator_%s" % kind, took,
                         "children alive at return %d/%d, 2 s later %d/%d (then killed by"
                         " the bench)" % (at_return, nd, later, nd)))
        for m in TBX_METHODS:
            v = tbx.get("%s_%s" % (m, kind))
            if v:
                rows.append(("timebox_%s_%s" % (m, kind),
                             [v / 1e6] * tbx.get("%s_%s.n" % (m, kind), 1),
                             "from bench_peer_tbx (median); reaped, group killed"))
    print("%-28s %8s  %s" % ("series", "median_s", "note"))
    for name, took, note in rows:
        print("%-28s %8.3f  %s" % (name, stats(took)[1], note))
    print()
    for name, took, note in rows:
        print("RESULT scenario=peers_deadline name=%s n=%d return_s=%.3f" % (
            name, len(took), stats(took)[1]))
    if POOL:
        POOL.close()
        POOL.join()


if __name__ == "__main__":
    main()
