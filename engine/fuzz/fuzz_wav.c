/* The WAV reader (storyteller --mic-wav) and the resampler after it. Every allocation is
 * bounded by what the file holds (D3: a 52-byte file asked for 4 GB): libFuzzer's
 * -malloc_limit_mb turns a larger request into a finding. */
#define _GNU_SOURCE /* memfd_create */
#include <string.h>

#include "fuzz_io.h"
#include "../storyteller/wav.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FuzzFile f;
    fuzz_file_open(&f, data, size);
    WavData w;
    Error err = {{0}};
    if (wav_read(f.path, &w, &err) == 0) {
        FUZZ_ASSERT(w.frames > 0 && w.samples != NULL);
        FUZZ_ASSERT(w.frames * 2 * (size_t)w.channels <= size);
        /* the resampler's work grows with the samples, its paths with the rates and
         * channels only: the first 2048 frames keep the target fast */
        WavData head = w;
        if (head.frames > 2048) head.frames = 2048;
        size_t n = 0;
        int16_t *mono = wav_to_mono(&head, 16000, &n);
        FUZZ_ASSERT(mono != NULL);
        free(mono);
        wav_free(&w);
    } else {
        FUZZ_ASSERT(err.msg[0] != '\0');
    }
    fuzz_file_close(&f);
    return 0;
}
