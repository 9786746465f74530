/*
 * The bulk memfd: how a big result comes back without crossing the pipe.
 *
 * Through a pipe, every byte of a result is copied twice (into the pipe,
 * out of it) into pages the parent has just faulted in.  Instead the parent
 * gives each call a memfd; a child whose result grows past TBX__BIG_PAYLOAD
 * packs into pages of that memfd, seals it (no more writes, no resizing) and
 * says so in a header.  The parent maps the pages it finds: the result was
 * written once, by the child, and never copied.
 *
 * The seals are what make the pages trustworthy: once F_SEAL_WRITE is set no
 * process, the child's stragglers included, can change a byte, so what the
 * parent checks is what it later unpacks.  A child that could not seal (a
 * grandchild still maps the pages writable) sends its result down the pipe.
 */
#include "internal.h"

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
    int fd = memfd_create("timebox-result", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    return fd >= 0 ? fd : -1; /* none: the pipe carries everything */
}

int tbx__bulk_check_fresh(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size != 0)
        return TBX_EPROTO;
    return fcntl(fd, F_GET_SEALS) == 0 ? 0 : TBX_EPROTO;
}

int tbx__bulk_map(int fd, uint64_t len, char **payload, char **map)
{
    struct stat st;
    int seals = fd >= 0 ? fcntl(fd, F_GET_SEALS) : -1;
    if (seals < 0 || (seals & NEEDED_SEALS) != NEEDED_SEALS || fstat(fd, &st) != 0 ||
        st.st_size < 0 || (uint64_t)st.st_size != len || len == 0)
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
