/*
 * What the tracer's libdwfl files share: trace_unwind.c (load libdw, unwind,
 * format) and trace_cache.c (the files already read, kept across traces).
 * Nothing outside the trace files includes this.
 */
#ifndef TBX_TRACE_IMPL_H
#define TBX_TRACE_IMPL_H

#include "trace.h"

#ifdef TBX_HAVE_LIBDW

#include <elfutils/libdwelf.h>
#include <elfutils/libdwfl.h>
#include <gelf.h>
#include <libelf.h>

/* The libdwfl functions used, found by dlsym (trace_unwind.c); libelf's
 * come through libdw, which depends on it. */
#define TBX__DW_FUNCTIONS(X)                                                                     \
    X(dwfl_begin)                                                                                \
    X(dwfl_end)                                                                                  \
    X(dwfl_errno)                                                                                \
    X(dwfl_errmsg) X(dwfl_report_begin) X(dwfl_report_end) X(dwfl_linux_proc_report)             \
        X(dwfl_linux_proc_find_elf) X(dwfl_standard_find_debuginfo) X(dwfl_linux_proc_attach)    \
            X(dwfl_getthread_frames) X(dwfl_frame_pc) X(dwfl_addrmodule) X(dwfl_module_addrinfo) \
                X(dwfl_module_getsrc) X(dwfl_lineinfo) X(dwfl_module_info) X(dwfl_report_module) \
                    X(dwfl_module_getelf) X(dwfl_module_build_id) X(dwelf_elf_gnu_debuglink)     \
                        X(dwfl_build_id_find_debuginfo) X(dwfl_module_getdwarf) X(dwarf_getelf)  \
                            X(elf_begin) X(elf_cntl) X(elf_end) X(elf_nextscn) X(gelf_getshdr)   \
                                X(gelf_getchdr)

typedef struct tbx__dw_table {
#define TBX__DW_FIELD(name) __typeof__(name) *name;
    TBX__DW_FUNCTIONS(TBX__DW_FIELD)
#undef TBX__DW_FIELD
} tbx__dw_table;

/* Filled once tbx__trace_available has said 1. */
extern tbx__dw_table tbx__dw;

/* libdwfl's find_debuginfo callback, limited to this machine: with
 * DEBUGINFOD_URLS set, libdwfl's standard search would also ask a server,
 * whose network wait no deadline could bound. */
int tbx__trace_find_debuginfo(Dwfl_Module *mod, void **userdata, const char *modname,
                              Dwarf_Addr base, const char *file_name, const char *debuglink_file,
                              GElf_Word debuglink_crc, char **debuginfo_file_name);

/* A frame's name as found: strings owned by the Dwfl that named it. */
typedef struct tbx__frame_name {
    const char *sym, *file; /* NULL: not named */
    GElf_Off off;
    int line;
    unsigned char sym_done, line_done; /* looked up */
} tbx__frame_name;

/* Names pc, an address in mod's own Dwfl, as far as not done: its symbol,
 * and its file and line if lines. */
void tbx__trace_name_in(Dwfl_Module *mod, Dwarf_Addr pc, int lines, tbx__frame_name *nm);

/* trace_cache.c: a file of the traced process (a program or a library) as
 * read by an earlier trace, its symbols and line tables kept, shared by
 * every trace in this process that meets the same file again (by its
 * build-id, or without one by its device, inode, size and time). */
typedef struct tbx__trace_file tbx__trace_file;

/* The cache's entry for the file of live (a module of the traced process's
 * Dwfl, its ELF already open for the unwinding), made if new, with a
 * reference that keeps it (and the strings it gave) until
 * tbx__trace_file_put.  NULL if the module has no file of its own (the
 * vdso), or the cache is full of entries in use: name it through live. */
tbx__trace_file *tbx__trace_file_get(Dwfl_Module *live);
void tbx__trace_file_put(tbx__trace_file *f);

/* Names pc, an address in live's mapping, from the file: its symbol, and
 * its file and line if lines.  Reads the file on its first use.  Returns 0,
 * -ETIMEDOUT (another trace used the file until deadline_ns: nothing
 * named), or -ENOENT (the file could not be read, or is not the one live
 * maps: name it through live). */
int tbx__trace_file_name(tbx__trace_file *f, Dwfl_Module *live, Dwarf_Addr pc, int lines,
                         uint64_t deadline_ns, tbx__frame_name *nm);

#endif /* TBX_HAVE_LIBDW */

#endif /* TBX_TRACE_IMPL_H */
