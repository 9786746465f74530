/*
 * The fixture's look at the forkserver, from outside: when a test's calls
 * are over, and before the server is stopped (by the fixture, or by a test
 * that stops it itself), nothing of those calls may be left in the server.
 * Stopping the server kills its children and closes its descriptors, so a
 * check made only after tbx_forkserver_stop() would never see what a
 * long-lived server gathers call after call.
 *
 * The server is found by tbx_forkserver_pid(), and read in /proc.  The
 * descriptor count it had when it began serving cannot be known from here
 * (the test's first call usually starts it), so each descriptor and each
 * child is checked for an owner instead:
 *
 *   a child        is running (not a zombie left unreaped) and holds an
 *                  object this process holds too: a warm child, whose call
 *                  this process has not made yet.  A call's child outlives
 *                  its call otherwise, as this process has closed its end.
 *   a pidfd        refers to such a child (not to one reaped, nor to one
 *                  that should be gone).
 *   a socket       is listening, or its peer is still open (the creator's
 *                  connection, a client's, a warm call's control socket);
 *                  a call's control socket whose caller has closed its end
 *                  is left over.
 *   a pipe, memfd  is held twice by the server (both ends of its own pipe)
 *                  or by this process too (a warm call's); otherwise it is
 *                  the end of a finished call's pipe or memory.
 *
 * Other anonymous descriptors (the loop's epoll, eventfd) are the server's
 * own.  The server reaps and closes asynchronously, after the caller has
 * its result: the check polls for a while before it fails.
 */
#define _GNU_SOURCE
#include "helpers.h"

#include <errno.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* How long the server may take to reap and close what a call left: far
 * more than it needs, on a machine shared with other builds. */
#define SETTLE_S 5.0
#define MAX_IDS 4096
#define MAX_KIDS 256
#define TCP_LISTEN_STATE 10 /* a listening socket's udiag_state */

struct ident {
    dev_t dev;
    ino_t ino;
};

struct leftovers {
    int n;
    size_t off;
    char what[4096];
};

static void note(struct leftovers *l, const char *fmt, ...)
{
    l->n++;
    if (l->off + 2 >= sizeof l->what)
        return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(l->what + l->off, sizeof l->what - l->off, fmt, ap);
    va_end(ap);
    if (w > 0)
        l->off += (size_t)w < sizeof l->what - l->off ? (size_t)w : sizeof l->what - l->off - 1;
}

static bool ident_of(pid_t pid, int fd, struct ident *id)
{
    char path[64];
    struct stat st;
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)pid, fd);
    if (stat(path, &st) != 0)
        return false;
    *id = (struct ident){st.st_dev, st.st_ino};
    return true;
}

/* The objects process pid's descriptors (>= 3) refer to, into ids[0..max). */
static int idents_of(pid_t pid, struct ident *ids, int max)
{
    int fds[MAX_FDS];
    int nfds = list_fds(pid, fds, MAX_FDS), n = 0;
    for (int i = 0; i < nfds && i < MAX_FDS && n < max; i++) {
        if (fds[i] < 3)
            continue;
        /* Every anonymous descriptor (epoll, eventfd, pidfd) is one inode:
         * sharing it says nothing. */
        char target[64];
        proc_fd_target(pid, fds[i], target, sizeof target);
        if (strncmp(target, "anon_inode:", 11) != 0 && ident_of(pid, fds[i], &ids[n]))
            n++;
    }
    return n;
}

static int count_ident(const struct ident *ids, int n, struct ident id)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        k += ids[i].dev == id.dev && ids[i].ino == id.ino;
    return k;
}

/* Asks the kernel (sock_diag) for the Unix socket with inode ino: its state
 * and its peer's inode (0 if it has none, or the peer is closed).  False if
 * it did not answer. */
static bool unix_socket(unsigned ino, int *state, unsigned *peer)
{
    int s = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (s < 0)
        return false;
    struct {
        struct nlmsghdr nlh;
        struct unix_diag_req req;
    } rq;
    memset(&rq, 0, sizeof rq);
    rq.nlh.nlmsg_len = sizeof rq;
    rq.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    rq.nlh.nlmsg_flags = NLM_F_REQUEST;
    rq.req.sdiag_family = AF_UNIX;
    rq.req.udiag_states = ~0u;
    rq.req.udiag_ino = ino;
    rq.req.udiag_show = UDIAG_SHOW_PEER;
    rq.req.udiag_cookie[0] = rq.req.udiag_cookie[1] = ~0u; /* no cookie */
    long buf[1024];
    ssize_t n = -1;
    if (send(s, &rq, sizeof rq, 0) == (ssize_t)sizeof rq) {
        do
            n = recv(s, buf, sizeof buf, 0);
        while (n < 0 && errno == EINTR);
    }
    close(s);
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    if (n < 0 || !NLMSG_OK(h, (size_t)n) || h->nlmsg_type != SOCK_DIAG_BY_FAMILY)
        return false;
    struct unix_diag_msg *m = NLMSG_DATA(h);
    *state = m->udiag_state;
    *peer = 0;
    int len = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof *m));
    for (struct rtattr *a = (struct rtattr *)(m + 1); RTA_OK(a, len); a = RTA_NEXT(a, len))
        if (a->rta_type == UNIX_DIAG_PEER)
            memcpy(peer, RTA_DATA(a), sizeof *peer);
    return true;
}

/* The process a pidfd (descriptor fd of pid) refers to: -1 once it is
 * reaped, 0 if /proc does not say. */
static pid_t pidfd_target(pid_t pid, int fd)
{
    char path[64], line[128];
    snprintf(path, sizeof path, "/proc/%d/fdinfo/%d", (int)pid, fd);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return 0;
    int target = 0;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "Pid: %d", &target) == 1)
            break;
    fclose(f);
    return (pid_t)target;
}

/* Does process pid hold an object that one of ids (this process's) is? */
static bool shares_with(pid_t pid, const struct ident *ids, int nids)
{
    static struct ident its[MAX_IDS];
    int n = idents_of(pid, its, MAX_IDS);
    for (int i = 0; i < n; i++)
        if (count_ident(ids, nids, its[i]) > 0)
            return true;
    return false;
}

/* The server's children: those still held (warm) into held[], the rest
 * noted as left over. */
static int check_children(pid_t server, const struct ident *mine, int nmine, pid_t *held,
                          struct leftovers *l)
{
    pid_t kids[MAX_KIDS];
    int n = list_children_of(server, kids, MAX_KIDS), nheld = 0;
    if (n > MAX_KIDS)
        note(l, "  %d children (listed: %d)\n", n, MAX_KIDS);
    for (int i = 0; i < n && i < MAX_KIDS; i++) {
        char st = proc_state(kids[i]);
        if (st == 'Z')
            note(l, "  child %d: a zombie it has not reaped\n", (int)kids[i]);
        else if (st != 0 && shares_with(kids[i], mine, nmine))
            held[nheld++] = kids[i];
        else if (st != 0)
            note(l, "  child %d (%c): running, of no call this process holds\n", (int)kids[i], st);
    }
    return nheld;
}

/* One descriptor of the server, by the rules at the top. */
static void check_fd(pid_t server, int fd, const struct ident *its, int nits,
                     const struct ident *mine, int nmine, const pid_t *held, int nheld,
                     struct leftovers *l)
{
    char target[256];
    unsigned ino;
    struct ident id;
    proc_fd_target(server, fd, target, sizeof target);
    if (strstr(target, "pidfd") != NULL) {
        pid_t p = pidfd_target(server, fd);
        for (int i = 0; i < nheld; i++)
            if (held[i] == p)
                return;
        note(l, "  fd %d: a pidfd of %d, not of a child still held\n", fd, (int)p);
    } else if (strncmp(target, "anon_inode:", 11) == 0) {
        return; /* the loop's own: epoll, eventfd */
    } else if (sscanf(target, "socket:[%u]", &ino) == 1) {
        int state;
        unsigned peer;
        if (!unix_socket(ino, &state, &peer))
            note(l, "  fd %d: %s, a socket the kernel says nothing of\n", fd, target);
        else if (state != TCP_LISTEN_STATE && peer == 0)
            note(l, "  fd %d: %s, a socket whose peer is closed\n", fd, target);
    } else if (strncmp(target, "pipe:", 5) == 0 || strncmp(target, "/memfd:", 7) == 0) {
        if (!ident_of(server, fd, &id))
            return; /* closed meanwhile */
        if (count_ident(its, nits, id) < 2 && count_ident(mine, nmine, id) == 0)
            note(l, "  fd %d: %s, held by no one else\n", fd, target);
    }
}

static void server_leftovers(pid_t server, struct leftovers *l)
{
    static struct ident mine[MAX_IDS], its[MAX_IDS];
    pid_t held[MAX_KIDS];
    int nmine = idents_of(getpid(), mine, MAX_IDS);
    int nits = idents_of(server, its, MAX_IDS);
    int nheld = check_children(server, mine, nmine, held, l);
    int fds[MAX_FDS];
    int nfds = list_fds(server, fds, MAX_FDS); /* -1: gone meanwhile */
    for (int i = 0; i < nfds && i < MAX_FDS; i++)
        if (fds[i] >= 3)
            check_fd(server, fds[i], its, nits, mine, nmine, held, nheld, l);
}

void check_forkserver(void)
{
    pid_t server = tbx_forkserver_pid();
    if (server <= 0)
        return;
    double end = now_s() + SETTLE_S;
    struct leftovers l;
    for (;;) {
        char st = proc_state(server);
        if (st == 0 || st == 'Z' || st == 'X')
            return; /* dead: it holds nothing any more */
        memset(&l, 0, sizeof l);
        server_leftovers(server, &l);
        if (l.n == 0)
            return;
        if (now_s() > end)
            break;
        sleep_s(0.01);
    }
    cr_assert_fail("the forkserver %d still holds %d thing(s) of finished calls after %.0f s:\n%s",
                   (int)server, l.n, SETTLE_S, l.what);
}

void stop_forkserver(void)
{
    check_forkserver();
    tbx_forkserver_stop();
}

void start_pool(unsigned size, unsigned max_calls)
{
    tbx_forkserver_opts fo;
    tbx_forkserver_opts_init(&fo);
    fo.pool_size = size;
    fo.pool_max_calls = max_calls;
    cr_assert_eq(tbx_forkserver_start(&fo), 0);
}
