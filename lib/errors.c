/*
 * Error codes: names and messages generated from TBX_ERRNO_MAP, and for
 * negative errno values, the system's own.
 */
#include "os.h"

#include <string.h>

const char *tbx_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
#define TBX__ERR_MSG(name, value, msg)                                          \
    case TBX_##name:                                                            \
        return msg;
        TBX_ERRNO_MAP(TBX__ERR_MSG)
#undef TBX__ERR_MSG
    }
    if (code < 0 && code > -4096) {
        /* strerrordesc_np is static and thread-safe, unlike strerror. */
        const char *s = strerrordesc_np(-code);
        if (s != NULL)
            return s;
    }
    return "unknown error";
}

const char *tbx_err_name(int code)
{
    switch (code) {
    case 0:
        return "OK";
#define TBX__ERR_NAME(name, value, msg)                                         \
    case TBX_##name:                                                            \
        return "TBX_" #name;
        TBX_ERRNO_MAP(TBX__ERR_NAME)
#undef TBX__ERR_NAME
    }
    if (code < 0 && code > -4096) {
        const char *s = strerrorname_np(-code);
        if (s != NULL)
            return s;
    }
    return "UNKNOWN";
}
