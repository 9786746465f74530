/*
 * Passing descriptors with SCM_RIGHTS, counted.  A receiver takes exactly
 * the descriptors it asked for room for: a message that brings more, or whose
 * control data was cut short, has every descriptor it brought closed, so a
 * hostile or confused peer cannot make us leak them.  Every received
 * descriptor is close-on-exec from birth (MSG_CMSG_CLOEXEC).
 */
#include "os.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_FDS 6

ssize_t tbx__send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds,
                      int flags)
{
    struct iovec iov = {(void *)buf, len};
    return tbx__sendv_fds(sock, &iov, 1, fds, nfds, flags);
}

ssize_t tbx__sendv_fds(int sock, const struct iovec *iov, int iovcnt, const int *fds, int nfds,
                       int flags)
{
    union {
        char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = (struct iovec *)iov;
    msg.msg_iovlen = (size_t)iovcnt;
    if (nfds < 0 || nfds > MAX_FDS)
        return -EINVAL;
    if (nfds > 0) {
        memset(&u, 0, sizeof u);
        msg.msg_control = u.buf;
        msg.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
    }
    ssize_t n;
    do
        n = sendmsg(sock, &msg, MSG_NOSIGNAL | flags);
    while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

ssize_t tbx__recv_fds(int sock, void *buf, size_t len, int *fds, int *nfds, int flags)
{
    struct iovec iov = {buf, len};
    return tbx__recvv_fds(sock, &iov, 1, fds, nfds, flags);
}

ssize_t tbx__recvv_fds(int sock, struct iovec *iov, int iovcnt, int *fds, int *nfds, int flags)
{
    union {
        char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg;
    int want = *nfds, got = 0, bad = 0;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t)iovcnt;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof u.buf;
    ssize_t n;
    do
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | flags);
    while (n < 0 && errno == EINTR);
    *nfds = 0;
    if (n < 0)
        return -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
            bad = 1;
            continue;
        }
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            if (got < want)
                fds[got++] = fd;
            else {
                tbx__close(fd);
                bad = 1;
            }
        }
    }
    if (bad || (msg.msg_flags & MSG_CTRUNC)) {
        while (got > 0)
            tbx__close(fds[--got]);
        return -EBADMSG;
    }
    *nfds = got;
    return n;
}
