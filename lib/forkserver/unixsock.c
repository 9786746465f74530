/*
 * The shared forkserver's Unix socket: made so that nobody else gets in, and
 * the client's half of the handshake.
 *
 * The socket lives in a directory of mode 0700 that belongs to the server's
 * user, and is bound under umask 0177, so it is mode 0600 from the moment it
 * exists: there is no window between bind and chmod.  Only when other uids
 * are allowed in may the directory be searchable by others (never writable),
 * and the socket then becomes 0666 after the bind.  The abstract namespace
 * (which has no permissions at all) is never used.
 */
#include "forkserver/forkserver.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int make_address(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (path == NULL || path[0] == '\0')
        return TBX_EINVAL;
    if (strlen(path) >= sizeof sa->sun_path)
        return -ENAMETOOLONG;
    strcpy(sa->sun_path, path);
    return 0;
}

/* The socket's directory: ours, and closed to everyone else (or, when other
 * uids are allowed in, at least closed to their writing: nobody else may
 * replace the socket).  A refusal says what is wrong in why. */
static int check_directory(const char *path, int shared, char *why, size_t why_len)
{
    char *copy = strdup(path);
    if (copy == NULL)
        return -ENOMEM;
    const char *dir = dirname(copy);
    struct stat st;
    int rc = 0;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        rc = -errno;
        snprintf(why, why_len, "cannot make the directory %s: %s", dir, strerror(-rc));
    } else if (lstat(dir, &st) != 0) {
        rc = -errno;
        snprintf(why, why_len, "cannot examine the directory %s: %s", dir, strerror(-rc));
    } else if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() ||
               (st.st_mode & (shared ? 022 : 077)) != 0) {
        rc = -EPERM; /* someone else could reach, or replace, the socket */
        snprintf(why, why_len,
                 "%s is %s of mode %04o, owner uid %d: the socket's directory must be a "
                 "directory of uid %d, closed to %s (mode %s)",
                 dir, S_ISDIR(st.st_mode) ? "a directory" : "not a directory",
                 (unsigned)(st.st_mode & 07777), (int)st.st_uid, (int)geteuid(),
                 shared ? "others' writing" : "everyone else", shared ? "0755 at most" : "0700");
    }
    free(copy);
    return rc;
}

/* Whether a server answers on the socket at sa: 1 (it is live), 0 (nobody
 * listens: a socket left by a server that died). */
static int socket_is_live(const struct sockaddr_un *sa)
{
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return 1; /* cannot tell: leave it alone */
    int rc;
    do
        rc = connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0 ? errno : 0;
    while (rc == EINTR);
    tbx__close(fd);
    return rc != ECONNREFUSED && rc != ENOENT;
}

int tbx__fs_server_listen(const char *path, int shared, struct stat *ret_st, char *why,
                          size_t why_len)
{
    struct sockaddr_un sa;
    struct stat st;
    int rc = make_address(path, &sa);
    if (rc == -ENAMETOOLONG)
        snprintf(why, why_len, "the socket path %s is too long (at most %zu bytes)", path,
                 sizeof sa.sun_path - 1);
    else if (rc != 0)
        snprintf(why, why_len, "no socket path");
    if (rc == 0)
        rc = check_directory(path, shared, why, why_len);
    if (rc != 0)
        return rc;
    /* A socket left by a server of ours that died is replaced; a live one,
     * or anything else at that path, is not ours to remove. */
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode) || st.st_uid != geteuid()) {
            snprintf(why, why_len, "%s exists and is not a socket of uid %d (mode %04o, owner uid %d)",
                     path, (int)geteuid(), (unsigned)(st.st_mode & 07777), (int)st.st_uid);
            return -EEXIST;
        }
        if (socket_is_live(&sa)) {
            snprintf(why, why_len, "%s is in use: another server listens there", path);
            return -EADDRINUSE;
        }
        if (unlink(path) != 0) {
            rc = -errno;
            snprintf(why, why_len, "cannot remove the stale socket %s: %s", path, strerror(-rc));
            return rc;
        }
    }
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    mode_t old = umask(0177); /* mode 0600 from the moment it exists */
    rc = bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ? -errno : 0;
    umask(old);
    /* Other uids allowed in must be able to connect; the peer check and the
     * key keep out the rest.  Widening after the bind opens no window. */
    if (rc == 0 && shared && chmod(path, 0666) != 0)
        rc = -errno;
    if (rc == 0 && listen(fd, 128) != 0)
        rc = -errno;
    /* What the server removes when it ends: this socket, not one that has
     * replaced it since. */
    if (rc == 0 && lstat(path, ret_st) != 0)
        rc = -errno;
    if (rc != 0) {
        snprintf(why, why_len, "cannot listen on %s: %s", path, strerror(-rc));
        tbx__close(fd);
        return rc;
    }
    return fd;
}

/* One whole SEQPACKET message of exactly len bytes, and no fds, before the
 * deadline. */
static int recv_exact(int fd, void *buf, size_t len, uint64_t until)
{
    for (;;) {
        uint64_t now = tbx__now_ns();
        if (now >= until)
            return -ETIMEDOUT;
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, (int)((until - now) / 1000000u) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -ETIMEDOUT;
        int nfds = 0;
        ssize_t n = tbx__recv_fds(fd, buf, len, NULL, &nfds, MSG_DONTWAIT);
        if (n == -EAGAIN)
            continue;
        if (n < 0)
            return (int)n;
        return (size_t)n == len ? 0 : -ECONNRESET; /* 0: closed on us */
    }
}

int tbx__fs_client_connect(const char *path, const uint8_t key[TBX__KEY_LEN], double timeout_s)
{
    struct sockaddr_un sa;
    int rc = make_address(path, &sa);
    if (rc != 0)
        return rc;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    uint64_t until = tbx__now_ns() + (uint64_t)(timeout_s * 1e9);
    tbx__challenge ch;
    tbx__response resp;
    tbx__proof proof;
    do
        rc = connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ? -errno : 0;
    while (rc == -EINTR);
    if (rc == 0) {
        rc = recv_exact(fd, &ch, sizeof ch, until);
        if (rc == -ECONNRESET) /* closed before any word: our uid is not let in */
            rc = -EACCES;
    }
    if (rc == 0 && ch.magic != TBX__AUTH_MAGIC)
        rc = TBX_EPROTO;
    if (rc == 0) {
        resp.magic = TBX__AUTH_MAGIC;
        rc = tbx__auth_prove(key, "timebox client", ch.nonce, resp.proof);
        if (rc == 0)
            rc = tbx__auth_nonce(resp.nonce);
    }
    if (rc == 0) {
        ssize_t n = tbx__send_fds(fd, &resp, sizeof resp, NULL, 0, 0);
        rc = n < 0 ? (int)n : 0;
    }
    /* A server that does not know the key closes instead of proving it. */
    if (rc == 0)
        rc = recv_exact(fd, &proof, sizeof proof, until);
    if (rc == -ECONNRESET)
        rc = TBX_EPROTO;
    if (rc == 0 && (proof.magic != TBX__AUTH_MAGIC ||
                    tbx__auth_check(key, "timebox server", resp.nonce, proof.proof) != 0))
        rc = TBX_EPROTO;
    if (rc != 0) {
        tbx__close(fd);
        return rc;
    }
    return fd;
}
