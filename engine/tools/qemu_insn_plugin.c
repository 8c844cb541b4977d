/* A QEMU TCG plugin that counts executed guest instructions per address.
 *
 * For `invoke bench --riscv` (duo_builder/bench/riscv.py): the counts, weighed by the
 * cycle model in engine/CYCLE_MODEL.md, predict the Milk-V Duo's speed without a board.
 * Not part of the engine: built on demand with the host's gcc into build/qemu-plugin/.
 *
 *   gcc -O2 -shared -fPIC -fvisibility=hidden -o libinsncount.so qemu_insn_plugin.c
 *   qemu-riscv64 -cpu rv64,v=true,vlen=128,vext_spec=v1.0 \
 *       -plugin ./libinsncount.so,out=counts.txt -d plugin PROGRAM ARGS...
 *
 * Every translated instruction gets an inline counter (QEMU adds 1 to a uint64 in our
 * memory each time the instruction starts executing, so a block left early by a trap
 * counts exactly what ran). Counters are keyed by (address, instruction bytes): blocks
 * translated again (after a TB flush, or a second block covering the same code) share
 * them. At exit the plugin writes one line per instruction that ran:
 *
 *   # qemu_insn_plugin 1 total <N> addresses <M>
 *   <address hex> <count> <instruction bytes, hex, in memory order>
 *
 * to the file given as out=PATH, else through qemu_plugin_outs (the -d plugin log).
 *
 * QEMU 7.2's plugin API is version 1; Debian ships no qemu-plugin.h, so the few
 * functions used are declared here as that header declares them. Counts are exact for a
 * single-threaded guest (inline adds are not atomic); translation runs under QEMU's
 * locks, so the table below needs none. */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- QEMU plugin API v1 (include/qemu/qemu-plugin.h of QEMU 7.2) ---------------------- */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t {
    const char *target_name;
    struct {
        int min;
        int cur;
    } version;
    bool system_emulation;
    union {
        struct {
            int smp_vcpus;
            int max_vcpus;
        } system;
    };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn,
                                                enum qemu_plugin_op op, void *ptr, uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* ---- the counters ---------------------------------------------------------------------- */
#define MAX_BYTES 8 /* RISC-V instructions are 2 or 4 bytes; longer ones are truncated */
#define CHUNK 4096  /* counters per allocation: they never move once handed to QEMU */

typedef struct {
    uint64_t count; /* first: QEMU's inline add targets this address */
    uint64_t vaddr;
    uint8_t size, bytes[MAX_BYTES];
} Counter;

static Counter **chunks;
static size_t n_counters, n_chunks;
static Counter **table; /* open addressing, linear probing; a power of two in size */
static size_t table_size;
static const char *out_path;
static bool failed;

static size_t slot_of(uint64_t vaddr) {
    uint64_t h = vaddr * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(h >> 20) & (table_size - 1);
}

static bool same(const Counter *c, uint64_t vaddr, const uint8_t *bytes, size_t size) {
    return c->vaddr == vaddr && c->size == size && memcmp(c->bytes, bytes, size) == 0;
}

static bool grow_table(void) {
    size_t new_size = table_size ? 2 * table_size : 1 << 16;
    Counter **t = calloc(new_size, sizeof *t);
    if (!t) return false;
    Counter **old = table;
    size_t old_size = table_size;
    table = t;
    table_size = new_size;
    for (size_t i = 0; i < old_size; i++)
        if (old[i]) {
            size_t s = slot_of(old[i]->vaddr);
            while (table[s]) s = (s + 1) & (table_size - 1);
            table[s] = old[i];
        }
    free(old);
    return true;
}

static Counter *new_counter(void) {
    if (n_counters == n_chunks * CHUNK) {
        Counter **c = realloc(chunks, (n_chunks + 1) * sizeof *c);
        if (!c) return NULL;
        chunks = c;
        chunks[n_chunks] = calloc(CHUNK, sizeof(Counter));
        if (!chunks[n_chunks]) return NULL;
        n_chunks++;
    }
    Counter *c = &chunks[n_counters / CHUNK][n_counters % CHUNK];
    n_counters++;
    return c;
}

static Counter *counter_for(uint64_t vaddr, const uint8_t *bytes, size_t size) {
    if (size > MAX_BYTES) size = MAX_BYTES;
    if (2 * (n_counters + 1) > table_size && !grow_table()) return NULL;
    size_t s = slot_of(vaddr);
    for (; table[s]; s = (s + 1) & (table_size - 1))
        if (same(table[s], vaddr, bytes, size)) return table[s];
    Counter *c = new_counter();
    if (!c) return NULL;
    c->vaddr = vaddr;
    c->size = (uint8_t)size;
    memcpy(c->bytes, bytes, size);
    table[s] = c;
    return c;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        Counter *c = counter_for(qemu_plugin_insn_vaddr(insn), qemu_plugin_insn_data(insn),
                                 qemu_plugin_insn_size(insn));
        if (!c) {
            failed = true;
            continue;
        }
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64,
                                                   &c->count, 1);
    }
}

/* ---- the dump --------------------------------------------------------------------------- */
static void emit(FILE *f, const char *line) {
    if (f) fputs(line, f);
    else qemu_plugin_outs(line);
}

static void dump_at_exit(qemu_plugin_id_t id, void *userdata) {
    (void)id;
    (void)userdata;
    FILE *f = NULL;
    if (out_path && !(f = fopen(out_path, "w"))) {
        qemu_plugin_outs("qemu_insn_plugin: cannot write the out= file\n");
        return;
    }
    uint64_t total = 0, ran = 0;
    for (size_t i = 0; i < n_counters; i++) {
        const Counter *c = &chunks[i / CHUNK][i % CHUNK];
        total += c->count;
        ran += c->count != 0;
    }
    char line[128];
    snprintf(line, sizeof line, "# qemu_insn_plugin 1 total %" PRIu64 " addresses %" PRIu64 "%s\n",
             total, ran, failed ? " incomplete (out of memory)" : "");
    emit(f, line);
    for (size_t i = 0; i < n_counters; i++) {
        const Counter *c = &chunks[i / CHUNK][i % CHUNK];
        if (!c->count) continue;
        int k = snprintf(line, sizeof line, "%" PRIx64 " %" PRIu64 " ", c->vaddr, c->count);
        for (size_t b = 0; b < c->size; b++) k += snprintf(line + k, sizeof line - k, "%02x", c->bytes[b]);
        snprintf(line + k, sizeof line - k, "\n");
        emit(f, line);
    }
    if (f && fclose(f) != 0) qemu_plugin_outs("qemu_insn_plugin: writing the out= file failed\n");
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
                                                               const qemu_info_t *info,
                                                               int argc, char **argv) {
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            out_path = argv[i] + 4; /* argv outlives the plugin (API guarantee) */
        } else {
            char msg[256];
            snprintf(msg, sizeof msg, "qemu_insn_plugin: unknown argument '%s' (out=PATH)\n",
                     argv[i]);
            qemu_plugin_outs(msg);
            return 1;
        }
    }
    if (!grow_table()) return 1;
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, dump_at_exit, NULL);
    return 0;
}
