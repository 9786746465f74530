/*
 * The forkserver's connections: the creator's, and those accepted on a shared
 * socket, each checked (uid, then the key, both ways: auth.c) before any call
 * is read from it.  Runs in the server process.
 */
#include "forkserver/server.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------ connections */

static void log_refusal(fs_server *srv, const char *what, uid_t uid)
{
    if (srv->cfg->verbose)
        fprintf(stderr, "timebox forkserver: refused a client (uid %u): %s\n", (unsigned)uid,
                what);
}

static void client_free_cb(uv_handle_t *h)
{
    fs_client *k = h->data;
    tbx__close(k->fd);
    free(k);
}

static void client_close(fs_client *k)
{
    if (k->closing)
        return;
    k->closing = 1;
    tbx__deadline_stop(&k->deadline);
    *k->prevp = k->next;
    if (k->next != NULL)
        k->next->prevp = k->prevp;
    /* Its calls go on: each ends with its own control socket. */
    for (fs_call *c = k->srv->calls; c != NULL; c = c->next)
        if (c->client == k)
            c->client = NULL;
    uv_close((uv_handle_t *)&k->poll, client_free_cb);
}


/* The client's answer to our challenge: if right, our proof in return. */
static void handshake(fs_client *k)
{
    tbx__response resp;
    tbx__proof proof;
    int nfds = 0;
    ssize_t n = tbx__recv_fds(k->fd, &resp, sizeof resp, NULL, &nfds, MSG_DONTWAIT);
    if (n == -EAGAIN)
        return;
    if (n != (ssize_t)sizeof resp || resp.magic != TBX__AUTH_MAGIC ||
        tbx__auth_check(k->srv->cfg->key, "timebox client", k->nonce, resp.proof) != 0) {
        log_refusal(k->srv, "wrong key or malformed handshake", k->uid);
        client_close(k);
        return;
    }
    proof.magic = TBX__AUTH_MAGIC;
    if (tbx__auth_prove(k->srv->cfg->key, "timebox server", resp.nonce, proof.proof) != 0 ||
        tbx__send_fds(k->fd, &proof, sizeof proof, NULL, 0, MSG_DONTWAIT) != (ssize_t)sizeof proof) {
        client_close(k);
        return;
    }
    tbx__deadline_stop(&k->deadline);
    k->ready = 1;
}

static void client_cb(uv_poll_t *h, int status, int events)
{
    fs_client *k = h->data;
    fs_server *srv = k->srv;
    TBX__UNUSED(status);
    TBX__UNUSED(events);
    if (!k->ready) {
        handshake(k);
        return;
    }
    for (;;) {
        tbx__hello hello;
        int fds[TBX__HELLO_MAX_FDS] = {-1, -1, -1, -1, -1, -1}, nfds = TBX__HELLO_MAX_FDS;
        ssize_t n = tbx__recv_fds(k->fd, &hello, sizeof hello, fds, &nfds, MSG_DONTWAIT);
        if (n == -EAGAIN)
            return;
        if (n == -EBADMSG)
            continue; /* its fds are already closed */
        if (n <= 0) {
            /* The creator's connection closes when every process that held
             * it is gone: so is the reason to serve. */
            if (k->creator)
                tbx__fs_server_shutdown(srv);
            client_close(k);
            return;
        }
        int want = tbx__fs_server_hello_fds(hello.kind, hello.flags);
        if ((size_t)n != sizeof hello || hello.magic != TBX__HELLO_MAGIC ||
            (hello.max_calls != 0 && hello.kind != TBX__HELLO_POOL) || nfds != want) {
            while (nfds > 0)
                tbx__close(fds[--nfds]);
            continue;
        }
        tbx__fs_server_call_new(srv, k, &hello, fds);
        if (k->closing)
            return;
    }
}

static void handshake_timeout_cb(tbx__deadline *d)
{
    fs_client *k = (fs_client *)((char *)d - offsetof(fs_client, deadline));
    log_refusal(k->srv, "no handshake in time", k->uid);
    client_close(k);
}

fs_client *tbx__fs_server_client_new(fs_server *srv, int fd, int creator)
{
    fs_client *k = calloc(1, sizeof *k);
    if (k == NULL || uv_poll_init(&srv->loop, &k->poll, fd) != 0) {
        free(k);
        tbx__close(fd);
        return NULL;
    }
    k->srv = srv;
    k->fd = fd;
    k->creator = creator;
    k->uid = geteuid();
    k->ready = creator; /* the creator made the key: it needs no proof */
    k->poll.data = k;
    k->next = srv->clients;
    k->prevp = &srv->clients;
    if (srv->clients != NULL)
        srv->clients->prevp = &k->next;
    srv->clients = k;
    tbx__deadline_init(&k->deadline, handshake_timeout_cb);
    uv_poll_start(&k->poll, UV_READABLE, client_cb);
    return k;
}

static int uid_allowed(const fs_server *srv, uid_t uid)
{
    if (uid == geteuid())
        return 1;
    for (size_t i = 0; i < srv->cfg->nallow; i++)
        if (srv->cfg->allow[i] == uid)
            return 1;
    return 0;
}

void tbx__fs_server_listen_cb(uv_poll_t *h, int status, int events)
{
    fs_server *srv = h->data;
    TBX__UNUSED(status);
    TBX__UNUSED(events);
    for (;;) {
        int fd = accept4(srv->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return; /* EAGAIN, or out of fds: the next connection retries */
        }
        /* Who it is, before a single byte of payload is read. */
        struct ucred cred;
        socklen_t len = sizeof cred;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
            !uid_allowed(srv, cred.uid)) {
            log_refusal(srv, "uid not allowed", len == sizeof cred ? cred.uid : (uid_t)-1);
            tbx__close(fd);
            continue;
        }
        fs_client *k = tbx__fs_server_client_new(srv, fd, 0);
        if (k == NULL)
            continue;
        k->uid = cred.uid;
        tbx__challenge ch = {TBX__AUTH_MAGIC, {0}};
        if (tbx__auth_nonce(k->nonce) != 0 ||
            tbx__deadline_start(&k->deadline, &srv->loop,
                                tbx__now_ns() + srv->request_timeout_ns) != 0) {
            client_close(k);
            continue;
        }
        memcpy(ch.nonce, k->nonce, sizeof ch.nonce);
        if (tbx__send_fds(fd, &ch, sizeof ch, NULL, 0, MSG_DONTWAIT) != (ssize_t)sizeof ch)
            client_close(k);
    }
}
