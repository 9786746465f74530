/*
 * The registry of functions callable by name, and the per-child hooks.
 *
 * Registrations are static nodes linked in by TBX_REGISTER's constructor, so
 * registering allocates nothing.  A mutex guards the list against a dlopen or
 * dlclose on another thread; a child reads it the same way (it has one thread,
 * and launchers fork with no timebox lock held).
 */
#include "child.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static tbx_registration *registry_head;

void tbx_register(tbx_registration *reg)
{
    if (reg == NULL || reg->name == NULL || reg->fn == NULL)
        return;
    pthread_mutex_lock(&registry_lock);
    reg->next = registry_head;
    registry_head = reg;
    pthread_mutex_unlock(&registry_lock);
}

void tbx_unregister(tbx_registration *reg)
{
    pthread_mutex_lock(&registry_lock);
    for (tbx_registration **p = &registry_head; *p != NULL; p = &(*p)->next) {
        if (*p == reg) {
            *p = reg->next;
            reg->next = NULL;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
}

tbx_fn *tbx_lookup(const char *name)
{
    tbx_fn *fn = NULL;
    if (name == NULL)
        return NULL;
    pthread_mutex_lock(&registry_lock);
    for (tbx_registration *r = registry_head; r != NULL; r = r->next) {
        if (strcmp(r->name, name) == 0) {
            fn = r->fn;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return fn;
}

const char *tbx_name_of(tbx_fn *fn)
{
    const char *name = NULL;
    pthread_mutex_lock(&registry_lock);
    for (tbx_registration *r = registry_head; r != NULL; r = r->next) {
        if (r->fn == fn) {
            name = r->name;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return name;
}

static int same_place(const tbx_registration *a, const tbx_registration *b)
{
    return a->file != NULL && b->file != NULL && a->line == b->line &&
           strcmp(a->file, b->file) == 0;
}

int tbx__name_for_call(tbx_fn *fn, const char **name, char **why)
{
    const tbx_registration *mine = NULL, *other = NULL;
    *why = NULL;
    pthread_mutex_lock(&registry_lock);
    for (tbx_registration *r = registry_head; r != NULL && mine == NULL; r = r->next)
        if (r->fn == fn)
            mine = r;
    /* Another function under the name, from another place: the same
     * TBX_REGISTER line compiled into the program and into a library it
     * loads is one function, whichever copy the child finds. */
    for (tbx_registration *r = registry_head; mine != NULL && r != NULL; r = r->next)
        if (r->fn != fn && strcmp(r->name, mine->name) == 0 && !same_place(r, mine))
            other = r;
    int rc = mine == NULL ? TBX_ENOTREG : 0;
    if (other != NULL) {
        /* The child finds fn by name: it could run either one. */
        rc = TBX_ENOTREG;
        if (asprintf(why,
                     "two functions are registered under the name '%s', at %s:%d and at "
                     "%s:%d: a child that finds it by name cannot tell them apart (rename "
                     "one, or call it with TBX_FORK)",
                     mine->name, mine->file != NULL ? mine->file : "?", mine->line,
                     other->file != NULL ? other->file : "?", other->line) < 0)
            *why = NULL;
    }
    *name = mine != NULL ? mine->name : NULL;
    pthread_mutex_unlock(&registry_lock);
    return rc;
}

/* Hooks: fixed tables, so a child never allocates to run them.  Writers take
 * the lock; a child (one thread) reads the count atomically, then the
 * entries.  A preload hook is an entry with `pre` set instead of `fn`. */
typedef struct hook_table {
    pthread_mutex_t lock;
    tbx__hook entries[TBX_MAX_CHILD_HOOKS];
    atomic_size_t n;
} hook_table;

static hook_table child_hooks = {PTHREAD_MUTEX_INITIALIZER, {{0}}, 0};
static hook_table preload_hooks = {PTHREAD_MUTEX_INITIALIZER, {{0}}, 0};

static int table_add(hook_table *t, tbx__hook h)
{
    int rc = 0;
    pthread_mutex_lock(&t->lock);
    size_t n = atomic_load(&t->n);
    if (n == TBX_MAX_CHILD_HOOKS) {
        rc = -ENOSPC;
    } else {
        t->entries[n] = h;
        atomic_store(&t->n, n + 1);
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

static int table_run(hook_table *t)
{
    size_t n = atomic_load(&t->n);
    for (size_t i = 0; i < n; i++) {
        tbx__hook *h = &t->entries[i];
        int rc = h->fn != NULL ? h->fn(h->arg) : h->pre();
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Whether tbx_init has returned here: a spawned worker, or the forkserver,
 * runs main() up to tbx_init, so it adds every hook added before that, and
 * none added after. */
static atomic_int init_done;

void tbx__init_done(void)
{
    atomic_store(&init_done, 1);
}

int tbx_add_child_hook(tbx_hook_fn *hook, void *arg)
{
    if (hook == NULL)
        return TBX_EINVAL;
    return table_add(&child_hooks, (tbx__hook){hook, NULL, arg, atomic_load(&init_done)});
}

int tbx_add_preload_hook(tbx_preload_fn *hook)
{
    if (hook == NULL)
        return TBX_EINVAL;
    return table_add(&preload_hooks, (tbx__hook){NULL, hook, NULL, 0});
}

int tbx__hooks_reach_fresh_programs(char **why)
{
    hook_table *t = &child_hooks;
    int late = 0;
    *why = NULL;
    pthread_mutex_lock(&t->lock);
    size_t n = atomic_load(&t->n);
    for (size_t i = 0; i < n; i++)
        late += t->entries[i].late;
    pthread_mutex_unlock(&t->lock);
    if (late == 0)
        return 0;
    if (asprintf(why,
                 "%d child hook(s) added with tbx_add_child_hook after tbx_init cannot run "
                 "in spawn or forkserver children (fresh programs, which add only the hooks "
                 "added before tbx_init): add them before tbx_init or with TBX_CHILD_HOOK, "
                 "remove them, or call with TBX_FORK",
                 late) < 0)
        *why = NULL;
    return TBX_EINVAL;
}

int tbx_remove_child_hook(tbx_hook_fn *hook, void *arg)
{
    hook_table *t = &child_hooks;
    int rc = -ENOENT;
    pthread_mutex_lock(&t->lock);
    size_t n = atomic_load(&t->n);
    for (size_t i = 0; i < n; i++) {
        if (t->entries[i].fn == hook && t->entries[i].arg == arg) {
            memmove(&t->entries[i], &t->entries[i + 1], (n - i - 1) * sizeof t->entries[0]);
            atomic_store(&t->n, n - 1);
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

int tbx__run_child_hooks(void)
{
    return table_run(&child_hooks);
}

int tbx__run_preload_hooks(void)
{
    return table_run(&preload_hooks);
}
