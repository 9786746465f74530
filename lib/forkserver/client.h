/*
 * The forkserver's client side, for its launcher (launch_forkserver.c): the
 * connection to the server (client.c) and its warm children.
 */
#ifndef TBX_FORKSERVER_CLIENT_H
#define TBX_FORKSERVER_CLIENT_H

#include "../engine.h"
#include "forkserver.h"

/* fs_client.c, for the forkserver launcher: hands a call's fds to the
 * server (starting or restarting it; 0 or -errno); takes a warm child into
 * *child (1) if one waits (else 0); tops the warm pool up. */
int tbx__fs_client_hand_over(tbx__call *call, uint32_t kind, uint32_t flags, uint32_t arg,
                             const int *fds, int nfds);
/* client_start.c: a hand-over still waiting for the server's start is
 * taken back (its fds closed: the call's control socket reads EOF); 1 if
 * call had one.  Wait for a start under way to end (idle), or start one and
 * wait for its result (wait); forget them in a fork child. */
int tbx__fs_client_withdraw(tbx__call *call);
void tbx__fs_client_start_idle(void);
int tbx__fs_client_start_wait(void);
void tbx__fs_client_start_forget(void);
/* client.c, for client_start.c: connect (start, attach) under the lock;
 * send one hello, bounded by until (0: the send timeout), saying on which
 * connection; drop that connection if it is still the current one. */
int tbx__fs_client_ensure(void);
int tbx__fs_client_send(uint32_t kind, uint32_t flags, uint32_t arg, const int *fds, int nfds,
                        uint64_t until, int *ret_conn, pid_t *ret_server);
void tbx__fs_client_drop(int conn);
/* client_start.c, for client.c: one hello down conn, bounded by until. */
int tbx__fs_client_send_hello(int conn, const tbx__hello *hello, const int *fds, int nfds,
                              uint64_t until);
/* 0 if the connection is gone (the server closed it, by dying): for
 * client_warm.c, whose slots' own sockets may close a little later. */
int tbx__fs_client_alive(void);
/* launch_forkserver.c, shared with the pool's launcher (launch_pool.c),
 * whose processes are server children too: the watch on the control socket
 * (LAUNCHED, EXITED, a server gone), and a signal asked of the server (with
 * the wait for its word after SIGKILL). */
int tbx__fs_client_watch(tbx__call *call, uv_handle_t **h);
/* The control socket's callback (data = the call), for the pool's handle
 * kept on a private loop (launch_pool.c). */
void tbx__fs_client_control_cb(uv_poll_t *h, int status, int events);
void tbx__fs_client_kill(tbx__call *call, int sig);
/* launch_pool.c, for client.c: the pool's options (from a start), its idle
 * processes made up to pool_size (fill) or all let go (drop, with the
 * connection), and a fork child's fresh start (forget). */
void tbx__fs_client_pool_set(unsigned size, unsigned max_calls);
void tbx__fs_client_pool_fill(void);
void tbx__fs_client_pool_drop(void);
void tbx__fs_client_pool_forget(void);
int tbx__fs_client_take_warm(tbx__child *child);
void tbx__fs_client_warm_fill(void);
/* client_warm.c, for client.c: the pool's target (from the start's options),
 * dropping it with the connection, and forgetting it in a fork child. */
void tbx__fs_client_warm_set(unsigned target);
void tbx__fs_client_warm_drop(void);
void tbx__fs_client_warm_forget(void);

#endif /* TBX_FORKSERVER_CLIENT_H */
