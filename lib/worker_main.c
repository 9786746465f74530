/*
 * timebox-worker: serves spawn calls for a host whose main() cannot call
 * tbx_init (a plugin inside someone else's program).  It loads the shared
 * objects it is told to, whose TBX_REGISTER functions become callable, then
 * serves the one call timebox spawned it for.
 *
 *   opts.method = TBX_SPAWN;
 *   opts.executable = "/usr/local/bin/timebox-worker";
 *   opts.argv = (char *[]){"timebox-worker", "--preload", "libplugin.so", NULL};
 */
#include <timebox.h>

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: timebox-worker [--preload LIB.so]...\n"
    "\n"
    "Serves one timebox call made with the spawn method.  timebox starts it;\n"
    "it is not meant to be run by hand.  Each --preload loads a shared object\n"
    "before the call is read, so that the functions it registers with\n"
    "TBX_REGISTER can be called by name.  Point a call at it with\n"
    "opts.executable and opts.argv, or with tbx_set_spawn_executable().\n";

int main(int argc, char **argv)
{
    int status = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--preload") == 0 && i + 1 < argc) {
            /* A library that fails to load leaves its functions
             * unregistered: the call then fails with TBX_ENOTREG, and
             * the reason is on stderr. */
            if (dlopen(argv[++i], RTLD_NOW | RTLD_GLOBAL) == NULL) {
                fprintf(stderr, "timebox-worker: %s\n", dlerror());
                status = 1;
            }
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            puts("timebox-worker " TBX_VERSION_STRING);
            return 0;
        } else {
            fprintf(stderr, "timebox-worker: unknown argument '%s'\n\n%s", argv[i], usage);
            return 2;
        }
    }
    tbx_init(argc, argv); /* serves and exits when timebox started us */
    fprintf(stderr, "timebox-worker: not started by timebox: nothing to serve\n\n%s", usage);
    return status ? status : 2;
}
