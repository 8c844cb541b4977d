/* Opening a model file: map it read-only and hand it to the loader of its format family
 * (model_packed.c, then model_llama2c.c, which takes what has no magic: legacy v0). */
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const ModelLoader *const loaders[] = {&packed_loader, &llama2c_loader};

static const ModelLoader *loader_of(const unsigned char *p, size_t size) {
    for (size_t i = 0; i < sizeof loaders / sizeof loaders[0]; i++)
        if (loaders[i]->recognizes(p, size)) return loaders[i];
    return NULL;
}

int model_open(Model *m, const char *path, Error *err) {
    memset(m, 0, sizeof *m);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return fail(err, "%s: cannot open model file: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(err, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size == 0) {
        close(fd);
        return fail(err, "%s: file is empty", path);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        close(fd);
        return fail(err, "%s: cannot map %zu bytes: %s", path, size, strerror(errno));
    }
    m->map = map;
    m->map_size = size;
    m->fd = fd; /* kept for pread (faithful.c): file pages it reads stay out of the RSS */
    if (loader_of(map, size)->open(m, path, err) != 0) {
        model_close(m);
        return -1;
    }
    return 0;
}

size_t model_streamed_bytes(const Model *m) {
    const ModelLoader *l = m->cfg.format >= FORMAT_PACKED_F32 ? &packed_loader : &llama2c_loader;
    return l->streamed_bytes(m);
}

void model_close(Model *m) {
    if (m->map) {
        munmap(m->map, m->map_size);
        close(m->fd);
    }
    free(m->layers);
    memset(m, 0, sizeof *m);
}
