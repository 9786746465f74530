/*
 * The bulk memfd: how a big result comes back without crossing the pipe,
 * and big args go to a fresh program or the forkserver without crossing a
 * socket.
 *
 * Through a pipe, every byte of a result is copied twice (into the pipe,
 * out of it) into pages the parent has just faulted in.  Instead a child
 * whose result grows past TBX__BIG_PAYLOAD packs into pages of a memfd,
 * seals it (no more writes, no resizing) and says so in a header.  A fork or
 * spawn child makes that memfd then and sends it with the header over its
 * result socket; the forkserver's caller gives each call one up front.  The parent maps the pages it finds: the result was
 * written once, by the child, and never copied.
 *
 * The seals are what make the pages trustworthy: once F_SEAL_WRITE is set no
 * process, the child's stragglers included, can change a byte, so what the
 * parent checks is what it later unpacks.  A child that could not seal (a
 * grandchild still maps the pages writable) sends its result down the pipe.
 *
 * Args of a spawn or forkserver call go the other way the same way: the
 * caller writes them into a memfd of their own, seals it, and passes it with
 * the request (SCM_RIGHTS); the worker or the server maps it.  (With fork
 * the child already shares the caller's memory: nothing to do.)
 */
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define NEEDED_SEALS (F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK)

int tbx__bulk_create(uint64_t max_result)
{
    if (max_result < TBX__BIG_PAYLOAD)
        return -1; /* no result of that size would be accepted */
    int fd = tbx__sys.memfd_create("timebox-result", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    return fd >= 0 ? fd : -1; /* none: the pipe carries everything */
}

int tbx__bulk_check_fresh(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size != 0)
        return TBX_EPROTO;
    return fcntl(fd, F_GET_SEALS) == 0 ? 0 : TBX_EPROTO;
}

/* 0 if fd is sealed against writes and resizing and holds exactly len
 * (> 0) bytes: then what is checked in it stays checked. */
static int check_sealed(int fd, uint64_t len)
{
    struct stat st;
    int seals = fd >= 0 ? fcntl(fd, F_GET_SEALS) : -1;
    if (seals < 0 || (seals & NEEDED_SEALS) != NEEDED_SEALS || fstat(fd, &st) != 0 ||
        st.st_size < 0 || (uint64_t)st.st_size != len || len == 0)
        return TBX_EPROTO;
    return 0;
}

int tbx__bulk_map(int fd, uint64_t len, char **payload, char **map)
{
    if (check_sealed(fd, len) != 0)
        return TBX_EPROTO;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (len > SIZE_MAX - page)
        return -ENOMEM;
    size_t total = page + (size_t)len;
    /* One reservation for both: our page (the size, for munmap) and, right
     * after it, the memfd's pages, read-only and populated now so that the
     * caller's first reads fault on nothing. */
    char *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return -errno;
    if (mmap(base + page, (size_t)len, PROT_READ, MAP_PRIVATE | MAP_FIXED | MAP_POPULATE, fd, 0) ==
        MAP_FAILED) {
        int err = -errno;
        (void)munmap(base, total);
        return err;
    }
    memcpy(base, &total, sizeof total); /* for tbx__payload_free */
    *map = base;
    *payload = base + page;
    return 0;
}

int tbx__bulk_args(const void *args, size_t len)
{
    if (len < TBX__BIG_PAYLOAD)
        return -1;
    int fd = tbx__sys.memfd_create("timebox-args", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -1;
    const char *p = args;
    for (size_t off = 0; off < len;) {
        ssize_t w = pwrite(fd, p + off, len - off, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            tbx__close(fd);
            return -1; /* ENOSPC, a memory limit: the socket, then */
        }
        off += (size_t)w;
    }
    if (fcntl(fd, F_ADD_SEALS, NEEDED_SEALS | F_SEAL_SEAL) != 0) {
        tbx__close(fd);
        return -1;
    }
    return fd;
}

char *tbx__bulk_map_args(int fd, uint64_t len)
{
    if (check_sealed(fd, len) != 0 || len > SIZE_MAX)
        return NULL;
    /* Not populated: the function faults in what it reads (16 pages at a
     * time, the kernel's fault-around), and a forkserver child would not
     * inherit the server's page tables for these pages anyway. */
    void *p = mmap(NULL, (size_t)len, PROT_READ, MAP_PRIVATE, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}
