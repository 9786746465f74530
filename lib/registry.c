/*
 * The registry of functions callable by name, and the per-child hooks.
 *
 * Registrations are static nodes linked in by TBX_REGISTER's constructor, so
 * registering allocates nothing.  A mutex guards the list against a dlopen or
 * dlclose on another thread; a child reads it the same way (it has one thread,
 * and launchers fork with no timebox lock held).
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
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

/* Hooks: a fixed table, so a child never allocates to run them.  Writers take
 * the lock; the child reads the count atomically and then the entries. */
static pthread_mutex_t hooks_lock = PTHREAD_MUTEX_INITIALIZER;
static tbx__hook hooks[TBX_MAX_CHILD_HOOKS];
static atomic_size_t nhooks;

int tbx_add_child_hook(tbx_hook_fn *hook, void *arg)
{
    int rc = 0;
    if (hook == NULL)
        return TBX_EINVAL;
    pthread_mutex_lock(&hooks_lock);
    size_t n = atomic_load(&nhooks);
    if (n == TBX_MAX_CHILD_HOOKS) {
        rc = -ENOSPC;
    } else {
        hooks[n].fn = hook;
        hooks[n].arg = arg;
        atomic_store(&nhooks, n + 1);
    }
    pthread_mutex_unlock(&hooks_lock);
    return rc;
}

int tbx_remove_child_hook(tbx_hook_fn *hook, void *arg)
{
    int rc = -ENOENT;
    pthread_mutex_lock(&hooks_lock);
    size_t n = atomic_load(&nhooks);
    for (size_t i = 0; i < n; i++) {
        if (hooks[i].fn == hook && hooks[i].arg == arg) {
            memmove(&hooks[i], &hooks[i + 1], (n - i - 1) * sizeof hooks[0]);
            atomic_store(&nhooks, n - 1);
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&hooks_lock);
    return rc;
}

int tbx__run_child_hooks(void)
{
    size_t n = atomic_load(&nhooks);
    for (size_t i = 0; i < n; i++) {
        int rc = hooks[i].fn(hooks[i].arg);
        if (rc != 0)
            return rc;
    }
    return 0;
}
