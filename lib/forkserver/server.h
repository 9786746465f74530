/*
 * The forkserver process: a fresh copy of the program, single-threaded and
 * small, that forks the children of TBX_FORKSERVER calls.
 *
 * It serves its creator's connection (SOCK_SEQPACKET) and, when shared, the
 * connections it accepts on a Unix socket.  An accepted connection is
 * checked before any byte of payload is read: the peer's uid (SO_PEERCRED)
 * must be the server's own or allowed, and it must prove it knows the key
 * (auth.c), and it gets the server's proof in return.  Then each message on a
 * connection brings one call: the server's end of the call's control socket
 * and the write end of its result pipe.  The request (name, args,
 * options) then arrives on the control socket, read as it comes with a time
 * limit, so a stalled client cannot hold the server up.  The server forks the
 * child, which writes its result straight into the caller's pipe; the server
 * never sees those bytes.  It tells the caller LAUNCHED (with a pidfd) and,
 * once it has killed the child's group and reaped it, EXITED.
 *
 * Every byte from a client is untrusted: lengths are checked before anything
 * is allocated, fds are counted, a malformed request gets an error reply, and
 * no fd of a call outlives it here.  The server is the children's parent and
 * enforces each call's deadline itself, as a backstop: a caller that dies or
 * closes its end mid-call has its child killed.  When the creator's
 * connection closes (every process holding it is gone) or SIGTERM comes, the
 * server kills every child, removes its socket and exits.
 */
/*
 * The server's files, one per role, all of them running in the server
 * process (never in the caller): server_clients.c accepts and authenticates
 * connections; server_calls.c reads each call's request and answers on its
 * control socket; server_child.c forks and watches the children;
 * server.c runs the loop and shuts it down.
 */
#ifndef TBX_FORKSERVER_SERVER_H
#define TBX_FORKSERVER_SERVER_H

#include "../cgroup.h"
#include "../child.h"
#include "../loop.h"
#include "forkserver.h"

#define BACKSTOP_SLACK_NS 1000000000ull /* past deadline + grace */
#define DEFAULT_MAX_CHILDREN 1024
#define DEFAULT_REQUEST_TIMEOUT_NS 10000000000ull

typedef struct fs_server fs_server;
typedef struct fs_call fs_call;
typedef struct fs_client fs_client;

/* A connection: the creator's, or one accepted on the shared socket. */
struct fs_client {
    fs_client *next, **prevp;
    fs_server *srv;
    int fd;
    uv_poll_t poll;
    tbx__deadline deadline;    /* the handshake's time limit */
    uint8_t nonce[TBX__NONCE_LEN];
    uid_t uid;
    unsigned children;         /* its calls' children alive */
    unsigned ready : 1, creator : 1, closing : 1;
};

struct fs_call {
    fs_call *next, **prevp;
    fs_server *srv;
    fs_client *client;        /* NULL once its connection has closed */
    int control_fd, result_fd, pidfd;
    int request_fd;           /* warm, pool: where its child reads requests */
    unsigned pool_calls;      /* pool: calls before it retires; 0: none */
    int out_fd, err_fd;       /* captured: the child's 1 and 2 */
    int backtrace_fd;         /* where the child writes a backtrace */
    int bulk_fd;              /* the call's bulk memfd (bulk.c), or -1 */
    unsigned make_bulk : 1;   /* none came, and the result goes down a
                                 socket: the child makes one if it needs it */
    pid_t pid;
    int contain;              /* its TBX_CONTAIN_*, for LAUNCHED */
    tbx__cgroup cgroup;       /* the child's own cgroup, or none */
    uv_poll_t control_poll, exit_poll;
    int handles;
    tbx__deadline deadline;   /* the request's time limit, then the backstop */
    tbx__request rq;
    tbx__control in;          /* a KILL arriving */
    size_t in_got;
    unsigned running : 1, reaped : 1, closing : 1;
    unsigned announced : 1;   /* LAUNCHED is sent (else it goes with EXITED) */
    unsigned traces;           /* TRACE requests served: a trace holds the
                                  server's loop, so a call gets two at most
                                  (its deadline's and its crash's) */
    unsigned pool : 1;        /* its child is a pooled process */
};

#define MAX_STATIC_FDS 64

struct fs_server {
    uv_loop_t loop;
    /* The descriptors (>= 3) open when it began to serve, sorted: anything
     * else a child finds open is a client's or a call's.  -1: not known. */
    int static_fds[MAX_STATIC_FDS];
    int nstatic;
    sigset_t handled;          /* signals whose disposition is not SIG_DFL */
    tbx__fs_config *cfg;
    int listen_fd;
    struct stat socket_st; /* ours, removed at the end if still there */
    unsigned have_socket : 1, have_key : 1;
    uv_poll_t listen_poll;
    uv_signal_t term;
    fs_call *calls;
    fs_client *clients;
    unsigned children, max_children;
    uint64_t request_timeout_ns;
    int subreaper;             /* no cgroups: orphans come to us */
    tbx__deadline keep_timer;  /* never fires: keeps the loop's timerfd */
};


void tbx__fs_server_backstop_cb(tbx__deadline *d);
void tbx__fs_server_call_close(fs_call *c);
void tbx__fs_server_call_new(fs_server *srv, fs_client *client, const tbx__hello *hello,
                     const int fds[TBX__HELLO_MAX_FDS]);
fs_client *tbx__fs_server_client_new(fs_server *srv, int fd, int creator);
void tbx__fs_server_close_child_ends(fs_call *c);
int tbx__fs_server_hello_fds(uint32_t kind, uint32_t flags);
void tbx__fs_server_launch(fs_call *c);
void tbx__fs_server_listen_cb(uv_poll_t *h, int status, int events);
void tbx__fs_server_note_static_fds(fs_server *srv);
void tbx__fs_server_refuse(fs_call *c, int code, const char *why);
void tbx__fs_server_send_control(fs_call *c, uint32_t kind, int32_t code, int fd);
void tbx__fs_server_send(fs_call *c, const tbx__control *m, int fd); /* any message */
void tbx__fs_server_start_child(fs_call *c);
/* server_orphans.c: the server's containment without cgroups.  become:
 * makes the server a child subreaper (0 or -errno).  reap_orphans: reaps
 * its dead children that are not the calls' (calls[0..ncalls): the running
 * calls' children), and when no call runs (ncalls == 0) kills the live
 * ones first, and theirs, until none is left. */
int tbx__fs_server_become_subreaper(void);
void tbx__fs_server_reap_orphans(const pid_t *calls, int ncalls);
/* Kills every child, removes the socket, exits 0. */
__attribute__((noreturn)) void tbx__fs_server_shutdown(fs_server *srv);

#endif /* TBX_FORKSERVER_SERVER_H */
