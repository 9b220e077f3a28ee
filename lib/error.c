/* mmipc_strerror and mmipc_version. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <string.h>

#include "internal.h"

const char *mmipc_strerror(int err)
{
    if (err == INT_MIN)
        return "unknown error";
    if (err < 0)
        err = -err;
    switch (err) {
    case 0:
        return "success";
    case EBADMSG:
        return "not an mmipc file, or a corrupted one";
    case EPROTONOSUPPORT:
        return "mmipc file of another format version or ABI (byte order, pointer width, lock ABI or libc)";
    case EUSERS:
        return "too many processes attached to the region (every lease slot is in use)";
    case ENOTRECOVERABLE:
        return "lock not recoverable: close every process using the region, then reopen it";
    case ESTALE:
        return "version changed (compare-and-swap lost)";
    case EMSGSIZE:
        return "message or value too large for the object or the buffer";
    default:
        /* strerror() may use a shared buffer for unknown values; strerrordesc_np
         * (glibc 2.32) returns static text or NULL. */
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
    {
        const char *s = strerrordesc_np(err);
        return s != NULL ? s : "unknown error";
    }
#else
        return strerror(err);
#endif
    }
}

const char *mmipc_version(void)
{
    return PACKAGE_VERSION;
}
