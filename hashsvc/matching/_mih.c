/* The two inner loops of hashsvc.matching.mih, in C: probing the multi-index tables and verifying the
 * candidates, and the brute-force scan it falls back to.
 *
 * Why C: in NumPy a single query costs ~30 array calls of fixed overhead, and a batch pays for
 * temporaries as large as its candidate list; measured at 1M codes and r = 31, ~90 us per single
 * query and ~120 us per query in batches, where the memory reads themselves take a few. Here a
 * query is one pass over its probes with no temporaries, and the GIL is released for the whole
 * call, so a server's other threads keep working while one searches.
 *
 * Everything about the layout (which tables, which probes, the cost model) stays in mih.py; this
 * file only walks arrays mih.py built and checked. It still bounds every read by the buffers'
 * real sizes, so a damaged index raises ValueError instead of reading out of bounds.
 *
 * Codes are 32 bytes, read as four little-endian 64-bit words (bit p of the code is bit p % 64
 * of word p / 64), the same convention as mih.py, on any host.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CODE_BYTES 32
#define CUT_FIELDS 3 /* per table: start bit, length, segment */

/* popcnt is not in the x86-64 baseline: without it, __builtin_popcountll is a library call
 * several times slower. Compile the hot loops twice and let the loader pick (GCC's ifunc
 * multiversioning), so one build runs at full speed on any x86-64 and still runs everywhere. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define HOT __attribute__((target_clones("popcnt", "default")))
#else
#define HOT
#endif

static inline uint64_t load_word(const uint8_t *p) {
    uint64_t w;
    memcpy(&w, p, sizeof w);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

typedef struct {
    uint64_t w[4];
} Code;

static inline Code load_code(const uint8_t *p) {
    Code c = {{load_word(p), load_word(p + 8), load_word(p + 16), load_word(p + 24)}};
    return c;
}

static inline __attribute__((always_inline)) int distance(const Code *q, const uint8_t *p) {
    return __builtin_popcountll(q->w[0] ^ load_word(p))
         + __builtin_popcountll(q->w[1] ^ load_word(p + 8))
         + __builtin_popcountll(q->w[2] ^ load_word(p + 16))
         + __builtin_popcountll(q->w[3] ^ load_word(p + 24));
}

/* Hits are packed as (id << 16 | distance): sorting them orders by id, ties by distance. */
typedef struct {
    uint64_t *items;
    size_t len, cap;
} Hits;

static int hits_push(Hits *h, uint64_t id, int dist) {
    if (h->len == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 256;
        uint64_t *grown = realloc(h->items, cap * sizeof *grown);
        if (grown == NULL) return -1;
        h->items = grown;
        h->cap = cap;
    }
    h->items[h->len++] = (id << 16) | (uint64_t)dist;
    return 0;
}

static int compare_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Sort hits[from:] by id and keep one per id: a code near the query sits in several buckets. */
static void hits_dedup(Hits *h, size_t from) {
    size_t n = h->len - from, kept = 0;
    uint64_t *run = h->items + from;
    if (n < 2) return;
    qsort(run, n, sizeof *run, compare_u64);
    for (size_t i = 0; i < n; i++) {
        if (kept == 0 || (run[i] >> 16) != (run[kept - 1] >> 16)) run[kept++] = run[i];
    }
    h->len = from + kept;
}

typedef struct {
    const uint8_t *codes;
    Py_ssize_t count;
    const uint32_t *ids;
    Py_ssize_t ids_len;
    const uint32_t *offsets;
    Py_ssize_t offsets_len;
    const int64_t *cuts;
    Py_ssize_t tables;
    const int64_t *probe_table;
    const int64_t *probe_flips;
    Py_ssize_t probes;
} Index;

enum { OK = 0, NO_MEMORY = 1, DAMAGED = 2 };

HOT static int scan_one(const Index *ix, const uint8_t *query, int radius, Hits *out) {
    Code q = load_code(query);
    for (Py_ssize_t i = 0; i < ix->count; i++) {
        int d = distance(&q, ix->codes + (size_t)i * CODE_BYTES);
        if (d <= radius && hits_push(out, (uint64_t)i, d) != 0) return NO_MEMORY;
    }
    return OK;
}

static inline uint64_t substring(const Code *q, int64_t start, int64_t length) {
    int64_t word = start >> 6, shift = start & 63;
    uint64_t value = q->w[word] >> shift;
    if (shift + length > 64) value |= q->w[word + 1] << (64 - shift);
    return length == 64 ? value : value & ((UINT64_C(1) << length) - 1);
}

/* Reads ahead by this many items: enough misses in flight to cover DRAM latency. */
#define AHEAD 16

/* Scratch space of one search call, grown as needed and reused across its queries. */
typedef struct {
    int64_t *positions; /* per probe: its bucket's index in offsets */
    uint32_t *spans;    /* per non-empty probed bucket: begin, end in ids */
    uint32_t *candidates;
    size_t candidates_cap;
} Scratch;

/* One query, in three passes so that each is a stream of independent reads the CPU can overlap
 * (a bucket's bounds, then its ids, then the codes they name), each prefetched AHEAD items
 * early: at 1M codes nearly every read misses the caches, and issued one after another they
 * cost ~4x more. If the candidates would cost more than `scan_limit` allows, every code is
 * scanned instead. */
HOT static int probe_one(const Index *ix, const uint8_t *query, int radius,
                         Py_ssize_t scan_limit, Scratch *s, Hits *out) {
    Code q = load_code(query);
    int64_t keys[256];
    for (Py_ssize_t k = 0; k < ix->tables; k++) {
        const int64_t *cut = ix->cuts + k * CUT_FIELDS;
        keys[k] = (int64_t)substring(&q, cut[0], cut[1]) + cut[2];
    }
    for (Py_ssize_t p = 0; p < ix->probes; p++) {
        int64_t position = keys[ix->probe_table[p]] ^ ix->probe_flips[p];
        if (position < 0 || position + 1 >= ix->offsets_len) return DAMAGED;
        s->positions[p] = position;
    }
    Py_ssize_t total = 0, buckets = 0;
    for (Py_ssize_t p = 0; p < ix->probes; p++) {
        if (p + AHEAD < ix->probes) __builtin_prefetch(ix->offsets + s->positions[p + AHEAD]);
        uint32_t begin = ix->offsets[s->positions[p]], end = ix->offsets[s->positions[p] + 1];
        if (end < begin || (Py_ssize_t)end > ix->ids_len) return DAMAGED;
        if (end == begin) continue;
        __builtin_prefetch(ix->ids + begin);
        s->spans[2 * buckets] = begin;
        s->spans[2 * buckets + 1] = end;
        buckets++;
        total += end - begin;
    }
    if (total > scan_limit) return scan_one(ix, query, radius, out);
    if ((size_t)total > s->candidates_cap) {
        uint32_t *grown = realloc(s->candidates, (size_t)total * sizeof *grown);
        if (grown == NULL) return NO_MEMORY;
        s->candidates = grown;
        s->candidates_cap = (size_t)total;
    }
    Py_ssize_t n = 0;
    for (Py_ssize_t b = 0; b < buckets; b++) {
        for (uint32_t j = s->spans[2 * b]; j < s->spans[2 * b + 1]; j++) {
            uint32_t id = ix->ids[j];
            if ((Py_ssize_t)id >= ix->count) return DAMAGED;
            s->candidates[n++] = id;
            if (n > AHEAD) {
                __builtin_prefetch(ix->codes + (size_t)s->candidates[n - AHEAD] * CODE_BYTES);
            }
        }
    }
    size_t from = out->len;
    for (Py_ssize_t c = 0; c < n; c++) {
        if (c + AHEAD < n) {
            __builtin_prefetch(ix->codes + (size_t)s->candidates[c + AHEAD] * CODE_BYTES);
        }
        uint32_t id = s->candidates[c];
        int d = distance(&q, ix->codes + (size_t)id * CODE_BYTES);
        if (d <= radius && hits_push(out, id, d) != 0) return NO_MEMORY;
    }
    hits_dedup(out, from);
    return OK;
}

/* (limits, distances, labels) as bytes: uint64 (Q + 1), int32 (H), int64 (H). */
static PyObject *result(const Hits *hits, const uint64_t *limits, Py_ssize_t queries) {
    PyObject *limit_bytes = PyBytes_FromStringAndSize((const char *)limits,
                                                      (queries + 1) * (Py_ssize_t)sizeof *limits);
    PyObject *dist_bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)hits->len * 4);
    PyObject *label_bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)hits->len * 8);
    if (limit_bytes == NULL || dist_bytes == NULL || label_bytes == NULL) {
        Py_XDECREF(limit_bytes);
        Py_XDECREF(dist_bytes);
        Py_XDECREF(label_bytes);
        return NULL;
    }
    int32_t *dists = (int32_t *)PyBytes_AS_STRING(dist_bytes);
    int64_t *labels = (int64_t *)PyBytes_AS_STRING(label_bytes);
    for (size_t i = 0; i < hits->len; i++) {
        dists[i] = (int32_t)(hits->items[i] & 0xFFFF);
        labels[i] = (int64_t)(hits->items[i] >> 16);
    }
    return Py_BuildValue("(NNN)", limit_bytes, dist_bytes, label_bytes);
}

typedef struct {
    Py_buffer view;
    int held;
} Buffer;

static int get_buffer(PyObject *obj, Buffer *b, Py_ssize_t item, const char *name) {
    if (PyObject_GetBuffer(obj, &b->view, PyBUF_C_CONTIGUOUS) != 0) return -1;
    b->held = 1;
    if (b->view.len % item != 0) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes is not a whole number of %zd-byte items",
                     name, b->view.len, item);
        return -1;
    }
    return 0;
}

static void release(Buffer *buffers, int n) {
    for (int i = 0; i < n; i++) {
        if (buffers[i].held) PyBuffer_Release(&buffers[i].view);
    }
}

enum { B_CODES, B_IDS, B_OFFSETS, B_CUTS, B_TABLE, B_FLIPS, B_QUERIES, B_COUNT };

static PyObject *search(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objects[B_COUNT];
    int radius;
    Py_ssize_t scan_limit;
    Buffer b[B_COUNT] = {{{0}, 0}};
    static const Py_ssize_t item[B_COUNT] = {CODE_BYTES, 4, 4, CUT_FIELDS * 8, 8, 8, CODE_BYTES};
    static const char *names[B_COUNT] = {"codes", "ids", "offsets", "cuts", "probe_table",
                                         "probe_flips", "queries"};
    if (!PyArg_ParseTuple(args, "OOOOOOOin", &objects[0], &objects[1], &objects[2], &objects[3],
                          &objects[4], &objects[5], &objects[6], &radius, &scan_limit)) {
        return NULL;
    }
    for (int i = 0; i < B_COUNT; i++) {
        if (get_buffer(objects[i], &b[i], item[i], names[i]) != 0) {
            release(b, B_COUNT);
            return NULL;
        }
    }
    Index ix = {
        .codes = b[B_CODES].view.buf,
        .count = b[B_CODES].view.len / CODE_BYTES,
        .ids = b[B_IDS].view.buf,
        .ids_len = b[B_IDS].view.len / 4,
        .offsets = b[B_OFFSETS].view.buf,
        .offsets_len = b[B_OFFSETS].view.len / 4,
        .cuts = b[B_CUTS].view.buf,
        .tables = b[B_CUTS].view.len / (CUT_FIELDS * 8),
        .probe_table = b[B_TABLE].view.buf,
        .probe_flips = b[B_FLIPS].view.buf,
        .probes = b[B_TABLE].view.len / 8,
    };
    const uint8_t *queries = b[B_QUERIES].view.buf;
    Py_ssize_t nqueries = b[B_QUERIES].view.len / CODE_BYTES;
    int probing = scan_limit >= 0;
    if (ix.tables > 256 || b[B_FLIPS].view.len != b[B_TABLE].view.len) {
        release(b, B_COUNT);
        PyErr_SetString(PyExc_ValueError, "at most 256 tables, and one flip mask per probe");
        return NULL;
    }
    for (Py_ssize_t k = 0; k < ix.tables; k++) {
        const int64_t *cut = ix.cuts + k * CUT_FIELDS;
        if (cut[0] < 0 || cut[1] < 1 || cut[1] > 64 || cut[0] + cut[1] > CODE_BYTES * 8) {
            release(b, B_COUNT);
            PyErr_SetString(PyExc_ValueError, "cuts: a substring outside the 256 bits");
            return NULL;
        }
    }
    for (Py_ssize_t p = 0; p < ix.probes; p++) {
        if (ix.probe_table[p] < 0 || ix.probe_table[p] >= ix.tables) {
            release(b, B_COUNT);
            PyErr_SetString(PyExc_ValueError, "probe_table: a table that does not exist");
            return NULL;
        }
    }

    Hits hits = {NULL, 0, 0};
    uint64_t *limits = calloc((size_t)nqueries + 1, sizeof *limits);
    Scratch scratch = {NULL, NULL, NULL, 0};
    if (probing) {
        scratch.positions = malloc(((size_t)ix.probes + 1) * sizeof *scratch.positions);
        scratch.spans = malloc(((size_t)ix.probes + 1) * 2 * sizeof *scratch.spans);
    }
    int status = (limits == NULL || (probing && (scratch.positions == NULL
                                                 || scratch.spans == NULL))) ? NO_MEMORY : OK;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < nqueries && status == OK; i++) {
        const uint8_t *query = queries + (size_t)i * CODE_BYTES;
        status = probing ? probe_one(&ix, query, radius, scan_limit, &scratch, &hits)
                         : scan_one(&ix, query, radius, &hits);
        limits[i + 1] = hits.len;
    }
    Py_END_ALLOW_THREADS
    PyObject *out = NULL;
    if (status == NO_MEMORY) {
        PyErr_NoMemory();
    } else if (status == DAMAGED) {
        PyErr_SetString(PyExc_ValueError, "index damaged: a bucket or id out of range");
    } else {
        out = result(&hits, limits, nqueries);
    }
    free(hits.items);
    free(limits);
    free(scratch.positions);
    free(scratch.spans);
    free(scratch.candidates);
    release(b, B_COUNT);
    return out;
}

static PyMethodDef methods[] = {
    {"search", search, METH_VARARGS,
     "search(codes, ids, offsets, cuts, probe_table, probe_flips, queries, radius, scan_limit)"
     " -> (limits, distances, labels) as bytes. Multi-index probing; a query whose candidates"
     " exceed scan_limit is scanned instead, and scan_limit < 0 scans every query."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_mih", "The inner loops of hashsvc.matching.mih (see _mih.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__mih(void) { return PyModule_Create(&module); }
