/* PDQ's blur-and-decimate to 64x64 (and its quality metric), in C, for the scan fast path.
 *
 * Why C: fastpdq.py expressed this step as two banded 64-row operators built and applied with
 * NumPy. For a small upload the ~40 array calls of fixed overhead cost more than the image
 * (0.3-0.45 ms against a 0.3 ms decode of a 150x200 JPEG), and an image the decoder did not
 * scale (PNG, WebP) had to be box-reduced and converted to a float copy first. Here one pass
 * builds both operators (O(64 * window) per axis, so nothing needs caching) and applies them
 * straight to the decoded bytes, grey or RGB, with the GIL released.
 *
 * The arithmetic is what fastpdq's NumPy operators did before this file: pdqhash's two
 * Jarosz box passes with windows sized from the *original* dimensions, then decimation to 64
 * samples per axis, written as weights per original pixel; each original pixel p's weight goes
 * to the reduced pixel floor((2p + 1) * num / (2 * den)) that holds its centre. Luma from RGB is
 * pdqhashing.cpp's fillFloatLumaFromRGB, in float.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CELLS 64

typedef struct {
    Py_ssize_t *start; /* first reduced pixel of each sample's band */
    Py_ssize_t width;  /* band length (the same for every sample; trailing weights may be 0) */
    double *weights;   /* CELLS x width */
} Axis;

/* The 64 bands of one axis: `full` original pixels shown as `size` reduced ones, pixel p in
 * reduced pixel floor((2p + 1) * num / (2 * den)). Returns 0, or -1 when out of memory. */
static int build_axis(Py_ssize_t full, Py_ssize_t size, long long num, long long den, Axis *axis) {
    Py_ssize_t window = (full + 127) / 128;
    Py_ssize_t reach = (window + 2) / 2 - 1;
    Py_ssize_t lead = window - 1 - reach;
    /* A sample's pixels span at most 2w - 1 and touch at most (2w - 2) * num / den + 2 reduced. */
    Py_ssize_t width = (Py_ssize_t)((2 * window - 2) * num / den) + 2;
    if (width > size) width = size;
    double *diff = calloc((size_t)(2 * window + 2), sizeof(double));
    axis->start = calloc(CELLS, sizeof(Py_ssize_t));
    axis->weights = calloc((size_t)(CELLS * width), sizeof(double));
    axis->width = width;
    if (!diff || !axis->start || !axis->weights) {
        free(diff);
        return -1;
    }
    for (int i = 0; i < CELLS; i++) {
        Py_ssize_t sample = (Py_ssize_t)(((2LL * i + 1) * full) / 128);
        Py_ssize_t first = sample - lead > 0 ? sample - lead : 0;
        Py_ssize_t last = sample + reach < full - 1 ? sample + reach : full - 1;
        double second = 1.0 / (double)(last - first + 1);
        Py_ssize_t pmin = first - lead > 0 ? first - lead : 0;
        Py_ssize_t pmax = last + reach < full - 1 ? last + reach : full - 1;
        memset(diff, 0, sizeof(double) * (size_t)(pmax - pmin + 2));
        for (Py_ssize_t k = first; k <= last; k++) { /* first pass: output k averages [b0, b1) */
            Py_ssize_t b0 = k - lead > 0 ? k - lead : 0;
            Py_ssize_t b1 = k + reach + 1 < full ? k + reach + 1 : full;
            double w = second / (double)(b1 - b0);
            diff[b0 - pmin] += w;
            diff[b1 - pmin] -= w;
        }
        Py_ssize_t j0 = (Py_ssize_t)(((2LL * pmin + 1) * num) / (2 * den));
        if (j0 > size - width) j0 = size - width;
        if (j0 < 0) j0 = 0;
        axis->start[i] = j0;
        double *band = axis->weights + (Py_ssize_t)i * width;
        double running = 0.0;
        for (Py_ssize_t p = pmin; p <= pmax; p++) {
            running += diff[p - pmin];
            Py_ssize_t j = (Py_ssize_t)(((2LL * p + 1) * num) / (2 * den)) - j0;
            if (j < 0) j = 0;
            if (j >= width) j = width - 1;
            band[j] += running;
        }
    }
    free(diff);
    return 0;
}

static void free_axis(Axis *axis) {
    free(axis->start);
    free(axis->weights);
}

/* out[64][64] from pixels (rows x cols, `channels` 1 or 3 bytes, or 1 float32, per pixel). */
static int downsample(const void *pixels, int is_float, int channels, Py_ssize_t rows,
                      Py_ssize_t cols, const Axis *down, const Axis *across, float *out) {
    double *by_rows = malloc(sizeof(double) * (size_t)(CELLS * cols));
    float *line = malloc(sizeof(float) * (size_t)cols);
    if (!by_rows || !line) {
        free(by_rows);
        free(line);
        return -1;
    }
    for (int i = 0; i < CELLS; i++) {
        double *acc = by_rows + (Py_ssize_t)i * cols;
        memset(acc, 0, sizeof(double) * (size_t)cols);
        const double *band = down->weights + (Py_ssize_t)i * down->width;
        for (Py_ssize_t t = 0; t < down->width; t++) {
            double w = band[t];
            if (w == 0.0) continue;
            Py_ssize_t row = down->start[i] + t;
            if (is_float) {
                const float *src = (const float *)pixels + row * cols;
                for (Py_ssize_t c = 0; c < cols; c++) acc[c] += w * src[c];
            } else if (channels == 1) {
                const uint8_t *src = (const uint8_t *)pixels + row * cols;
                for (Py_ssize_t c = 0; c < cols; c++) acc[c] += w * src[c];
            } else {
                const uint8_t *src = (const uint8_t *)pixels + row * cols * 3;
                for (Py_ssize_t c = 0; c < cols; c++)
                    line[c] = 0.299f * src[3 * c] + 0.587f * src[3 * c + 1]
                            + 0.114f * src[3 * c + 2];
                for (Py_ssize_t c = 0; c < cols; c++) acc[c] += w * line[c];
            }
        }
    }
    for (int i = 0; i < CELLS; i++) {
        const double *acc = by_rows + (Py_ssize_t)i * cols;
        for (int k = 0; k < CELLS; k++) {
            const double *band = across->weights + (Py_ssize_t)k * across->width;
            const double *src = acc + across->start[k];
            double sum = 0.0;
            for (Py_ssize_t t = 0; t < across->width; t++) sum += band[t] * src[t];
            out[i * CELLS + k] = (float)sum;
        }
    }
    free(by_rows);
    free(line);
    return 0;
}

/* pdqImageDomainQualityMetric, as pdqhashing.cpp computes it on the float 64x64. */
static int quality(const float *block) {
    long gradient_sum = 0;
    for (int i = 0; i < CELLS - 1; i++)
        for (int j = 0; j < CELLS; j++) {
            int d = (int)((block[i * CELLS + j] - block[(i + 1) * CELLS + j]) * 100.0f / 255.0f);
            gradient_sum += abs(d);
        }
    for (int i = 0; i < CELLS; i++)
        for (int j = 0; j < CELLS - 1; j++) {
            int d = (int)((block[i * CELLS + j] - block[i * CELLS + j + 1]) * 100.0f / 255.0f);
            gradient_sum += abs(d);
        }
    long q = gradient_sum / 90;
    return (int)(q < 100 ? q : 100);
}


/* The k-th smallest of values[0..n) (n <= 256), as sorting would give it: quickselect on a
 * copy, ~10x faster than qsort's ~2,000 comparison calls (the hash needs the
 * median of 256 coefficients once per image, fastpdq's rounding check four more times). */
static float kth_smallest(const float *values, int n, int k) {
    float a[256];
    memcpy(a, values, sizeof(float) * (size_t)n);
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = a[(lo + hi) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) {
                float t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else break;
    }
    return a[k];
}

/* dct64To16, then pdqBuffer16x16ToBits, of the 64x64 `block`, as fastpdq's NumPy did them:
 * in double with the DCT matrix `dct` (16x64, the float-rounded one fastpdq builds), each
 * coefficient rounded to float, bit i*16+j set when it exceeds the torben median (the lower
 * of the two middle values), bits stored big-endian (bit k in byte 31 - k/8, at k%8). */
static void hash_bits(const float *block, const double *dct, unsigned char *bits,
                      float *coefficients) {
    /* Loops ordered so the innermost runs over independent sums (vectorised), each sum still
     * taken in index order: a dot product per coefficient was a ~4x slower dependency chain. */
    double partial[16 * CELLS] = {0}, dct_t[CELLS * 16], sums[256] = {0};
    for (int i = 0; i < 16; i++)
        for (int k = 0; k < CELLS; k++) {
            double w = dct[i * CELLS + k];
            const float *row = block + k * CELLS;
            double *out = partial + i * CELLS;
            for (int l = 0; l < CELLS; l++) out[l] += w * row[l];
        }
    for (int j = 0; j < 16; j++)
        for (int l = 0; l < CELLS; l++) dct_t[l * 16 + j] = dct[j * CELLS + l];
    for (int i = 0; i < 16; i++)
        for (int l = 0; l < CELLS; l++) {
            double p = partial[i * CELLS + l];
            const double *column = dct_t + l * 16;
            double *out = sums + i * 16;
            for (int j = 0; j < 16; j++) out[j] += p * column[j];
        }
    for (int k = 0; k < 256; k++) coefficients[k] = (float)sums[k];
    float median = kth_smallest(coefficients, 256, 127);
    memset(bits, 0, 32);
    for (int k = 0; k < 256; k++)
        if (coefficients[k] > median) bits[31 - k / 8] |= (unsigned char)(1u << (k % 8));
}

/* Both entry points: the 64x64 block (and quality) of the pixels in `args`, and with `with_dct`
 * the hash bits too (`bits`, 32 bytes) and the 16x16 coefficients they came from. Returns the
 * block as bytes, or NULL with an error set. */
static PyObject *run(PyObject *args, int with_dct, int *q, unsigned char *bits,
                     float *coefficients) {
    Py_buffer view, dct = {0};
    Py_ssize_t rows, cols, full_rows, full_cols;
    int channels, is_float;
    long long row_num, row_den, col_num, col_den;
    if (with_dct ? !PyArg_ParseTuple(args, "y*nnipnn(LL)(LL)y*", &view, &rows, &cols, &channels,
                                     &is_float, &full_rows, &full_cols, &row_num, &row_den,
                                     &col_num, &col_den, &dct)
                 : !PyArg_ParseTuple(args, "y*nnipnn(LL)(LL)", &view, &rows, &cols, &channels,
                                     &is_float, &full_rows, &full_cols, &row_num, &row_den,
                                     &col_num, &col_den))
        return NULL;
    PyObject *block = NULL;
    Axis down = {0}, across = {0};
    Py_ssize_t item = is_float ? 4 : 1;
    if (rows < 1 || cols < 1 || full_rows < 1 || full_cols < 1 || (channels != 1 && channels != 3)
        || (is_float && channels != 1) || row_num < 1 || row_den < 1 || col_num < 1
        || col_den < 1 || view.len != rows * cols * channels * item
        || (with_dct && dct.len != (Py_ssize_t)sizeof(double) * 16 * CELLS)) {
        PyErr_SetString(PyExc_ValueError, "downsample: sizes do not match the buffer");
        goto done;
    }
    block = PyBytes_FromStringAndSize(NULL, sizeof(float) * CELLS * CELLS);
    if (!block) goto done;
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = build_axis(full_rows, rows, row_num, row_den, &down)
          || build_axis(full_cols, cols, col_num, col_den, &across)
          || downsample(view.buf, is_float, channels, rows, cols, &down, &across,
                        (float *)PyBytes_AS_STRING(block));
    if (!failed) {
        *q = quality((const float *)PyBytes_AS_STRING(block));
        if (with_dct)
            hash_bits((const float *)PyBytes_AS_STRING(block), dct.buf, bits, coefficients);
    }
    Py_END_ALLOW_THREADS
    if (failed) {
        Py_CLEAR(block);
        PyErr_NoMemory();
    }
done:
    free_axis(&down);
    free_axis(&across);
    PyBuffer_Release(&view);
    if (with_dct && dct.obj) PyBuffer_Release(&dct);
    return block;
}

static PyObject *py_downsample(PyObject *self, PyObject *args) {
    (void)self;
    int q = 0;
    PyObject *block = run(args, 0, &q, NULL, NULL);
    return block ? Py_BuildValue("(Ni)", block, q) : NULL;
}

/* The whole hash in one call: a scan's small upload otherwise pays more for ~10 NumPy calls
 * (DCT, median, bits: ~0.1 ms) than for this arithmetic (~0.02 ms). The coefficients come
 * back too: the dihedral hashes are re-signings of them, and fastpdq checks how many sit on
 * the median (bits decided by rounding alone). */
static PyObject *py_pdq(PyObject *self, PyObject *args) {
    (void)self;
    int q = 0;
    unsigned char bits[32];
    float coefficients[256];
    PyObject *block = run(args, 1, &q, bits, coefficients);
    if (!block) return NULL;
    Py_DECREF(block);
    return Py_BuildValue("(y#iy#)", (const char *)bits, (Py_ssize_t)32, q,
                         (const char *)coefficients, (Py_ssize_t)sizeof coefficients);
}

/* The most of 256 coefficients (float32 bytes, row-major 16x16) within `margin` of their median
 * (the lower middle value, as hash_bits takes it), under each sign pattern the dihedral hashes
 * give them: as they are, odd columns kept and even ones negated, the same for rows, and the
 * checkerboard (even i + j kept). fastpdq's check for bits that rounding alone decides. */
static PyObject *py_near_median(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    double margin;
    if (!PyArg_ParseTuple(args, "y*d", &view, &margin)) return NULL;
    if (view.len != (Py_ssize_t)(sizeof(float) * 256)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "near_median: 256 float32 coefficients expected");
        return NULL;
    }
    const float *c = view.buf;
    float signed_values[256];
    int most = 0;
    for (int pattern = 0; pattern < 4; pattern++) {
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) {
                int keep = pattern == 0 ? 1 : pattern == 1 ? j % 2 : pattern == 2 ? i % 2
                                                              : (i + j) % 2 == 0;
                signed_values[i * 16 + j] = keep ? c[i * 16 + j] : -c[i * 16 + j];
            }
        float median = kth_smallest(signed_values, 256, 127);
        int near = 0;
        for (int k = 0; k < 256; k++)
            near += fabs((double)signed_values[k] - (double)median) <= margin;
        if (near > most) most = near;
    }
    PyBuffer_Release(&view);
    return PyLong_FromLong(most);
}

static PyMethodDef methods[] = {
    {"near_median", py_near_median, METH_VARARGS,
     "near_median(coefficients, margin) -> the most of 256 float32 coefficients within margin "
     "of their median, over the 4 dihedral sign patterns"},
    {"downsample", py_downsample, METH_VARARGS,
     "downsample(pixels, rows, cols, channels, is_float, full_rows, full_cols, (num, den), "
     "(num, den)) -> (64x64 float32 bytes, quality)"},
    {"pdq", py_pdq, METH_VARARGS,
     "pdq(pixels, rows, cols, channels, is_float, full_rows, full_cols, (num, den), (num, den), "
     "dct) -> (32-byte PDQ hash, quality, 16x16 float32 coefficients as bytes); dct: the 16x64 "
     "float64 DCT matrix"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pdqfast", "PDQ's downsample for the scan fast path.", -1, methods,
};

PyMODINIT_FUNC PyInit__pdqfast(void) { return PyModule_Create(&module); }
