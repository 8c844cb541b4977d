/* What the harnesses share (included after #define _GNU_SOURCE, for memfd_create): the
 * loaders under test take paths, so each input is written to an anonymous memory file
 * (memfd) and opened as /proc/self/fd/N. No global state: a FuzzFile lives on the
 * harness's stack. */
#ifndef FUZZ_IO_H
#define FUZZ_IO_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct {
    int fd;
    char path[40];
} FuzzFile;

/* 0 on success; the harness skips the input (returns 0) otherwise. */
static inline int fuzz_file_open(FuzzFile *f, const uint8_t *data, size_t size) {
    f->fd = memfd_create("fuzz-input", MFD_CLOEXEC);
    if (f->fd < 0) abort(); /* the harness itself is broken: say so loudly */
    for (size_t done = 0; done < size;) {
        ssize_t n = write(f->fd, data + done, size - done);
        if (n <= 0) abort();
        done += (size_t)n;
    }
    snprintf(f->path, sizeof f->path, "/proc/self/fd/%d", f->fd);
    return 0;
}

static inline void fuzz_file_close(FuzzFile *f) { close(f->fd); }

/* An invariant the code under test promised and broke: a finding. */
#define FUZZ_ASSERT(cond)                                                                  \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz invariant broken: %s (%s:%d)\n", #cond, __FILE__,        \
                    __LINE__);                                                             \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

#endif
