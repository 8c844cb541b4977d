#include "wav.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint32_t u32le(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint16_t u16le(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* Bytes from the current position to the end of a regular file; SIZE_MAX for a pipe or
 * a device (WAV_MAX_BYTES still bounds what is allocated). */
static size_t bytes_left(FILE *f) {
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) return SIZE_MAX;
    long at = ftell(f);
    return at < 0 || st.st_size < at ? 0 : (size_t)(st.st_size - at);
}

/* Walks the RIFF chunks: "fmt " must say PCM 16-bit, "data" holds the samples. */
int wav_read(const char *path, WavData *out, Error *err) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return fail(err, "%s: cannot open WAV file: %s", path, strerror(errno));
    unsigned char hdr[12], ch[8], fmt[16];
    int have_fmt = 0, rc = -1;
    if (fread(hdr, 1, 12, f) != 12 || memcmp(hdr, "RIFF", 4) || memcmp(hdr + 8, "WAVE", 4)) {
        fail(err, "%s: not a RIFF/WAVE file", path);
        goto done;
    }
    while (fread(ch, 1, 8, f) == 8) {
        uint32_t size = u32le(ch + 4);
        if (!memcmp(ch, "fmt ", 4)) {
            if (size < 16 || fread(fmt, 1, 16, f) != 16) break;
            if (u16le(fmt) != 1 || u16le(fmt + 14) != 16) {
                fail(err, "%s: WAV must be 16-bit PCM (format %u, %u bits)", path, u16le(fmt),
                     u16le(fmt + 14));
                goto done;
            }
            out->channels = u16le(fmt + 2);
            out->rate = (int)u32le(fmt + 4);
            if (out->channels < 1 || out->channels > 8 || out->rate < 1000 || out->rate > 192000) {
                fail(err, "%s: WAV has %d channels at %d Hz", path, out->channels, out->rate);
                goto done;
            }
            have_fmt = 1;
            if (fseek(f, (long)(size - 16 + (size & 1)), SEEK_CUR)) break;
        } else if (!memcmp(ch, "data", 4)) {
            if (!have_fmt) break;
            /* the chunk's size is a claim: never allocate more than the file still holds */
            size_t frame = 2 * (size_t)out->channels, bytes = size, left = bytes_left(f);
            if (bytes > left) bytes = left; /* a short file keeps what is there */
            if (bytes > WAV_MAX_BYTES) {
                fail(err, "%s: WAV holds %zu bytes of samples; this reader takes at most %d MiB "
                     "(%d s of 16 kHz mono)", path, bytes, WAV_MAX_BYTES >> 20,
                     WAV_MAX_BYTES / 32000);
                goto done;
            }
            size_t frames = bytes / frame;
            out->samples = malloc(frames * frame + 1);
            if (!out->samples) {
                fail(err, "%s: out of memory for %u bytes of samples", path, size);
                goto done;
            }
            out->frames = fread(out->samples, frame, frames, f);
            if (out->frames == 0) {
                fail(err, "%s: WAV holds no samples", path);
                goto done;
            }
            rc = 0;
            goto done;
        } else if (fseek(f, (long)size + (size & 1), SEEK_CUR)) {
            break;
        }
    }
    fail(err, "%s: truncated or malformed WAV (no fmt/data chunk)", path);
done:
    fclose(f);
    if (rc) wav_free(out);
    return rc;
}

void wav_free(WavData *w) {
    free(w->samples);
    memset(w, 0, sizeof *w);
}

/* Windowed-sinc resampling: when downsampling (espeak's 22050 Hz to the recogniser's
 * 16 kHz) the sinc's cutoff sits below the new Nyquist rate, so nothing aliases; plain
 * linear interpolation folded high frequencies back and cost PocketSphinx whole words. */
int16_t *wav_to_mono(const WavData *w, int rate, size_t *n) {
    size_t in_n = w->frames, out_n = (size_t)((double)in_n * rate / w->rate);
    double *mono = malloc((in_n ? in_n : 1) * sizeof *mono);
    int16_t *out = malloc((out_n ? out_n : 1) * sizeof *out);
    if (!mono || !out) {
        free(mono);
        free(out);
        return NULL;
    }
    for (size_t i = 0; i < in_n; i++) {
        double sum = 0;
        for (int c = 0; c < w->channels; c++) sum += w->samples[i * (size_t)w->channels + (size_t)c];
        mono[i] = sum / w->channels;
    }
    double ratio = (double)w->rate / rate;                 /* input samples per output one */
    double cutoff = 0.9 * (ratio > 1 ? 1 / ratio : 1);      /* of the input's Nyquist rate */
    long half = (long)ceil(8 / cutoff);                     /* taps each side */
    const double pi = 3.14159265358979323846;
    for (size_t i = 0; i < out_n; i++) {
        double pos = (double)i * ratio, acc = 0, norm = 0;
        long centre = (long)floor(pos);
        for (long k = centre - half + 1; k <= centre + half; k++) {
            if (k < 0 || k >= (long)in_n) continue;
            double d = pos - (double)k, x = pi * cutoff * d;
            double sinc = d == 0 ? 1 : sin(x) / x;
            double hann = 0.5 + 0.5 * cos(pi * d / (double)half);
            acc += mono[k] * sinc * hann;
            norm += sinc * hann;
        }
        double v = norm != 0 ? acc / norm : 0;
        out[i] = (int16_t)(v > 32767 ? 32767 : v < -32768 ? -32768 : lrint(v));
    }
    free(mono);
    *n = out_n;
    return out;
}

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void header(unsigned char h[44], int rate, size_t frames) {
    size_t bytes = frames * 2;
    memcpy(h, "RIFF", 4);
    put32(h + 4, (uint32_t)(36 + bytes));
    memcpy(h + 8, "WAVEfmt ", 8);
    put32(h + 16, 16);
    h[20] = 1, h[21] = 0, h[22] = 1, h[23] = 0; /* PCM, mono */
    put32(h + 24, (uint32_t)rate);
    put32(h + 28, (uint32_t)rate * 2);
    h[32] = 2, h[33] = 0, h[34] = 16, h[35] = 0;
    memcpy(h + 36, "data", 4);
    put32(h + 40, (uint32_t)bytes);
}

int wav_writer_open(WavWriter *w, const char *path, int rate, Error *err) {
    memset(w, 0, sizeof *w);
    if (strlen(path) >= sizeof w->path) return fail(err, "%s: path too long", path);
    snprintf(w->path, sizeof w->path, "%s", path);
    snprintf(w->tmp, sizeof w->tmp, "%s.partial", path);
    w->rate = rate;
    w->f = fopen(w->tmp, "wb");
    if (!w->f) return fail(err, "%s: cannot write WAV: %s", w->tmp, strerror(errno));
    unsigned char h[44];
    header(h, rate, 0);
    if (fwrite(h, 1, 44, w->f) != 44) {
        wav_writer_abort(w);
        return fail(err, "%s: write failed", path);
    }
    return 0;
}

int wav_writer_write(WavWriter *w, const int16_t *pcm, size_t n, Error *err) {
    if (fwrite(pcm, sizeof *pcm, n, w->f) != n)
        return fail(err, "%s: write failed: %s", w->tmp, strerror(errno));
    w->frames += n;
    return 0;
}

int wav_writer_close(WavWriter *w, Error *err) {
    unsigned char h[44];
    header(h, w->rate, w->frames);
    int bad = fseek(w->f, 0, SEEK_SET) || fwrite(h, 1, 44, w->f) != 44;
    bad |= fclose(w->f) != 0;
    w->f = NULL;
    if (bad || rename(w->tmp, w->path) != 0) {
        unlink(w->tmp);
        return fail(err, "%s: could not complete the WAV file", w->path);
    }
    return 0;
}

void wav_writer_abort(WavWriter *w) {
    if (w->f) fclose(w->f);
    w->f = NULL;
    unlink(w->tmp);
}
