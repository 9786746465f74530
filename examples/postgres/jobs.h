/*
 * The example's jobs: what timebox_example_call runs in a child.  They live in
 * a shared object of their own, timebox_example_jobs.so, that does not use
 * PostgreSQL: a spawned timebox-worker and a forkserver preload it, and
 * neither is a PostgreSQL backend, so the extension module itself (which
 * needs the backend's symbols) could not be loaded there.  The extension
 * links it, so that the fork method finds the same functions in the backend.
 */
#ifndef TIMEBOX_EXAMPLE_JOBS_H
#define TIMEBOX_EXAMPLE_JOBS_H

#include <stdint.h>

/* What 'double' computes; the in-process baseline calls it too. */
int64_t job_double_value(int64_t n);

/* What 'crash' does: a write through a null pointer (SIGSEGV). */
void job_crash_now(void);

#endif
