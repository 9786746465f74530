/*
 * The library's version at run time: the header a program was built with
 * says which version it expected (TBX_VERSION_*), these say which one it got.
 */
#include "timebox.h"

unsigned tbx_version(void)
{
    return TBX_VERSION_HEX;
}

const char *tbx_version_string(void)
{
    return TBX_VERSION_STRING;
}
