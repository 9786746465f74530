/*
 * TBX_AUTO: the method chosen per call from the caller's size and threads.
 *
 * A fork copies the caller's page tables, a cost that grows with its resident
 * size (about 19 us per MiB on the development VM), and a fork of a threaded
 * caller can deadlock in the child on a lock another thread held.  A small
 * single-threaded caller forks (no dearer there than a forkserver call, and
 * fn needs no registration); any other takes the pool when this process set
 * one up (tbx_forkserver_opts.pool_size), else the forkserver.  The row has
 * only a resolve: the engine uses the row it returns.
 */
#include "engine.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Threads and resident bytes of this process, from /proc/self/stat (one
 * read); -1 if it cannot be read. */
static int caller_shape(long *threads, size_t *rss)
{
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = tbx__read(fd, buf, sizeof buf - 1);
    tbx__close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    /* The command name may hold spaces and ')': fields are counted from the
     * last ')' on, where field 3 (the state) starts; threads is field 20,
     * the resident pages field 24. */
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    long v[22];
    int k = 0;
    for (p++; k < 22 && *p != '\0'; k++) {
        while (*p == ' ')
            p++;
        v[k] = strtol(p, &p, 10);
        if (k == 0) /* the state, a letter: strtol read nothing */
            while (*p != ' ' && *p != '\0')
                p++;
    }
    if (k < 22)
        return -1;
    *threads = v[17];
    *rss = (size_t)v[21] * (size_t)sysconf(_SC_PAGESIZE);
    return 0;
}

static const tbx__launcher *auto_resolve(tbx__call *c)
{
    long threads;
    size_t rss;
    const tbx__launcher *pool = tbx__launcher_of(TBX_POOL);
    if (caller_shape(&threads, &rss) == 0 && threads == 1 && rss < TBX_AUTO_FORK_MAX_RSS)
        c->opts.method = TBX_FORK;
    else if (pool != NULL && pool->ready != NULL && pool->ready())
        c->opts.method = TBX_POOL;
    else
        c->opts.method = TBX_FORKSERVER;
    return tbx__launcher_of(c->opts.method);
}

const tbx__launcher tbx__launch_auto = {
    .name = "auto",
    .resolve = auto_resolve,
};
