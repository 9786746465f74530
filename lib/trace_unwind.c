/*
 * The libdwfl side of the tracer (trace.h): load libdw, unwind each stopped
 * thread, write one line per frame.
 *
 * libdw is opened with dlopen on the first trace rather than linked: linking
 * it (with libelf, libz, liblzma, libbz2) adds about 0.2 ms to every exec of
 * a program that uses timebox, spawned workers included (measured: an empty
 * program's spawn-and-wait median 0.77 ms, 0.97 ms with libdw linked), a
 * cost every call would pay for a trace few calls ask for.
 *
 * The threads are already attached and stopped by trace.c, so libdwfl is
 * told so (dwfl_linux_proc_attach's assume_ptrace_stopped) and only reads
 * registers and memory.  Symbols come from each module's symbol table, file
 * and line from its DWARF (the program's own, or a separate debug file found
 * locally; never from a debuginfod server, whose network wait no deadline
 * could bound).
 */
#include "os.h"
#include "trace_impl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#ifdef TBX_HAVE_LIBDW

#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

/* Appends to a bounded buffer; past the end, the text says it was cut. */
typedef struct text_buf {
    char *buf;
    size_t len, cap;
    int full;
} text_buf;

#define TRUNCATED_NOTE "... (trace truncated)\n"

static void put(text_buf *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text_buf *t, const char *fmt, ...)
{
    size_t room = t->cap - sizeof TRUNCATED_NOTE;
    if (t->full || t->len >= room)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->buf + t->len, room - t->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= room - t->len) {
        /* Cut at the last whole line, then say so. */
        t->buf[t->len] = '\0';
        memcpy(t->buf + t->len, TRUNCATED_NOTE, sizeof TRUNCATED_NOTE);
        t->len += sizeof TRUNCATED_NOTE - 1;
        t->full = 1;
        return;
    }
    t->len += (size_t)n;
}

static void put_thread_header(text_buf *t, const tbx__trace_thread *th, pid_t fn_tid)
{
    put(t, "thread %d \"%s\"%s:", (int)th->tid, th->name, th->tid == fn_tid ? " (fn)" : "");
    if (th->state == 'D')
        put(t, " in uninterruptible sleep, not traced\n");
    else if (th->state == 'X')
        put(t, " did not stop in time, not traced\n");
    else
        put(t, "\n");
}

tbx__dw_table tbx__dw;

static pthread_once_t dw_once = PTHREAD_ONCE_INIT;
static const char *dw_why = "libdw not loaded yet";
static int dw_ok;

static void dw_load(void)
{
    void *h = dlopen("libdw.so.1", RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        dw_why = "libdw.so.1 could not be loaded (install libdw1)";
        return;
    }
#define DW_LOOKUP(name)                                                         \
    if ((*(void **)&tbx__dw.name = dlsym(h, #name)) == NULL) {                  \
        dw_why = "libdw.so.1 lacks " #name;                                     \
        return;                                                                 \
    }
    TBX__DW_FUNCTIONS(DW_LOOKUP)
#undef DW_LOOKUP
    dw_ok = 1;
    dw_why = NULL;
}

int tbx__trace_available(const char **why)
{
    pthread_once(&dw_once, dw_load);
    if (why != NULL)
        *why = dw_why;
    return dw_ok;
}

int tbx__trace_find_debuginfo(Dwfl_Module *mod, void **userdata, const char *modname,
                              Dwarf_Addr base, const char *file_name,
                              const char *debuglink_file, GElf_Word debuglink_crc,
                              char **debuginfo_file_name)
{
    const char *urls = getenv("DEBUGINFOD_URLS");
    if (urls != NULL && urls[0] != '\0')
        return -1;
    return tbx__dw.dwfl_standard_find_debuginfo(mod, userdata, modname, base, file_name,
                                           debuglink_file, debuglink_crc,
                                           debuginfo_file_name);
}

/* One thread's stack as taken while it was stopped: return addresses only.
 * Naming them (symbols, files, lines) reads files, not the process, so it
 * waits until the threads run again. */
typedef struct stack {
    tbx__trace_thread thread;
    unsigned nframes;
    int more;                 /* deeper than TBX__TRACE_MAX_FRAMES */
    int error;                /* the unwinder's dwfl_errno, 0 if none */
    Dwarf_Addr pc[TBX__TRACE_MAX_FRAMES];
    unsigned char activation[TBX__TRACE_MAX_FRAMES];
    tbx__frame_name name[TBX__TRACE_MAX_FRAMES];
} stack;

/* The files (program, libraries) one trace names frames in, at most; more
 * are named through the traced process's Dwfl, without the cache. */
#define TRACE_FILES 32

struct tbx__trace_stacks {
    Dwfl *dwfl;
    Dwfl_Callbacks callbacks;     /* must outlive dwfl */
    char open_error[160];
    char exe[512];                /* the program's own file, named first */
    size_t n;
    uint64_t deadline_ns;
    struct {
        Dwfl_Module *live;
        tbx__trace_file *file;    /* NULL: named through dwfl */
    } files[TRACE_FILES];         /* the cache's entries this trace holds */
    size_t nfiles;
    stack stacks[];
};

static int frame_cb(Dwfl_Frame *state, void *arg)
{
    stack *st = arg;
    Dwarf_Addr pc;
    bool activation;
    if (!tbx__dw.dwfl_frame_pc(state, &pc, &activation))
        return DWARF_CB_ABORT;
    if (st->nframes == TBX__TRACE_MAX_FRAMES) {
        st->more = 1;
        return DWARF_CB_ABORT;
    }
    st->pc[st->nframes] = pc;
    st->activation[st->nframes++] = activation;
    return DWARF_CB_OK;
}

static Dwfl *open_process(tbx__trace_stacks *ts, pid_t pid)
{
    ts->callbacks.find_elf = tbx__dw.dwfl_linux_proc_find_elf;
    ts->callbacks.find_debuginfo = tbx__trace_find_debuginfo;
    Dwfl *dwfl = tbx__dw.dwfl_begin(&ts->callbacks);
    if (dwfl == NULL) {
        snprintf(ts->open_error, sizeof ts->open_error, "libdwfl: %s", tbx__dw.dwfl_errmsg(-1));
        return NULL;
    }
    tbx__dw.dwfl_report_begin(dwfl);
    int r = tbx__dw.dwfl_linux_proc_report(dwfl, pid);
    if (tbx__dw.dwfl_report_end(dwfl, NULL, NULL) != 0 || r != 0 ||
        tbx__dw.dwfl_linux_proc_attach(dwfl, pid, true) != 0) {
        snprintf(ts->open_error, sizeof ts->open_error, "libdwfl could not read process %d: %s",
                 (int)pid, r > 0 ? strerror(r) : tbx__dw.dwfl_errmsg(-1));
        tbx__dw.dwfl_end(dwfl);
        return NULL;
    }
    return dwfl;
}

tbx__trace_stacks *tbx__trace_stacks_take(pid_t pid, const tbx__trace_thread *threads,
                                          size_t n, uint64_t deadline_ns)
{
    tbx__trace_stacks *ts = calloc(1, sizeof *ts + n * sizeof(stack));
    if (ts == NULL)
        return NULL;
    ts->n = n;
    ts->deadline_ns = deadline_ns;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/exe", (int)pid);
    ssize_t len = readlink(path, ts->exe, sizeof ts->exe - 1);
    ts->exe[len > 0 ? len : 0] = '\0';
    ts->dwfl = open_process(ts, pid);
    for (size_t i = 0; i < n; i++) {
        stack *st = &ts->stacks[i];
        st->thread = threads[i];
        if (ts->dwfl == NULL || st->thread.state != 'T')
            continue;
        if (tbx__now_ns() >= deadline_ns) {
            st->thread.state = 'X';
            continue;
        }
        if (tbx__dw.dwfl_getthread_frames(ts->dwfl, st->thread.tid, frame_cb, st) < 0 && !st->more)
            st->error = tbx__dw.dwfl_errno() != 0 ? tbx__dw.dwfl_errno() : -1;
    }
    return ts;
}

/* A return address points after the call: look up the call itself. */
static Dwarf_Addr lookup_pc(const stack *st, unsigned f)
{
    return st->activation[f] || st->pc[f] == 0 ? st->pc[f] : st->pc[f] - 1;
}

static const char *module_of(Dwfl *dwfl, Dwarf_Addr pc, Dwfl_Module **mod, Dwarf_Addr *start)
{
    *mod = tbx__dw.dwfl_addrmodule(dwfl, pc);
    *start = 0;
    return *mod != NULL ? tbx__dw.dwfl_module_info(*mod, NULL, start, NULL, NULL, NULL, NULL, NULL)
                        : NULL;
}

void tbx__trace_name_in(Dwfl_Module *mod, Dwarf_Addr pc, int lines, tbx__frame_name *nm)
{
    if (!nm->sym_done) {
        GElf_Sym sym;
        nm->sym = tbx__dw.dwfl_module_addrinfo(mod, pc, &nm->off, &sym, NULL, NULL, NULL);
        nm->sym_done = 1;
    }
    if (lines && !nm->line_done) {
        Dwfl_Line *l = tbx__dw.dwfl_module_getsrc(mod, pc);
        if (l != NULL)
            nm->file = tbx__dw.dwfl_lineinfo(l, NULL, &nm->line, NULL, NULL, NULL);
        nm->line_done = 1;
    }
}

/* The cache's entry for the traced process's module mod, asked for once
 * per trace and held until the trace is freed. */
static tbx__trace_file *file_of(tbx__trace_stacks *ts, Dwfl_Module *mod)
{
    for (size_t i = 0; i < ts->nfiles; i++)
        if (ts->files[i].live == mod)
            return ts->files[i].file;
    if (ts->nfiles == TRACE_FILES)
        return NULL;
    tbx__trace_file *file = tbx__trace_file_get(mod);
    ts->files[ts->nfiles].live = mod;
    ts->files[ts->nfiles++].file = file;
    return file;
}

/* Names one frame from the cache, or from the traced process's own Dwfl
 * where the cache has not its file (the vdso, a file replaced since). */
static void name_frame(tbx__trace_stacks *ts, Dwfl_Module *mod, Dwarf_Addr pc, int lines,
                       tbx__frame_name *nm)
{
    if (nm->sym_done && (!lines || nm->line_done))
        return;
    tbx__trace_file *file = file_of(ts, mod);
    int r = file != NULL ? tbx__trace_file_name(file, mod, pc, lines, ts->deadline_ns, nm)
                         : -ENOENT;
    if (r == -ENOENT)
        tbx__trace_name_in(mod, pc, lines, nm);
}

/* Names the frames until the deadline: the program's own first, with
 * their lines (fn's code, where a reader looks), then the libraries'
 * symbols, then their lines: a library's separate debug information (libc's
 * line tables, say) can take longer to read than all the rest, the first
 * time; the cache keeps it for the next traces. */
static void name_frames(tbx__trace_stacks *ts, int program, int lines)
{
    for (size_t i = 0; i < ts->n; i++) {
        stack *st = &ts->stacks[i];
        for (unsigned f = 0; f < st->nframes && tbx__now_ns() < ts->deadline_ns; f++) {
            Dwarf_Addr pc = lookup_pc(st, f), start;
            Dwfl_Module *mod;
            const char *m = module_of(ts->dwfl, pc, &mod, &start);
            if (mod == NULL || (program && (m == NULL || strcmp(m, ts->exe) != 0)))
                continue;
            name_frame(ts, mod, pc, lines, &st->name[f]);
        }
    }
}

static void put_frame(text_buf *t, Dwfl *dwfl, const stack *st, unsigned f, int *late)
{
    Dwarf_Addr pc = st->pc[f], lookup = lookup_pc(st, f), start;
    Dwfl_Module *mod;
    const char *modname = module_of(dwfl, lookup, &mod, &start);
    const tbx__frame_name *nm = &st->name[f];
    *late |= mod != NULL && !nm->line_done;
    put(t, "#%-2u 0x%016llx ", f, (unsigned long long)pc);
    if (nm->sym != NULL)
        put(t, "%s+0x%llx", nm->sym, (unsigned long long)(nm->off + (pc - lookup)));
    else if (modname != NULL)
        put(t, "?? (%s+0x%llx)", strrchr(modname, '/') ? strrchr(modname, '/') + 1 : modname,
            (unsigned long long)(pc - start));
    else
        put(t, "??");
    if (nm->file != NULL)
        put(t, " (%s:%d)", nm->file, nm->line);
    put(t, "\n");
}

size_t tbx__trace_stacks_format(tbx__trace_stacks *ts, pid_t fn_tid, uint64_t deadline_ns,
                                char *out, size_t cap)
{
    text_buf t = {out, 0, cap, 0};
    out[0] = '\0';
    ts->deadline_ns = deadline_ns;
    if (ts->dwfl == NULL) {
        put(&t, "(%s)\n", ts->open_error);
    } else {
        name_frames(ts, 1, 1);
        name_frames(ts, 0, 0);
        name_frames(ts, 0, 1);
    }
    int late = 0;
    for (size_t i = 0; i < ts->n; i++) {
        stack *st = &ts->stacks[i];
        put_thread_header(&t, &st->thread, fn_tid);
        for (unsigned f = 0; f < st->nframes; f++)
            put_frame(&t, ts->dwfl, st, f, &late);
        if (st->more)
            put(&t, "    ... (more frames)\n");
        else if (st->error != 0)
            put(&t, "    (%s: %s)\n", st->nframes == 0 ? "no frames" : "unwinding stopped",
                tbx__dw.dwfl_errmsg(st->error));
    }
    if (late)
        put(&t, "(the trace's time ran out: some frames lack a line, or a name (given by module "
                "and offset))\n");
    return t.len;
}

void tbx__trace_stacks_free(tbx__trace_stacks *ts)
{
    if (ts == NULL)
        return;
    for (size_t i = 0; i < ts->nfiles; i++)
        if (ts->files[i].file != NULL)
            tbx__trace_file_put(ts->files[i].file);
    if (ts->dwfl != NULL)
        tbx__dw.dwfl_end(ts->dwfl);
    free(ts);
}

#else /* !TBX_HAVE_LIBDW */

int tbx__trace_available(const char **why)
{
    if (why != NULL)
        *why = "timebox was built without libdw (libdw-dev)";
    return 0;
}

/* Without libdw, tbx__trace returns -ENOSYS before taking any stack. */
tbx__trace_stacks *tbx__trace_stacks_take(pid_t pid, const tbx__trace_thread *threads,
                                          size_t n, uint64_t deadline_ns)
{
    TBX__UNUSED(pid);
    TBX__UNUSED(threads);
    TBX__UNUSED(n);
    TBX__UNUSED(deadline_ns);
    return NULL;
}

size_t tbx__trace_stacks_format(tbx__trace_stacks *ts, pid_t fn_tid, uint64_t deadline_ns,
                                char *out, size_t cap)
{
    TBX__UNUSED(ts);
    TBX__UNUSED(deadline_ns);
    TBX__UNUSED(fn_tid);
    TBX__UNUSED(cap);
    out[0] = '\0';
    return 0;
}

void tbx__trace_stacks_free(tbx__trace_stacks *ts)
{
    TBX__UNUSED(ts);
}

#endif
