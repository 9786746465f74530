/*
 * What the library says of itself at run time: its version, as the header it
 * was built from spells it.
 */
#include "helpers.h"

#include <stdio.h>

TBX_PLAIN_TEST(abi, version_is_the_headers)
{
    cr_assert_eq(tbx_version(), (unsigned)TBX_VERSION_HEX);
    cr_assert_eq(tbx_version() >> 16, (unsigned)TBX_VERSION_MAJOR);
    cr_assert_eq(tbx_version() >> 8 & 0xff, (unsigned)TBX_VERSION_MINOR);
    cr_assert_eq(tbx_version() & 0xff, (unsigned)TBX_VERSION_PATCH);
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", TBX_VERSION_MAJOR, TBX_VERSION_MINOR,
             TBX_VERSION_PATCH);
    cr_assert_str_eq(tbx_version_string(), want);
    cr_assert_str_eq(tbx_version_string(), TBX_VERSION_STRING);
}
