/*
 * The files a trace has read, kept for the next traces (trace_impl.h).
 *
 * Naming frames costs nearly all of a trace: reading a library's symbols and
 * line tables (libc's, from libc6-dbg, about 80 ms of CPU) dwarfs stopping
 * the threads and unwinding them (about 2 ms).  The unwinding needs the live
 * process (its registers, its stack, its mappings) and is done afresh by each
 * trace; the naming needs only the files, which the next child of the same
 * program maps again: a fork child or a server's child at the same
 * addresses, a spawned worker at others.  So each file is read once, into a
 * Dwfl of its own that holds that one module (libdwfl cannot share a module
 * between two Dwfl handles), placed where the first process to meet it
 * mapped it; an address of a later process is moved by the difference of
 * the two load biases.  The cache holds no descriptor: the file is read
 * from memory, mapped whole.
 *
 * A file is known by its build-id (the same code, the same debug
 * information, whatever its path), or, without one, by its device, inode,
 * size and modification time.  At most TBX__TRACE_CACHE_FILES files are kept,
 * of at most TBX__TRACE_CACHE_BYTES together once the traces using them are
 * done, the least recently used ones dropped first: a file weighs what
 * libdw keeps of it once its lines are read, its debug sections
 * decompressed (the symbol and line tables it builds are smaller).
 *
 * Threads: the table has a lock, held only to find, add or drop an entry;
 * each entry has its own, held while its Dwfl is used (libdwfl is not safe
 * for two threads on one handle), waited for no longer than the trace's
 * deadline.  A fork child starts with an empty table: another thread may
 * have held an entry at the fork, so the parent's entries are left as they
 * are, never freed there.
 */
#include "os.h"
#include "trace_impl.h"

#ifdef TBX_HAVE_LIBDW

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_BUILD_ID 64

struct tbx__trace_file {
    pthread_mutex_t lock; /* held while dwfl is used */
    unsigned refs;        /* traces holding it; under the table's lock */
    uint64_t used;        /* the table's tick at its last get; likewise */
    size_t weight;        /* its bytes in the table's total; likewise */
    int weighed;          /* weight final: its lines were read */
    unsigned char build_id[MAX_BUILD_ID];
    int build_id_len; /* 0: known by st instead */
    struct stat st;
    char *path;
    int state; /* 0: not read yet; 1: read; -1: could not */
    Elf *elf;  /* open on path, until dwfl takes it */
    Dwfl *dwfl;
    Dwfl_Module *mod;
    GElf_Addr bias;
};

static struct {
    pthread_mutex_t lock;
    tbx__trace_file *files[TBX__TRACE_CACHE_FILES];
    uint64_t tick;
    size_t bytes; /* the entries' weights */
    size_t max_bytes;
} cache = {PTHREAD_MUTEX_INITIALIZER, {NULL}, 0, 0, TBX__TRACE_CACHE_BYTES};

static pthread_once_t cache_once = PTHREAD_ONCE_INIT;
static atomic_ulong files_read;

static void forget_cache(void)
{
    memset(cache.files, 0, sizeof cache.files);
    cache.tick = 0;
    cache.bytes = 0;
    pthread_mutex_init(&cache.lock, NULL);
}

static void cache_register(void)
{
    tbx__forget_register(TBX__FORGET_TRACES, forget_cache, NULL);
}

unsigned long tbx__trace_cache_reads(void)
{
    return atomic_load(&files_read);
}

size_t tbx__trace_cache_bytes(size_t max_bytes)
{
    pthread_mutex_lock(&cache.lock);
    if (max_bytes != 0)
        cache.max_bytes = max_bytes;
    size_t bytes = cache.bytes;
    pthread_mutex_unlock(&cache.lock);
    return bytes;
}

/* A cached file's Dwfl is handed the file already open, read from memory
 * (find_elf).  The cache holds no descriptor: one would be inherited by a
 * spawned program, and counts against the process's limit. */
static int cache_find_elf_cb(Dwfl_Module *mod, void **userdata, const char *modname,
                             Dwarf_Addr base, char **file_name, Elf **elfp)
{
    TBX__UNUSED(mod);
    TBX__UNUSED(modname);
    TBX__UNUSED(base);
    tbx__trace_file *f = *userdata;
    *file_name = strdup(f->path);
    *elfp = f->elf;
    f->elf = NULL; /* the Dwfl's now */
    return -1;
}

/* Its separate debug file is found by its build-id, on this machine (the
 * standard search would also start a debuginfod client, which the cached
 * Dwfl would keep, with its sockets).  libdwfl has then already read it into
 * the module (from memory, mapped whole), so its descriptor is closed here
 * and none is handed back.  A file without a build-id keeps no debug file:
 * its frames get their names from its own symbols (Debian's debug files all
 * go by build-id). */
static int cache_find_debuginfo_cb(Dwfl_Module *mod, void **userdata, const char *modname,
                                   Dwarf_Addr base, const char *file_name,
                                   const char *debuglink_file, GElf_Word debuglink_crc,
                                   char **debuginfo_file_name)
{
    atomic_fetch_add(&files_read, 1);
    int fd =
        tbx__dw.dwfl_build_id_find_debuginfo(mod, userdata, modname, base, file_name,
                                             debuglink_file, debuglink_crc, debuginfo_file_name);
    if (fd >= 0)
        tbx__close(fd);
    free(*debuginfo_file_name);
    *debuginfo_file_name = NULL;
    return -1;
}

static const Dwfl_Callbacks cache_callbacks = {.find_elf = cache_find_elf_cb,
                                               .find_debuginfo = cache_find_debuginfo_cb};

/* Fills key with the identity of live's file: its build-id, else what stat
 * says of its path.  -1 if it has no file of its own. */
static int identify(Dwfl_Module *live, tbx__trace_file *key)
{
    const char *path = NULL;
    GElf_Addr bias;
    const unsigned char *bits;
    GElf_Addr at;
    memset(key, 0, sizeof *key);
    if (tbx__dw.dwfl_module_getelf(live, &bias) == NULL)
        return -1;
    tbx__dw.dwfl_module_info(live, NULL, NULL, NULL, NULL, NULL, &path, NULL);
    if (path == NULL || path[0] != '/')
        return -1;
    int n = tbx__dw.dwfl_module_build_id(live, &bits, &at);
    if (n > 0 && n <= MAX_BUILD_ID) {
        memcpy(key->build_id, bits, (size_t)n);
        key->build_id_len = n;
    } else if (stat(path, &key->st) != 0) {
        return -1;
    }
    key->path = (char *)path;
    return 0;
}

static int same_stat(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

static int same_file(const tbx__trace_file *f, const tbx__trace_file *key)
{
    if (f->build_id_len != key->build_id_len)
        return 0;
    if (f->build_id_len > 0)
        return memcmp(f->build_id, key->build_id, (size_t)f->build_id_len) == 0;
    return strcmp(f->path, key->path) == 0 && same_stat(&f->st, &key->st);
}

static void file_free(tbx__trace_file *f)
{
    if (f->dwfl != NULL)
        tbx__dw.dwfl_end(f->dwfl);
    if (f->elf != NULL)
        tbx__dw.elf_end(f->elf);
    pthread_mutex_destroy(&f->lock);
    free(f->path);
    free(f);
}

static tbx__trace_file *file_new(const tbx__trace_file *key)
{
    tbx__trace_file *f = malloc(sizeof *f);
    if (f == NULL)
        return NULL;
    *f = *key;
    f->path = strdup(key->path);
    if (f->path == NULL) {
        free(f);
        return NULL;
    }
    pthread_mutex_init(&f->lock, NULL);
    return f;
}

/* Under the table's lock: drops the least recently used entry no trace
 * holds, into dropped (freed by the caller once the lock is let go:
 * dwfl_end can take a while).  Returns its place, or -1 if every entry is
 * held. */
static int drop_oldest(tbx__trace_file **dropped, int *ndropped)
{
    int oldest = -1;
    for (int i = 0; i < TBX__TRACE_CACHE_FILES; i++) {
        tbx__trace_file *f = cache.files[i];
        if (f != NULL && f->refs == 0 && (oldest < 0 || f->used < cache.files[oldest]->used))
            oldest = i;
    }
    if (oldest >= 0) {
        dropped[(*ndropped)++] = cache.files[oldest];
        cache.bytes -= cache.files[oldest]->weight;
        cache.files[oldest] = NULL;
    }
    return oldest;
}

/* Under the table's lock: the entry for key, made if new (with a place
 * made by dropping the oldest if none is free).  NULL if every entry is
 * held, or without memory. */
static tbx__trace_file *find_or_add(const tbx__trace_file *key, tbx__trace_file **dropped,
                                    int *ndropped)
{
    int place = -1;
    for (int i = 0; i < TBX__TRACE_CACHE_FILES; i++) {
        if (cache.files[i] != NULL && same_file(cache.files[i], key))
            return cache.files[i];
        if (cache.files[i] == NULL && place < 0)
            place = i;
    }
    if (place < 0)
        place = drop_oldest(dropped, ndropped);
    if (place < 0 || (cache.files[place] = file_new(key)) == NULL)
        return NULL;
    return cache.files[place];
}

/* Lets the table's lock go, then frees what was dropped. */
static void unlock_free(tbx__trace_file **dropped, int ndropped)
{
    pthread_mutex_unlock(&cache.lock);
    for (int i = 0; i < ndropped; i++)
        file_free(dropped[i]);
}

tbx__trace_file *tbx__trace_file_get(Dwfl_Module *live)
{
    tbx__trace_file key, *dropped[TBX__TRACE_CACHE_FILES];
    int ndropped = 0;
    if (identify(live, &key) != 0)
        return NULL;
    pthread_once(&cache_once, cache_register);
    pthread_mutex_lock(&cache.lock);
    tbx__trace_file *found = find_or_add(&key, dropped, &ndropped);
    if (found != NULL) {
        found->refs++;
        found->used = ++cache.tick;
    }
    unlock_free(dropped, ndropped);
    return found;
}

void tbx__trace_file_put(tbx__trace_file *f)
{
    tbx__trace_file *dropped[TBX__TRACE_CACHE_FILES];
    int ndropped = 0;
    pthread_mutex_lock(&cache.lock);
    f->refs--;
    /* Over its bytes (a file weighs more once its lines are read), the
     * cache drops what no trace holds, oldest first. */
    while (cache.bytes > cache.max_bytes && drop_oldest(dropped, &ndropped) >= 0)
        ;
    unlock_free(dropped, ndropped);
}

/* Opens f's file to be read from memory, its descriptor closed at once: the
 * cache holds no descriptor (which a spawned program would inherit, and
 * which counts against the process's limit).  The file at path must still
 * be the one the process maps. */
static int open_elf(tbx__trace_file *f)
{
    atomic_fetch_add(&files_read, 1);
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    int same = f->build_id_len > 0 || (fstat(fd, &st) == 0 && same_stat(&st, &f->st));
    if (same)
        f->elf = tbx__dw.elf_begin(fd, ELF_C_READ_MMAP, NULL);
    if (f->elf != NULL && tbx__dw.elf_cntl(f->elf, ELF_C_FDDONE) != 0) {
        tbx__dw.elf_end(f->elf);
        f->elf = NULL;
    }
    tbx__close(fd);
    return f->elf != NULL ? 0 : -1;
}

/* Reads the file into a Dwfl of its own, once, placed where live is (any
 * place would do: addresses are moved by the biases).  Under f's lock. */
static int file_read(tbx__trace_file *f, Dwfl_Module *live)
{
    if (f->state != 0)
        return f->state;
    f->state = -1;
    GElf_Addr start, end;
    void **userdata;
    tbx__dw.dwfl_module_info(live, NULL, &start, &end, NULL, NULL, NULL, NULL);
    if ((f->dwfl = tbx__dw.dwfl_begin(&cache_callbacks)) == NULL || open_elf(f) != 0)
        return -1;
    tbx__dw.dwfl_report_begin(f->dwfl);
    f->mod = tbx__dw.dwfl_report_module(f->dwfl, f->path, start, end);
    if (tbx__dw.dwfl_report_end(f->dwfl, NULL, NULL) != 0 || f->mod == NULL)
        return -1;
    tbx__dw.dwfl_module_info(f->mod, &userdata, NULL, NULL, NULL, NULL, NULL, NULL);
    *userdata = f;
    if (tbx__dw.dwfl_module_getelf(f->mod, &f->bias) == NULL)
        return -1;
    if (f->build_id_len > 0) {
        const unsigned char *bits;
        GElf_Addr at;
        int n = tbx__dw.dwfl_module_build_id(f->mod, &bits, &at);
        if (n != f->build_id_len || memcmp(bits, f->build_id, (size_t)n) != 0)
            return -1;
    }
    f->state = 1;
    return 1;
}

/* What f holds once its lines have been read: the sections of the file
 * its DWARF is in (or of its own file, without DWARF) that are not loaded
 * in a process (debug information, symbols), at their decompressed size:
 * libdw decompresses a section whole, and maps the rest.  Under f's lock,
 * after its lines were read (getdwarf then only returns what is loaded). */
static size_t file_weight(tbx__trace_file *f)
{
    GElf_Addr bias;
    Dwarf *dwarf = tbx__dw.dwfl_module_getdwarf(f->mod, &bias);
    Elf *elf =
        dwarf != NULL ? tbx__dw.dwarf_getelf(dwarf) : tbx__dw.dwfl_module_getelf(f->mod, &bias);
    size_t bytes = 0;
    for (Elf_Scn *scn = NULL; elf != NULL && (scn = tbx__dw.elf_nextscn(elf, scn)) != NULL;) {
        GElf_Shdr sh;
        GElf_Chdr ch;
        if (tbx__dw.gelf_getshdr(scn, &sh) == NULL || (sh.sh_flags & SHF_ALLOC) != 0 ||
            sh.sh_type == SHT_NOBITS)
            continue;
        int compressed =
            (sh.sh_flags & SHF_COMPRESSED) != 0 && tbx__dw.gelf_getchdr(scn, &ch) != NULL;
        bytes += compressed ? ch.ch_size : sh.sh_size;
    }
    return bytes;
}

/* Counts f's weight in the table's total, once its lines are read. */
static void weigh(tbx__trace_file *f)
{
    size_t bytes = file_weight(f);
    pthread_mutex_lock(&cache.lock);
    cache.bytes += bytes - f->weight;
    f->weight = bytes;
    pthread_mutex_unlock(&cache.lock);
    f->weighed = 1;
}

/* Waits for f's lock until the deadline, by polling: the wait is rare (two
 * traces naming frames of one file at once), and a timed lock would count
 * on CLOCK_REALTIME or be unknown to ThreadSanitizer. */
static int lock_until(tbx__trace_file *f, uint64_t deadline_ns)
{
    while (pthread_mutex_trylock(&f->lock) != 0) {
        if (tbx__now_ns() >= deadline_ns)
            return -ETIMEDOUT;
        struct timespec ts = {0, 500 * 1000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

int tbx__trace_file_name(tbx__trace_file *f, Dwfl_Module *live, Dwarf_Addr pc, int lines,
                         uint64_t deadline_ns, tbx__frame_name *nm)
{
    GElf_Addr live_bias;
    if (tbx__dw.dwfl_module_getelf(live, &live_bias) == NULL)
        return -ENOENT;
    if (lock_until(f, deadline_ns) != 0)
        return -ETIMEDOUT;
    int rc = file_read(f, live) > 0 ? 0 : -ENOENT;
    if (rc == 0) {
        tbx__trace_name_in(f->mod, pc - live_bias + f->bias, lines, nm);
        if (lines && !f->weighed)
            weigh(f);
    }
    pthread_mutex_unlock(&f->lock);
    return rc;
}

#else /* !TBX_HAVE_LIBDW */

unsigned long tbx__trace_cache_reads(void)
{
    return 0;
}

size_t tbx__trace_cache_bytes(size_t max_bytes)
{
    TBX__UNUSED(max_bytes);
    return 0;
}

#endif
