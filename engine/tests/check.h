/* The C tests' one assertion: count, and on failure say where and why; each test program
 * ends with report(), which prints "N passed, N failed" and gives the exit status. */
#ifndef ENGINE_TESTS_CHECK_H
#define ENGINE_TESTS_CHECK_H

#include <stdio.h>

static int passed, failed;

#define CHECK(cond, ...)                                                                \
    do {                                                                                \
        if (cond) passed++;                                                             \
        else {                                                                          \
            failed++;                                                                   \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                        \
            fprintf(stderr, __VA_ARGS__);                                               \
            fputc('\n', stderr);                                                        \
        }                                                                               \
    } while (0)

static inline int report(void) {
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}

#endif
