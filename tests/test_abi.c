/*
 * What the library says of itself, and what it loads: its version at run
 * time, and libsodium only where a shared forkserver's socket is used (so
 * that no worker pays for loading it).
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

TBX_PLAIN_TEST(abi, version_is_the_headers)
{
    cr_assert_eq(tbx_version(), (unsigned)TBX_VERSION_HEX);
    cr_assert_eq(tbx_version() >> 16, (unsigned)TBX_VERSION_MAJOR);
    cr_assert_eq(tbx_version() >> 8 & 0xff, (unsigned)TBX_VERSION_MINOR);
    cr_assert_eq(tbx_version() & 0xff, (unsigned)TBX_VERSION_PATCH);
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", TBX_VERSION_MAJOR, TBX_VERSION_MINOR,
             TBX_VERSION_PATCH);
    cr_assert_str_eq(tbx_version_string(), want);
    cr_assert_str_eq(tbx_version_string(), TBX_VERSION_STRING);
}

/* Whether libsodium is mapped in this process. */
static bool sodium_loaded(void)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (f == NULL)
        abort();
    char line[512];
    bool found = false;
    while (!found && fgets(line, sizeof line, f) != NULL)
        found = strstr(line, "/libsodium.so") != NULL;
    fclose(f);
    return found;
}

static int fn_sodium_loaded(const msgpack_object *args, msgpack_packer *result, void *ctx)
{
    (void)args;
    (void)ctx;
    return sodium_loaded() ? msgpack_pack_true(result) : msgpack_pack_false(result);
}
TBX_REGISTER(fn_sodium_loaded);

TBX_TEST(abi, workers_do_not_load_libsodium)
{
    msgpack_sbuffer sb;
    pack(&sb, "n");
    tbx_opts o = test_opts(*method);
    o.timeout_s = 30;
    tbx_result r;
    int rc = tbx_call(fn_sodium_loaded, sb.data, sb.size, &o, &r);
    msgpack_sbuffer_destroy(&sb);
    cr_assert_eq(rc, 0, "%s: %s", tbx_err_name(rc), r.message);
    cr_assert_eq(r.value.type, MSGPACK_OBJECT_BOOLEAN);
    cr_assert_not(r.value.via.boolean, "the child loaded libsodium");
    tbx_result_free(&r);
    cr_assert_not(sodium_loaded(), "the caller loaded libsodium");
    tbx_forkserver_stop();
}

TBX_PLAIN_TEST(abi, a_shared_socket_loads_libsodium_on_first_use)
{
    char dir[64] = "/tmp/tbx-abi-XXXXXX", path[96], cmd[128];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/fs.sock", dir);
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.socket_path = path;
    cr_assert_eq(tbx_forkserver_start(&fo), 0);
    /* The creator talks to its server without a handshake. */
    cr_assert_not(sodium_loaded());
    pid_t p = fork();
    cr_assert_geq(p, 0);
    if (p == 0) {
        /* A process that attaches by the socket: the handshake loads it. */
        bool before = sodium_loaded();
        int rc = tbx_forkserver_attach(path, NULL, 0);
        _exit(before ? 1 : rc != 0 ? 2 : sodium_loaded() ? 0 : 3);
    }
    int st;
    cr_assert_eq(waitpid(p, &st, 0), p);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "attaching: status %#x", st);
    tbx_forkserver_stop();
    unsetenv("TIMEBOX_FORKSERVER_SOCKET");
    unsetenv("TIMEBOX_FORKSERVER_KEY");
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}
