/*
 * A function that leaves processes behind it, for the containment tests:
 * built into test_contain as fn_leave_escapees and into the test plugin (for
 * the shared daemon) as plugin_leave_escapees (ESCAPEES_FN names it).
 *
 * args: [dir, mode].  It forks a child that calls setsid() and sleeps, and
 * one that daemonizes (setsid, fork, the parent exits) and sleeps; each
 * writes its pid to dir/setsid and dir/daemon.  Once both are written, mode
 * "ok" returns nil, "hang" sleeps past any deadline, "crash" dies of SIGSEGV.
 */
#define _GNU_SOURCE
#include <timebox.h>

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifndef ESCAPEES_FN
#error "ESCAPEES_FN names the function"
#endif

int ESCAPEES_FN(const msgpack_object *args, msgpack_packer *pk, void *ctx);

/* The pid of the calling process, written to path whole (by rename). */
static void write_pid(const char *path)
{
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return;
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    (void)rename(tmp, path);
}

__attribute__((noreturn)) static void sleep_for_ever(void)
{
    for (;;)
        pause();
}

int ESCAPEES_FN(const msgpack_object *args, msgpack_packer *pk, void *ctx)
{
    (void)ctx;
    char dir[200], mode[16], setsid_path[256], daemon_path[256];
    if (args->type != MSGPACK_OBJECT_ARRAY || args->via.array.size != 2 ||
        args->via.array.ptr[0].type != MSGPACK_OBJECT_STR ||
        args->via.array.ptr[1].type != MSGPACK_OBJECT_STR)
        return tbx_fail(pk, 1, "expected [dir, mode]");
    const msgpack_object *a = args->via.array.ptr;
    snprintf(dir, sizeof dir, "%.*s", (int)a[0].via.str.size, a[0].via.str.ptr);
    snprintf(mode, sizeof mode, "%.*s", (int)a[1].via.str.size, a[1].via.str.ptr);
    snprintf(setsid_path, sizeof setsid_path, "%s/setsid", dir);
    snprintf(daemon_path, sizeof daemon_path, "%s/daemon", dir);
    if (fork() == 0) {
        setsid();
        write_pid(setsid_path);
        sleep_for_ever();
    }
    if (fork() == 0) {
        setsid();
        if (fork() != 0)
            _exit(0); /* the daemon is orphaned at once */
        write_pid(daemon_path);
        sleep_for_ever();
    }
    for (int i = 0; i < 5000 && !(access(setsid_path, F_OK) == 0 &&
                                  access(daemon_path, F_OK) == 0); i++)
        usleep(1000);
    if (strcmp(mode, "hang") == 0)
        sleep_for_ever();
    if (strcmp(mode, "crash") == 0)
        raise(SIGSEGV);
    msgpack_pack_nil(pk);
    return 0;
}
TBX_REGISTER(ESCAPEES_FN);
