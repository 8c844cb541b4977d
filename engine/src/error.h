/* Errors travel up as a message buffer, never as a global: the library holds no mutable
 * global state, and every failure ends as one line on stderr in the CLI. The buffer is
 * the public API's Llama2Error. */
#ifndef LLAMA2_ERROR_H
#define LLAMA2_ERROR_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include "../include/llama2.h"

typedef Llama2Error Error;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static inline int fail(Error *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Overflow-checked size arithmetic for everything derived from a file header. */
static inline int mul_size(size_t a, size_t b, size_t *out) {
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}
static inline int add_size(size_t a, size_t b, size_t *out) {
    return __builtin_add_overflow(a, b, out) ? -1 : 0;
}

#endif
