/* errbuf: the caller-owned error buffers that shared/ functions fill in
 * instead of printing (err, errlen pairs). */
#ifndef BERTH_ERRBUF_H
#define BERTH_ERRBUF_H

#include <stddef.h>

/* snprintf into err; a NULL err or errlen 0 is allowed and ignored. */
void errbuf_setf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
