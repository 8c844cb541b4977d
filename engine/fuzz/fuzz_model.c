/* The model loaders, one target per file format (FUZZ_FORMAT, a FileFormat): an input of
 * another format is skipped, so each target's mutations stay on its loader. What loads
 * runs two forward passes and two samples on the format's default path (for fp32 files,
 * alternately the fast and the reference path): a value the loader let through reaches
 * the arithmetic and the integer conversions (D1: a NaN scale at quantize_q80). */
#define _GNU_SOURCE /* memfd_create */
#include <string.h>

#include "fuzz_io.h"
#include "../src/model.h"
#include "../src/sampler.h"
#include "../src/transformer.h"

#ifndef FUZZ_FORMAT
#error "build with -DFUZZ_FORMAT=<FileFormat>"
#endif

/* The format the bytes claim (as model.c's loaders tell them apart). */
static int claimed_format(const uint8_t *d, size_t n) {
    if (n >= 16 && memcmp(d, "DUOPACK", 8) == 0) {
        int32_t w;
        memcpy(&w, d + 12, 4);
        return w >= 1 && w <= 4 ? FORMAT_PACKED_F32 + (w - 1) : -1;
    }
    if (n >= 8 && memcmp(d, "24ka", 4) == 0) { /* 0x616b3432 little-endian */
        int32_t v;
        memcpy(&v, d + 4, 4);
        return v == 1 ? FORMAT_V1 : v == 2 ? FORMAT_Q80 : -1;
    }
    return FORMAT_V0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (claimed_format(data, size) != FUZZ_FORMAT) return -1; /* not this target's: skip */
    FuzzFile f;
    if (fuzz_file_open(&f, data, size)) return 0;
    Model m;
    Error err = {{0}};
    if (model_open(&m, f.path, &err) == 0) {
        FUZZ_ASSERT((int)m.cfg.format == FUZZ_FORMAT);
        FUZZ_ASSERT(model_streamed_bytes(&m) > 0);
        int quant = m.cfg.format == FORMAT_Q80 || m.cfg.format == FORMAT_PACKED_Q8 ||
                    m.cfg.format == FORMAT_PACKED_Q4;
        Llama2Path path = !quant && (size & 1) && m.cfg.format != FORMAT_PACKED_FAITHFUL
                              ? LLAMA2_PATH_REF
                              : LLAMA2_PATH_AUTO;
        Transformer t;
        if (transformer_init(&t, &m, path, 2, &err) == 0) {
            Sampler s;
            if (sampler_init(&s, m.cfg.vocab_size, 1.0f, 0.9f, 42) == 0) {
                int token = LLAMA2_TOKEN_BOS % m.cfg.vocab_size;
                for (int pos = 0; pos < t.max_pos; pos++) { /* at most 2: seq_len may be 1 */
                    float *logits = transformer_forward(&t, token, pos);
                    token = transformer_sample(&t, &s, logits);
                    FUZZ_ASSERT(token >= 0 && token < m.cfg.vocab_size);
                }
                sampler_free(&s);
            }
            transformer_free(&t);
        }
        model_close(&m);
    } else {
        FUZZ_ASSERT(err.msg[0] != '\0' && !strchr(err.msg, '\n'));
    }
    fuzz_file_close(&f);
    return 0;
}
