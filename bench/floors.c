/*
 * Floors for the forkserver and the pool, each the least a design of that
 * kind must do, measured in the same run as timebox's calls:
 *
 *   server floor      a small server, forked before the caller grows, that
 *                     receives a request (the write end of the caller's
 *                     pipe, by SCM_RIGHTS), forks a child that writes its
 *                     16-byte reply straight to the caller and _exits,
 *                     reaps it and says so (one byte back on the socket).
 *                     The caller reads the reply and the "reaped" byte.
 *   persistent floor  a process started once that answers each request
 *                     byte with 16 bytes over a pipe.
 */
#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static const char reply[16] = "0123456789abcdef";

static int recv_fd(int sock)
{
    char b;
    struct iovec iov = {&b, 1};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } u;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                       .msg_controllen = sizeof u.buf};
    ssize_t n;
    while ((n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
        ;
    struct cmsghdr *c = n > 0 ? CMSG_FIRSTHDR(&m) : NULL;
    if (c == NULL || c->cmsg_type != SCM_RIGHTS)
        return -1;
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

static void send_fd(int sock, int fd)
{
    char b = 'r';
    struct iovec iov = {&b, 1};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                       .msg_controllen = sizeof u.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(sock, &m, MSG_NOSIGNAL) != 1)
        bench_die("sendmsg");
}

static __attribute__((noreturn)) void server_loop(int sock)
{
    for (;;) {
        int fd = recv_fd(sock);
        if (fd < 0)
            _exit(0); /* the caller is gone */
        pid_t pid = fork();
        if (pid == 0)
            _exit(write(fd, reply, sizeof reply) == sizeof reply ? 0 : 1);
        close(fd);
        int st;
        if (pid < 0 || waitpid(pid, &st, 0) != pid || write(sock, "x", 1) != 1)
            _exit(1);
    }
}

bench_floor_server bench_server_floor_start(void)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
        bench_die("socketpair");
    pid_t pid = fork();
    if (pid < 0)
        bench_die("fork");
    if (pid == 0) {
        close(sv[0]);
        server_loop(sv[1]);
    }
    close(sv[1]);
    return (bench_floor_server){pid, sv[0], -1};
}

double bench_server_floor_us(const bench_floor_server *s)
{
    int fds[2];
    char buf[16], b;
    uint64_t t0 = bench_now_ns();
    if (pipe2(fds, O_CLOEXEC) != 0)
        bench_die("pipe2");
    send_fd(s->fd, fds[1]);
    close(fds[1]);
    size_t got = 0;
    while (got < sizeof buf) {
        ssize_t n = read(fds[0], buf + got, sizeof buf - got);
        if (n <= 0)
            bench_die("read reply");
        got += (size_t)n;
    }
    if (read(s->fd, &b, 1) != 1)
        bench_die("read reaped");
    close(fds[0]);
    return (double)(bench_now_ns() - t0) / 1e3;
}

/* Forks a child that answers each request byte on a fresh pipe with 16
 * bytes on another (once: the first, then it exits); *req is the request
 * pipe's write end, *res the answer pipe's read end. */
static pid_t fork_answerer(int *req, int *res, int once)
{
    pid_t pid = bench_fork_duplex(req, res);
    if (pid == 0) {
        char b;
        while (read(*req, &b, 1) == 1)
            if (write(*res, reply, sizeof reply) != sizeof reply || once)
                _exit(0);
        _exit(0);
    }
    return pid;
}

bench_floor_server bench_persistent_floor_start(void)
{
    bench_floor_server s = {0, -1, -1};
    s.pid = fork_answerer(&s.fd, &s.fd2, 0);
    return s;
}

double bench_prefork_floor_us(void)
{
    int req, res;
    pid_t pid = fork_answerer(&req, &res, 1);
    usleep(200); /* it is idle and waiting, as a warm child is */
    uint64_t t0 = bench_now_ns();
    if (write(req, "x", 1) != 1)
        bench_die("write");
    bench_read16_reap(res, pid);
    double us = (double)(bench_now_ns() - t0) / 1e3;
    close(req);
    close(res);
    return us;
}

double bench_persistent_floor_us(const bench_floor_server *s)
{
    char buf[16];
    uint64_t t0 = bench_now_ns();
    if (write(s->fd, "x", 1) != 1)
        bench_die("write");
    size_t got = 0;
    while (got < sizeof buf) {
        ssize_t n = read(s->fd2, buf + got, sizeof buf - got);
        if (n <= 0)
            bench_die("read");
        got += (size_t)n;
    }
    return (double)(bench_now_ns() - t0) / 1e3;
}

void bench_floor_stop(bench_floor_server *s)
{
    close(s->fd);
    if (s->fd2 >= 0)
        close(s->fd2);
    int st;
    while (waitpid(s->pid, &st, 0) < 0 && errno == EINTR)
        ;
    s->pid = 0;
}
