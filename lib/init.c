/*
 * tbx_init: the process set-up.  Today every process is a caller: it returns
 * 0 at once.  The spawn method's workers will be recognised here.
 */
#include "internal.h"

int tbx_init(int argc, char **argv)
{
    TBX__UNUSED(argc);
    TBX__UNUSED(argv);
    return 0;
}
