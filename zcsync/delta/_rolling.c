/*
 * zcsync.delta._rolling: the per-byte part of the rsync algorithm.
 *
 *   weak_sums(buf, block_len) -> bytes
 *   block_sums(buf, block_len, strong_len, seed=0) -> (weak: bytes, strong: bytes)
 *   scan(src, block_len, weak, strong, strong_len, basis_size, seed=0,
 *        max_chain=64, false_budget=-1, inplace=False) -> bytes
 *
 * Weak sum of a block b[0..n): s1 = sum b[i], s2 = sum (n - i) * b[i],
 * weak = (s1 & 0xffff) | (s2 << 16) (rsync's, with unsigned bytes and no
 * CHAR_OFFSET).  Weak tables are little-endian uint32, one per block.
 * Strong sum: the canonical (big-endian) XXH3-128 digest of the block with the
 * given seed, truncated to strong_len bytes -- the same bytes as Python's
 * xxhash.xxh3_128_digest(block, seed)[:strong_len].
 *
 * scan() returns native-endian int64 triples:
 *   (0, src_offset, length)        literal run
 *   (1, first_block, block_count)  run of consecutive basis blocks
 * ops are in source order and cover the source exactly once.
 *
 * Matching follows rsync's hash_search: at each offset the rolling weak sum
 * is looked up (a bitmap prefilter, then a table of equal-sum groups built
 * once from the signature); candidates are verified with the strong sum,
 * computed at most once per offset.  The block after the previous match is
 * tried first, so unchanged regions coalesce into one run; then at most
 * max_chain blocks of the group, in block order (rsync issue #217).  Only
 * the short last block can match a window shorter than block_len, and only
 * at the end of the source.  Weak hits that fail the strong check cost a
 * hash of the window each; past false_budget bytes of such hashing (a
 * hostile signature against, say, a run of zeros) the rest is literal, so
 * the scan stays linear whatever the peer sent.
 *
 * inplace (the receiver rebuilds over the basis itself, in source order, as
 * rsync's --inplace): a block may be used only where the receiver has not
 * written yet -- at or after the current offset -- or where it was matched at
 * its own offset earlier (such blocks are never written, so they survive,
 * rsync's SUMFLAG_SAME_OFFSET).  At a block-aligned offset the block at that
 * very offset is tried first: a match there costs the receiver no write.
 *
 * Everything a peer could send (block_len, strong_len, table lengths, basis
 * size) is checked here again, whatever the Python side validated, so that a
 * bad signature can never make us read out of bounds (CVE-2024-12084 class).
 *
 * A mapped file that is truncated while we read it raises SIGBUS.  While a
 * thread is inside a guarded region, a SIGBUS whose fault address lies in that
 * thread's buffer is turned into zcsync.delta.errors.SourceChanged with
 * sigsetjmp/siglongjmp (state is thread-local); any other SIGBUS goes to the
 * previous handler and then kills the process as before.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <setjmp.h>
#include <sys/vfs.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include "xxhash.h"

#define MAX_BLOCK_LEN (1u << 17)    /* rsync's MAX_BLOCK_SIZE for protocol >= 30 */
#define MAX_STRONG_LEN 16
#define MAX_COUNT 0x7fffffffu       /* block indices are uint32 internally */
#define DEFAULT_MAX_CHAIN 64

enum { OP_LITERAL = 0, OP_MATCH = 1 };

static PyObject *SourceChanged;     /* zcsync.delta.errors.SourceChanged */

/* ------------------------------------------------------------------ */
/* SIGBUS guard                                                        */
/* ------------------------------------------------------------------ */

static __thread sigjmp_buf *volatile tl_jmp;
static __thread const char *volatile tl_lo;
static __thread const char *volatile tl_hi;

static struct sigaction prev_bus;
static volatile sig_atomic_t have_prev_bus;
/* Threads inside a guarded region.  Checked first so that a SIGBUS while no
   scan runs never touches our (lazily allocated, dlopen-ed) TLS. */
static int armed_threads;

static inline void
arm(sigjmp_buf *jb, const void *lo, size_t n)
{
    tl_lo = (const char *)lo;
    tl_hi = (const char *)lo + n;
    tl_jmp = jb;
    __atomic_add_fetch(&armed_threads, 1, __ATOMIC_SEQ_CST);
}

static inline void
disarm(void)
{
    tl_jmp = NULL;
    __atomic_sub_fetch(&armed_threads, 1, __ATOMIC_SEQ_CST);
}

static void
bus_handler(int sig, siginfo_t *si, void *uc)
{
    sigjmp_buf *jb = __atomic_load_n(&armed_threads, __ATOMIC_SEQ_CST) ? tl_jmp : NULL;
    if (jb != NULL && si != NULL) {
        const char *a = (const char *)si->si_addr;
        if (a >= tl_lo && a < tl_hi) {
            disarm();
            siglongjmp(*jb, 1);
        }
    }
    /* Not ours: let the previous handler (faulthandler, say) report it, then
       die with the default action when the faulting access is retried. */
    if (have_prev_bus) {
        if (prev_bus.sa_flags & SA_SIGINFO) {
            if (prev_bus.sa_sigaction != NULL)
                prev_bus.sa_sigaction(sig, si, uc);
        }
        else if (prev_bus.sa_handler != SIG_DFL && prev_bus.sa_handler != SIG_IGN) {
            prev_bus.sa_handler(sig);
        }
    }
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGBUS, &dfl, NULL);
}

/* Called with the GIL held before each guarded call.  The handler stays
   installed afterwards (it chains when not armed): removing it again would
   race with other threads that are scanning. */
static int
ensure_bus_handler(void)
{
    struct sigaction cur;
    if (sigaction(SIGBUS, NULL, &cur) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == bus_handler)
        return 0;
    struct sigaction act;
    memset(&act, 0, sizeof act);
    act.sa_sigaction = bus_handler;
    act.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&act.sa_mask);
    have_prev_bus = 0;
    if (sigaction(SIGBUS, &act, &prev_bus) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    have_prev_bus = 1;
    return 0;
}

static void
raise_source_changed(void)
{
    PyObject *exc = PyObject_CallFunction(
        SourceChanged, "is", EIO,
        "File shrank while it was mapped (SIGBUS caught)");
    if (exc != NULL) {
        PyErr_SetObject(SourceChanged, exc);
        Py_DECREF(exc);
    }
}

/* ------------------------------------------------------------------ */
/* sums                                                                */
/* ------------------------------------------------------------------ */

/* s1 = sum b[i], s2 = sum (n - i) * b[i], both mod 2^32.  Sequentially that is
   "s1 += b; s2 += s1" per byte; a chunk of w bytes at once adds w * s1 (the sum so
   far, once per byte of the chunk) plus sum (w - j) * b[j] to s2.  The vector
   versions keep per-lane partial sums and combine them at the end: the weak sums
   of blocks and of the window after each match are most of the CPU time of both
   the signature and the scan, and the scalar loop runs at about 5 GB/s. */
static inline void
weak_parts_scalar(const uint8_t *p, size_t n, uint32_t *s1o, uint32_t *s2o)
{
    uint32_t s1 = *s1o, s2 = *s2o;
    size_t i = 0;
    /* four bytes at a time: s2 += 4*s1 + 4b0 + 3b1 + 2b2 + b3 */
    for (; i + 4 <= n; i += 4) {
        uint32_t b0 = p[i], b1 = p[i + 1], b2 = p[i + 2], b3 = p[i + 3];
        s2 += 4 * s1 + 4 * b0 + 3 * b1 + 2 * b2 + b3;
        s1 += b0 + b1 + b2 + b3;
    }
    for (; i < n; i++) {
        s1 += p[i];
        s2 += s1;
    }
    *s1o = s1;
    *s2o = s2;
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86_SIMD 1

static inline uint32_t
hsum_epi32(__m128i v)
{
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)));
    return (uint32_t)_mm_cvtsi128_si32(v);
}

/* SSE2 (every x86-64): 16 bytes per step. */
static void
weak_parts_sse2(const uint8_t *p, size_t n, uint32_t *s1o, uint32_t *s2o)
{
    const __m128i zero = _mm_setzero_si128();
    const __m128i w_lo = _mm_setr_epi16(16, 15, 14, 13, 12, 11, 10, 9);
    const __m128i w_hi = _mm_setr_epi16(8, 7, 6, 5, 4, 3, 2, 1);
    __m128i v_s1 = zero, v_prev = zero, v_w = zero;
    size_t m = n / 16;
    for (size_t c = 0; c < m; c++) {
        __m128i x = _mm_loadu_si128((const __m128i *)(p + 16 * c));
        v_prev = _mm_add_epi32(v_prev, v_s1);
        v_s1 = _mm_add_epi32(v_s1, _mm_sad_epu8(x, zero));
        v_w = _mm_add_epi32(v_w, _mm_madd_epi16(_mm_unpacklo_epi8(x, zero), w_lo));
        v_w = _mm_add_epi32(v_w, _mm_madd_epi16(_mm_unpackhi_epi8(x, zero), w_hi));
    }
    uint32_t s1 = *s1o, s2 = *s2o;
    s2 += 16u * (uint32_t)m * s1 + 16u * hsum_epi32(v_prev) + hsum_epi32(v_w);
    s1 += hsum_epi32(v_s1);
    *s1o = s1;
    *s2o = s2;
    if (n % 16)
        weak_parts_scalar(p + 16 * m, n % 16, s1o, s2o);
}

/* AVX2: 32 bytes per step; maddubs weighs the bytes (weights fit in int8). */
__attribute__((target("avx2"))) static void
weak_parts_avx2(const uint8_t *p, size_t n, uint32_t *s1o, uint32_t *s2o)
{
    const __m256i zero = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i w = _mm256_setr_epi8(32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
                                       16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1);
    __m256i v_s1 = zero, v_prev = zero, v_w = zero;
    size_t m = n / 32;
    for (size_t c = 0; c < m; c++) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(p + 32 * c));
        v_prev = _mm256_add_epi32(v_prev, v_s1);
        v_s1 = _mm256_add_epi32(v_s1, _mm256_sad_epu8(x, zero));
        v_w = _mm256_add_epi32(v_w, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), ones));
    }
    __m128i a_s1 = _mm_add_epi32(_mm256_castsi256_si128(v_s1), _mm256_extracti128_si256(v_s1, 1));
    __m128i a_prev = _mm_add_epi32(_mm256_castsi256_si128(v_prev), _mm256_extracti128_si256(v_prev, 1));
    __m128i a_w = _mm_add_epi32(_mm256_castsi256_si128(v_w), _mm256_extracti128_si256(v_w, 1));
    uint32_t s1 = *s1o, s2 = *s2o;
    s2 += 32u * (uint32_t)m * s1 + 32u * hsum_epi32(a_prev) + hsum_epi32(a_w);
    s1 += hsum_epi32(a_s1);
    *s1o = s1;
    *s2o = s2;
    if (n % 32)
        weak_parts_sse2(p + 32 * m, n % 32, s1o, s2o);
}

static int have_avx2 = -1;
#endif

static inline void
weak_parts(const uint8_t *p, size_t n, uint32_t *s1o, uint32_t *s2o)
{
    *s1o = *s2o = 0;
#ifdef HAVE_X86_SIMD
    if (n >= 64) {
        if (have_avx2 > 0)
            weak_parts_avx2(p, n, s1o, s2o);
        else
            weak_parts_sse2(p, n, s1o, s2o);
        return;
    }
#endif
    weak_parts_scalar(p, n, s1o, s2o);
}

static inline uint32_t
weak_of(uint32_t s1, uint32_t s2)
{
    return (s1 & 0xffffu) | (s2 << 16);
}

static inline void
strong_digest(const uint8_t *p, size_t n, uint64_t seed, uint8_t out[16])
{
    XXH128_hash_t h = XXH3_128bits_withSeed(p, n, (XXH64_hash_t)seed);
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, h);
    memcpy(out, c.digest, 16);
}

static inline void
put_le32(uint8_t *d, uint32_t v)
{
    d[0] = (uint8_t)v;
    d[1] = (uint8_t)(v >> 8);
    d[2] = (uint8_t)(v >> 16);
    d[3] = (uint8_t)(v >> 24);
}

static inline uint32_t
get_le32(const uint8_t *s)
{
    return (uint32_t)s[0] | ((uint32_t)s[1] << 8) | ((uint32_t)s[2] << 16)
        | ((uint32_t)s[3] << 24);
}

/* ------------------------------------------------------------------ */
/* argument helpers                                                    */
/* ------------------------------------------------------------------ */

static int
parse_seed(PyObject *obj, uint64_t *seed)
{
    if (obj == NULL || obj == Py_None) {
        *seed = 0;
        return 0;
    }
    if (!PyLong_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "seed must be an int");
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "seed must be in [0, 2**64)");
        return -1;
    }
    *seed = (uint64_t)v;
    return 0;
}

static int
check_block_len(Py_ssize_t block_len)
{
    if (block_len < 1 || (size_t)block_len > MAX_BLOCK_LEN) {
        PyErr_Format(PyExc_ValueError, "block_len %zd out of range [1, %u]",
                     block_len, MAX_BLOCK_LEN);
        return -1;
    }
    return 0;
}

static int
check_strong_len(Py_ssize_t strong_len)
{
    if (strong_len < 1 || strong_len > MAX_STRONG_LEN) {
        PyErr_Format(PyExc_ValueError, "strong_len %zd out of range [1, %d]",
                     strong_len, MAX_STRONG_LEN);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* weak_sums / block_sums                                              */
/* ------------------------------------------------------------------ */

typedef struct {
    const uint8_t *src;
    size_t n;
    size_t block_len;
    size_t strong_len;      /* 0: weak only */
    uint64_t seed;
    uint8_t *weak_out;
    uint8_t *strong_out;
} sums_job;

static void
sums_run(sums_job *j)
{
    size_t count = (j->n + j->block_len - 1) / j->block_len;
    uint8_t dig[16];
    for (size_t i = 0; i < count; i++) {
        size_t off = i * j->block_len;
        size_t len = j->n - off < j->block_len ? j->n - off : j->block_len;
        uint32_t s1, s2;
        weak_parts(j->src + off, len, &s1, &s2);
        put_le32(j->weak_out + 4 * i, weak_of(s1, s2));
        if (j->strong_len) {
            strong_digest(j->src + off, len, j->seed, dig);
            memcpy(j->strong_out + i * j->strong_len, dig, j->strong_len);
        }
    }
}

/* Returns 0, or 1 if SIGBUS was caught. */
static int
sums_guarded(sums_job *j)
{
    sigjmp_buf jb;
    if (sigsetjmp(jb, 1) != 0)
        return 1;           /* the handler disarmed */
    arm(&jb, j->src, j->n);
    sums_run(j);
    disarm();
    return 0;
}

static PyObject *
do_sums(PyObject *bufobj, Py_ssize_t block_len, Py_ssize_t strong_len, uint64_t seed)
{
    Py_buffer view;
    PyObject *weak = NULL, *strong = NULL, *ret = NULL;

    if (check_block_len(block_len) < 0)
        return NULL;
    if (PyObject_GetBuffer(bufobj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (ensure_bus_handler() < 0)
        goto done;

    size_t n = (size_t)view.len;
    size_t count = (n + (size_t)block_len - 1) / (size_t)block_len;
    if (count > MAX_COUNT) {
        PyErr_SetString(PyExc_OverflowError, "too many blocks");
        goto done;
    }
    weak = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(4 * count));
    if (weak == NULL)
        goto done;
    if (strong_len) {
        strong = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(count * (size_t)strong_len));
        if (strong == NULL)
            goto done;
    }
    sums_job j = {
        .src = (const uint8_t *)view.buf, .n = n, .block_len = (size_t)block_len,
        .strong_len = (size_t)strong_len, .seed = seed,
        .weak_out = (uint8_t *)PyBytes_AS_STRING(weak),
        .strong_out = strong ? (uint8_t *)PyBytes_AS_STRING(strong) : NULL,
    };
    int bus;
    Py_BEGIN_ALLOW_THREADS
    bus = sums_guarded(&j);
    Py_END_ALLOW_THREADS
    if (bus) {
        raise_source_changed();
        goto done;
    }
    if (strong_len)
        ret = PyTuple_Pack(2, weak, strong);
    else {
        ret = weak;
        Py_INCREF(ret);
    }
done:
    Py_XDECREF(weak);
    Py_XDECREF(strong);
    PyBuffer_Release(&view);
    return ret;
}

PyDoc_STRVAR(weak_sums_doc,
"weak_sums(buffer, block_len) -> bytes\n\n"
"Rolling (rsync) weak sum of each block of buffer as little-endian uint32;\n"
"the last block may be short.");

static PyObject *
py_weak_sums(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"buffer", "block_len", NULL};
    PyObject *buf;
    Py_ssize_t block_len;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "On:weak_sums", kwlist, &buf, &block_len))
        return NULL;
    return do_sums(buf, block_len, 0, 0);
}

PyDoc_STRVAR(block_sums_doc,
"block_sums(buffer, block_len, strong_len, seed=0) -> (weak, strong)\n\n"
"Weak sums (as weak_sums) and truncated XXH3-128 strong sums of each block.");

static PyObject *
py_block_sums(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"buffer", "block_len", "strong_len", "seed", NULL};
    PyObject *buf, *seedobj = NULL;
    Py_ssize_t block_len, strong_len;
    uint64_t seed;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Onn|O:block_sums", kwlist,
                                     &buf, &block_len, &strong_len, &seedobj))
        return NULL;
    if (check_strong_len(strong_len) < 0 || parse_seed(seedobj, &seed) < 0)
        return NULL;
    return do_sums(buf, block_len, strong_len, seed);
}

/* ------------------------------------------------------------------ */
/* scan                                                                */
/* ------------------------------------------------------------------ */

typedef struct {
    uint32_t weak;
    uint32_t start;     /* first position in sorted[] */
    uint32_t n;         /* number of blocks with this weak sum; 0 = empty slot */
} group_t;

typedef struct {
    /* inputs */
    const uint8_t *src;
    size_t n;
    uint32_t L;
    uint32_t slen;
    uint64_t seed;
    uint32_t count;
    uint32_t last_len;
    const uint8_t *strong;
    uint32_t max_chain;
    uint64_t false_budget;
    /* lookup structures (built before the scan) */
    uint32_t *weak;         /* [count] */
    uint32_t *sorted;       /* [count] block indices by (weak, index) */
    group_t *table;
    uint32_t tmask;
    uint64_t *bitmap;
    uint32_t bshift;
    /* output; volatile because a siglongjmp can leave the scan at any load */
    int64_t *volatile ops;
    volatile size_t nops;   /* in int64 units */
    volatile size_t cap;
    volatile int oom;
    uint64_t false_bytes;
    int inplace;
    uint8_t *same;          /* inplace: [count], 1 = matched at its own offset */
    /* resumable scan (scanner/scan_next): windows from start, up to stop */
    size_t start;
    size_t stop;            /* SIZE_MAX: to the end */
    size_t next;            /* out: where the next call starts (n: done) */
    uint32_t want;          /* in/out: the block expected next */
    XXH3_state_t *hash;     /* scanner with digest: XXH3-128 of what was scanned */
    Py_buffer strong_view;  /* scanner: keeps the strong table alive */
    int broken;             /* scanner: SIGBUS or OOM seen; unusable */
} scan_ctx;

static inline uint32_t
fmix32(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static inline uint32_t
bit_hash(uint32_t w, uint32_t shift)
{
    return (w * 0x9e3779b1u) >> shift;
}

static inline uint32_t
block_len_of(const scan_ctx *c, uint32_t i)
{
    return i + 1 == c->count ? c->last_len : c->L;
}

static const group_t *
lookup(const scan_ctx *c, uint32_t w)
{
    uint32_t h = fmix32(w) & c->tmask;
    for (;;) {
        const group_t *g = &c->table[h];
        if (g->n == 0)
            return NULL;
        if (g->weak == w)
            return g;
        h = (h + 1) & c->tmask;
    }
}

static void
free_tables(scan_ctx *c)
{
    free(c->weak);
    free(c->sorted);
    free(c->table);
    free(c->bitmap);
    free(c->same);
    c->weak = c->sorted = NULL;
    c->table = NULL;
    c->bitmap = NULL;
    c->same = NULL;
}

/* inplace: may block i be used for the window at source offset k? */
static inline int
usable(const scan_ctx *c, uint32_t i, size_t k)
{
    return !c->inplace || (uint64_t)i * c->L >= (uint64_t)k || c->same[i];
}

/* Builds the weak-sum table (plain C, no Python calls). Returns -1 on OOM. */
static int
build_tables(scan_ctx *c, const uint8_t *weak_le)
{
    uint32_t count = c->count;
    uint32_t *tmp = NULL, *cnt = NULL;

    c->weak = malloc((size_t)count * sizeof(uint32_t) + 1);
    c->sorted = malloc((size_t)count * sizeof(uint32_t) + 1);
    tmp = malloc((size_t)count * sizeof(uint32_t) + 1);
    cnt = malloc(65536 * sizeof(uint32_t));
    if (!c->weak || !c->sorted || !tmp || !cnt)
        goto oom;
    for (uint32_t i = 0; i < count; i++)
        c->weak[i] = get_le32(weak_le + 4 * (size_t)i);

    /* stable LSD radix sort of indices by weak sum, 16 bits per pass, so that
       equal weak sums keep ascending block order */
    memset(cnt, 0, 65536 * sizeof(uint32_t));
    for (uint32_t i = 0; i < count; i++)
        cnt[c->weak[i] & 0xffff]++;
    for (uint32_t b = 0, sum = 0; b < 65536; b++) {
        uint32_t t = cnt[b];
        cnt[b] = sum;
        sum += t;
    }
    for (uint32_t i = 0; i < count; i++)
        tmp[cnt[c->weak[i] & 0xffff]++] = i;
    memset(cnt, 0, 65536 * sizeof(uint32_t));
    for (uint32_t i = 0; i < count; i++)
        cnt[c->weak[i] >> 16]++;
    for (uint32_t b = 0, sum = 0; b < 65536; b++) {
        uint32_t t = cnt[b];
        cnt[b] = sum;
        sum += t;
    }
    for (uint32_t j = 0; j < count; j++) {
        uint32_t i = tmp[j];
        c->sorted[cnt[c->weak[i] >> 16]++] = i;
    }
    free(tmp);
    free(cnt);
    tmp = cnt = NULL;

    uint32_t distinct = 0;
    for (uint32_t j = 0; j < count; j++)
        if (j == 0 || c->weak[c->sorted[j]] != c->weak[c->sorted[j - 1]])
            distinct++;
    size_t tsize = 16;
    while (tsize < 2 * (size_t)distinct)
        tsize <<= 1;
    c->table = calloc(tsize, sizeof(group_t));
    if (!c->table)
        goto oom;
    c->tmask = (uint32_t)(tsize - 1);
    for (uint32_t j = 0; j < count;) {
        uint32_t w = c->weak[c->sorted[j]];
        uint32_t k = j + 1;
        while (k < count && c->weak[c->sorted[k]] == w)
            k++;
        uint32_t h = fmix32(w) & c->tmask;
        while (c->table[h].n != 0)
            h = (h + 1) & c->tmask;
        c->table[h].weak = w;
        c->table[h].start = j;
        c->table[h].n = k - j;
        j = k;
    }

    /* ~256 bits per block: false hits cost a mispredicted branch and a
       table probe each, so they must be rare (~0.3%); the bitmap is still
       cache-sized (512 KiB for a 256 MiB basis, 16 MiB at most) */
    uint32_t bbits = 18;
    while (bbits < 27 && ((size_t)1 << bbits) < (size_t)count * 256)
        bbits++;
    c->bitmap = calloc(((size_t)1 << bbits) / 64, sizeof(uint64_t));
    if (!c->bitmap)
        goto oom;
    c->bshift = 32 - bbits;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t h = bit_hash(c->weak[i], c->bshift);
        c->bitmap[h >> 6] |= (uint64_t)1 << (h & 63);
    }
    if (c->inplace) {
        c->same = calloc((size_t)count + 1, 1);
        if (!c->same)
            goto oom;
    }
    return 0;
oom:
    free(tmp);
    free(cnt);
    free_tables(c);
    return -1;
}

static int
push_op(scan_ctx *c, int64_t kind, int64_t a, int64_t b)
{
    if (c->nops + 3 > c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 3 * 64;
        int64_t *p = realloc(c->ops, ncap * sizeof(int64_t));
        if (p == NULL) {
            c->oom = 1;
            return -1;
        }
        c->ops = p;
        c->cap = ncap;
    }
    int64_t *o = c->ops + c->nops;
    o[0] = kind;
    o[1] = a;
    o[2] = b;
    c->nops += 3;
    return 0;
}

typedef struct {
    size_t lit;             /* start of the pending literal */
    int64_t run_first;      /* pending match run, -1 if none */
    int64_t run_cnt;
    size_t run_end;
} emit_state;

static int
flush_run(scan_ctx *c, emit_state *e)
{
    if (e->run_first >= 0) {
        if (push_op(c, OP_MATCH, e->run_first, e->run_cnt) < 0)
            return -1;
        e->run_first = -1;
    }
    return 0;
}

static int
emit_match(scan_ctx *c, emit_state *e, uint32_t i, size_t k)
{
    size_t len = block_len_of(c, i);
    if (e->run_first >= 0 && (uint64_t)(e->run_first + e->run_cnt) == i && e->run_end == k) {
        e->run_cnt++;
    }
    else {
        if (flush_run(c, e) < 0)
            return -1;
        if (k > e->lit && push_op(c, OP_LITERAL, (int64_t)e->lit, (int64_t)(k - e->lit)) < 0)
            return -1;
        e->run_first = i;
        e->run_cnt = 1;
    }
    e->run_end = k + len;
    e->lit = k + len;
    return 0;
}

/* Verifies the candidates for window [k, k+wlen) with weak sum w.  Returns the
   matching block index, or -1. */
static int64_t
try_match(scan_ctx *c, const group_t *g, size_t k, uint32_t wlen, uint32_t w, uint32_t want)
{
    uint8_t dig[16];
    int have = 0;
    const uint8_t *p = c->src + k;

    if (c->inplace && k % c->L == 0) {
        /* the block at this very offset: a match the receiver need not write */
        uint64_t a = k / c->L;
        if (a < c->count && c->weak[a] == w && block_len_of(c, (uint32_t)a) == wlen) {
            strong_digest(p, wlen, c->seed, dig);
            have = 1;
            if (memcmp(c->strong + (size_t)a * c->slen, dig, c->slen) == 0)
                return (int64_t)a;
        }
    }
    if (want < c->count && c->weak[want] == w && block_len_of(c, want) == wlen
        && usable(c, want, k)) {
        if (!have) {
            strong_digest(p, wlen, c->seed, dig);
            have = 1;
        }
        if (memcmp(c->strong + (size_t)want * c->slen, dig, c->slen) == 0)
            return want;
    }
    /* rsync issue #217: walk at most max_chain blocks of an equal-sum chain */
    uint32_t end = g->n < c->max_chain ? g->n : c->max_chain;
    for (uint32_t j = 0; j < end; j++) {
        uint32_t i = c->sorted[g->start + j];
        if (i == want || block_len_of(c, i) != wlen || !usable(c, i, k))
            continue;
        if (!have) {
            strong_digest(p, wlen, c->seed, dig);
            have = 1;
        }
        if (memcmp(c->strong + (size_t)i * c->slen, dig, c->slen) == 0)
            return i;
    }
    if (have)
        c->false_bytes += wlen;
    return -1;
}

/* The hot loop: roll the window from k until its weak sum is in the table
   or k reaches last.  Kept apart (noinline) so that what it needs lives in
   registers; a bitmap hit that the table refutes (a false hit) stays in
   the loop. */
static __attribute__((noinline)) size_t
roll_to_hit(const scan_ctx *c, const uint8_t *p, size_t k, size_t last,
            uint32_t *ps1, uint32_t *ps2, const group_t **pg)
{
    const uint32_t L = c->L;
    const uint64_t *bitmap = c->bitmap;
    const uint32_t shift = c->bshift;
    uint32_t s1 = *ps1, s2 = *ps2;
    const group_t *g = NULL;
    for (;;) {
        uint32_t w = weak_of(s1, s2);
        uint32_t h = bit_hash(w, shift);
        if (__builtin_expect((bitmap[h >> 6] >> (h & 63)) & 1, 0)) {
            g = lookup(c, w);
            if (g != NULL)
                break;
        }
        if (k == last)
            break;
        uint32_t out = p[k], in = p[k + L];
        s1 += in - out;
        s2 += s1 - L * out;
        k++;
    }
    *ps1 = s1;
    *ps2 = s2;
    *pg = g;
    return k;
}

/* Returns 0, or -1 on OOM (c->oom set). */
static int
scan_run(scan_ctx *c)
{
    const uint8_t *p = c->src;
    const size_t n = c->n;
    const uint32_t L = c->L;
    const size_t stop = c->stop;
    emit_state e = {.lit = c->start, .run_first = -1, .run_cnt = 0, .run_end = 0};
    uint32_t want = c->want;
    size_t k = c->start;

    c->next = n;
    if (c->count == 0 || n == 0 || k >= n)
        goto finish;

    if (n >= L && k <= n - L) {
        uint32_t s1, s2;
        weak_parts(p + k, L, &s1, &s2);
        const size_t last = n - L;      /* last start of a full window */
        for (;;) {
            const group_t *g;
            if (k >= stop) {
                /* the window at k is the next call's; [lit, k) is literal for sure */
                c->next = k;
                c->want = want;
                if (flush_run(c, &e) < 0)
                    return -1;
                if (k > e.lit && push_op(c, OP_LITERAL, (int64_t)e.lit, (int64_t)(k - e.lit)) < 0)
                    return -1;
                return 0;
            }
            k = roll_to_hit(c, p, k, stop - 1 < last ? stop - 1 : last, &s1, &s2, &g);
            if (g != NULL) {
                int64_t m = try_match(c, g, k, L, weak_of(s1, s2), want);
                if (m >= 0) {
                    if (emit_match(c, &e, (uint32_t)m, k) < 0)
                        return -1;
                    if (c->inplace && (uint64_t)m * L == k)
                        c->same[m] = 1;
                    want = (uint32_t)m + 1;
                    k += L;
                    if (k > last)
                        break;
                    weak_parts(p + k, L, &s1, &s2);
                    continue;
                }
                if (c->false_bytes > c->false_budget)
                    goto finish;    /* adversarial: the rest is literal */
            }
            if (k == last) {
                k++;
                break;
            }
            uint32_t out = p[k], in = p[k + L];
            s1 += in - out;
            s2 += s1 - L * out;
            k++;
        }
    }

    /* only a short last block can match a window shorter than L, and only
       at the very end of the source */
    if (c->last_len < L && n >= c->last_len) {
        size_t t = n - c->last_len;
        if (t >= k) {
            uint32_t s1, s2;
            uint32_t b = c->count - 1;
            weak_parts(p + t, c->last_len, &s1, &s2);
            uint32_t w = weak_of(s1, s2);
            if (c->weak[b] == w && usable(c, b, t)) {
                uint8_t dig[16];
                strong_digest(p + t, c->last_len, c->seed, dig);
                if (memcmp(c->strong + (size_t)b * c->slen, dig, c->slen) == 0) {
                    if (emit_match(c, &e, b, t) < 0)
                        return -1;
                }
            }
        }
    }

finish:
    if (flush_run(c, &e) < 0)
        return -1;
    if (n > e.lit && push_op(c, OP_LITERAL, (int64_t)e.lit, (int64_t)(n - e.lit)) < 0)
        return -1;
    return 0;
}

/* Returns 0, -1 on OOM, 1 if SIGBUS was caught. */
static int
scan_guarded(scan_ctx *c)
{
    sigjmp_buf jb;
    if (sigsetjmp(jb, 1) != 0)
        return 1;           /* the handler disarmed */
    arm(&jb, c->src, c->n);
    int r = scan_run(c);
    disarm();
    return r;
}

PyDoc_STRVAR(scan_doc,
"scan(src, block_len, weak, strong, strong_len, basis_size, seed=0,\n"
"     max_chain=64, false_budget=-1) -> bytes\n\n"
"Find basis blocks at any offset of src.  Returns native int64 triples:\n"
"(0, src_offset, length) literal runs and (1, first_block, count) block runs.\n"
"max_chain caps the blocks tried per position among equal weak sums.\n"
"false_budget caps the bytes hashed for weak hits that fail the strong check;\n"
"past it the rest of src is literal (-1: 64 MiB + 4 * len(src)).\n"
"inplace: the receiver writes over the basis in source order; only blocks\n"
"it has not overwritten yet are used (see the module comment).");

static PyObject *
py_scan(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"src", "block_len", "weak", "strong", "strong_len",
                             "basis_size", "seed", "max_chain", "false_budget",
                             "inplace", NULL};
    PyObject *srcobj, *weakobj, *strongobj, *seedobj = NULL;
    Py_ssize_t block_len, strong_len, max_chain = DEFAULT_MAX_CHAIN;
    long long basis_size, false_budget = -1;
    int inplace = 0;
    uint64_t seed;
    Py_buffer src = {0}, wv = {0}, sv = {0};
    PyObject *ret = NULL;
    scan_ctx c;

    memset(&c, 0, sizeof c);
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OnOOnL|OnLp:scan", kwlist,
                                     &srcobj, &block_len, &weakobj, &strongobj,
                                     &strong_len, &basis_size, &seedobj,
                                     &max_chain, &false_budget, &inplace))
        return NULL;
    if (check_block_len(block_len) < 0 || check_strong_len(strong_len) < 0
        || parse_seed(seedobj, &seed) < 0)
        return NULL;
    if (max_chain < 1) {
        PyErr_SetString(PyExc_ValueError, "max_chain must be >= 1");
        return NULL;
    }
    if (basis_size < 0) {
        PyErr_SetString(PyExc_ValueError, "basis_size must be >= 0");
        return NULL;
    }
    if (PyObject_GetBuffer(srcobj, &src, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(weakobj, &wv, PyBUF_SIMPLE) < 0)
        goto done;
    if (PyObject_GetBuffer(strongobj, &sv, PyBUF_SIMPLE) < 0)
        goto done;

    /* the table lengths must agree with each other and with the basis size */
    if (wv.len % 4 != 0) {
        PyErr_SetString(PyExc_ValueError, "weak table length is not a multiple of 4");
        goto done;
    }
    size_t count = (size_t)wv.len / 4;
    if (count > MAX_COUNT) {
        PyErr_SetString(PyExc_ValueError, "too many blocks");
        goto done;
    }
    if ((size_t)sv.len != count * (size_t)strong_len) {
        PyErr_SetString(PyExc_ValueError, "strong table length does not match weak table");
        goto done;
    }
    unsigned long long bs = (unsigned long long)basis_size;
    unsigned long long want_count = bs / (unsigned long long)block_len
        + (bs % (unsigned long long)block_len != 0);
    if (want_count != count) {
        PyErr_SetString(PyExc_ValueError, "block count does not match basis size");
        goto done;
    }
    if (ensure_bus_handler() < 0)
        goto done;

    c.src = (const uint8_t *)src.buf;
    c.n = (size_t)src.len;
    c.L = (uint32_t)block_len;
    c.slen = (uint32_t)strong_len;
    c.seed = seed;
    c.count = (uint32_t)count;
    c.last_len = count ? (uint32_t)(bs - (unsigned long long)(count - 1) * (unsigned long long)block_len) : 0;
    c.strong = (const uint8_t *)sv.buf;
    c.max_chain = max_chain > (Py_ssize_t)UINT32_MAX ? UINT32_MAX : (uint32_t)max_chain;
    c.false_budget = false_budget >= 0 ? (uint64_t)false_budget
                                       : ((uint64_t)64 << 20) + 4 * (uint64_t)c.n;
    c.inplace = inplace;
    c.start = 0;
    c.stop = SIZE_MAX;
    c.want = UINT32_MAX;

    int r = 0, built = 0;
    Py_BEGIN_ALLOW_THREADS
    if (c.count && c.n) {
        built = build_tables(&c, (const uint8_t *)wv.buf) == 0;
        r = built ? scan_guarded(&c) : -1;
    }
    else
        r = scan_guarded(&c);
    Py_END_ALLOW_THREADS

    if (r == 1)
        raise_source_changed();
    else if (r < 0)
        PyErr_NoMemory();
    else
        ret = PyBytes_FromStringAndSize((const char *)c.ops, (Py_ssize_t)(c.nops * sizeof(int64_t)));
done:
    free(c.ops);
    free_tables(&c);
    if (src.obj)
        PyBuffer_Release(&src);
    if (wv.obj)
        PyBuffer_Release(&wv);
    if (sv.obj)
        PyBuffer_Release(&sv);
    return ret;
}

/* ------------------------------------------------------------------ */
/* scanner: the same scan in pieces, for a sender that sends as it scans */
/* ------------------------------------------------------------------ */

#define SCANNER_NAME "zcsync.delta._rolling.scanner"

static void
scanner_free(PyObject *cap)
{
    scan_ctx *c = PyCapsule_GetPointer(cap, SCANNER_NAME);
    if (c == NULL)
        return;
    free(c->ops);
    free_tables(c);
    if (c->hash)
        XXH3_freeState(c->hash);
    if (c->strong_view.obj)
        PyBuffer_Release(&c->strong_view);
    free(c);
}

PyDoc_STRVAR(scanner_doc,
"scanner(block_len, weak, strong, strong_len, basis_size, size, seed=0,\n"
"        max_chain=64, false_budget=-1, inplace=False, digest=False) -> scanner\n\n"
"A scan of a source of `size` bytes that scan_next() runs piece by piece,\n"
"with the state (and the lookup tables) kept in between: the ops of all\n"
"pieces together are those of scan(), except that a run or a literal may\n"
"be split where a piece ends.  digest: also hash what is scanned\n"
"(XXH3-128, seed 0), for scanner_digest().");

static PyObject *
py_scanner(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"block_len", "weak", "strong", "strong_len", "basis_size", "size",
                             "seed", "max_chain", "false_budget", "inplace", "digest", NULL};
    PyObject *weakobj, *strongobj, *seedobj = NULL;
    Py_ssize_t block_len, strong_len, max_chain = DEFAULT_MAX_CHAIN;
    long long basis_size, size, false_budget = -1;
    int inplace = 0, digest = 0;
    uint64_t seed;
    Py_buffer wv = {0};
    scan_ctx *c = NULL;
    PyObject *cap = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "nOOnLL|OnLpp:scanner", kwlist,
                                     &block_len, &weakobj, &strongobj, &strong_len,
                                     &basis_size, &size, &seedobj, &max_chain,
                                     &false_budget, &inplace, &digest))
        return NULL;
    if (check_block_len(block_len) < 0 || check_strong_len(strong_len) < 0
        || parse_seed(seedobj, &seed) < 0)
        return NULL;
    if (max_chain < 1 || basis_size < 0 || size < 0) {
        PyErr_SetString(PyExc_ValueError, "max_chain must be >= 1, sizes >= 0");
        return NULL;
    }
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return PyErr_NoMemory();
    if (PyObject_GetBuffer(weakobj, &wv, PyBUF_SIMPLE) < 0)
        goto fail;
    if (PyObject_GetBuffer(strongobj, &c->strong_view, PyBUF_SIMPLE) < 0)
        goto fail;
    if (wv.len % 4 != 0) {
        PyErr_SetString(PyExc_ValueError, "weak table length is not a multiple of 4");
        goto fail;
    }
    size_t count = (size_t)wv.len / 4;
    unsigned long long bs = (unsigned long long)basis_size;
    if (count > MAX_COUNT
        || (size_t)c->strong_view.len != count * (size_t)strong_len
        || bs / (unsigned long long)block_len + (bs % (unsigned long long)block_len != 0) != count) {
        PyErr_SetString(PyExc_ValueError, "tables do not match the block count of the basis");
        goto fail;
    }
    c->n = (size_t)size;
    c->L = (uint32_t)block_len;
    c->slen = (uint32_t)strong_len;
    c->seed = seed;
    c->count = (uint32_t)count;
    c->last_len = count ? (uint32_t)(bs - (unsigned long long)(count - 1) * (unsigned long long)block_len) : 0;
    c->strong = (const uint8_t *)c->strong_view.buf;
    c->max_chain = max_chain > (Py_ssize_t)UINT32_MAX ? UINT32_MAX : (uint32_t)max_chain;
    c->false_budget = false_budget >= 0 ? (uint64_t)false_budget
                                        : ((uint64_t)64 << 20) + 4 * (uint64_t)c->n;
    c->inplace = inplace;
    c->start = 0;
    c->want = UINT32_MAX;
    if (digest) {
        c->hash = XXH3_createState();
        if (c->hash == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        XXH3_128bits_reset(c->hash);
    }
    if (c->count && c->n) {
        int ok;
        Py_BEGIN_ALLOW_THREADS
        ok = build_tables(c, (const uint8_t *)wv.buf) == 0;
        Py_END_ALLOW_THREADS
        if (!ok) {
            PyErr_NoMemory();
            goto fail;
        }
    }
    PyBuffer_Release(&wv);
    cap = PyCapsule_New(c, SCANNER_NAME, scanner_free);
    if (cap == NULL) {
        c->ops = NULL;
        free_tables(c);
        goto fail_tables_freed;
    }
    return cap;
fail:
    free_tables(c);
fail_tables_freed:
    if (wv.obj)
        PyBuffer_Release(&wv);
    if (c->strong_view.obj)
        PyBuffer_Release(&c->strong_view);
    if (c->hash)
        XXH3_freeState(c->hash);
    free(c);
    return NULL;
}

/* One piece, guarded: returns 0, -1 on OOM, 1 if SIGBUS was caught. */
static int
scan_piece_guarded(scan_ctx *c)
{
    sigjmp_buf jb;
    if (sigsetjmp(jb, 1) != 0)
        return 1;
    arm(&jb, c->src, c->n);
    int r = scan_run(c);
    if (r == 0 && c->hash && c->next > c->start)
        XXH3_128bits_update(c->hash, c->src + c->start, c->next - c->start);
    disarm();
    return r;
}

PyDoc_STRVAR(scan_next_doc,
"scan_next(scanner, src, stop=-1) -> (ops: bytes, next: int)\n\n"
"Scan src (the same source, len(src) == size, every call) from where the\n"
"previous call stopped, trying windows that start before stop (-1: all the\n"
"rest).  Returns the ops of the piece (as scan()) and where the next piece\n"
"starts; next == size when the scan is complete.");

static PyObject *
py_scan_next(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"scanner", "src", "stop", NULL};
    PyObject *cap, *srcobj;
    long long stop = -1;
    Py_buffer src = {0};
    PyObject *ret = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|L:scan_next", kwlist, &cap, &srcobj, &stop))
        return NULL;
    scan_ctx *c = PyCapsule_GetPointer(cap, SCANNER_NAME);
    if (c == NULL)
        return NULL;
    if (c->broken) {
        PyErr_SetString(PyExc_ValueError, "scanner is unusable after an error");
        return NULL;
    }
    if (PyObject_GetBuffer(srcobj, &src, PyBUF_SIMPLE) < 0)
        return NULL;
    if ((size_t)src.len != c->n) {
        PyErr_SetString(PyExc_ValueError, "src is not the size the scanner was made for");
        goto done;
    }
    if (ensure_bus_handler() < 0)
        goto done;
    c->src = (const uint8_t *)src.buf;
    c->stop = stop < 0 ? SIZE_MAX : (size_t)stop;
    c->nops = 0;
    int r;
    if (c->start >= c->n && c->n) {
        c->next = c->n;     /* already complete: no ops */
        r = 0;
    }
    else {
        Py_BEGIN_ALLOW_THREADS
        r = scan_piece_guarded(c);
        Py_END_ALLOW_THREADS
    }
    if (r == 1) {
        c->broken = 1;
        raise_source_changed();
    }
    else if (r < 0) {
        c->broken = 1;
        PyErr_NoMemory();
    }
    else {
        PyObject *ops = PyBytes_FromStringAndSize((const char *)c->ops, (Py_ssize_t)(c->nops * sizeof(int64_t)));
        if (ops != NULL) {
            ret = Py_BuildValue("(Nn)", ops, (Py_ssize_t)c->next);
            c->start = c->next;
        }
    }
done:
    c->src = NULL;
    PyBuffer_Release(&src);
    return ret;
}

PyDoc_STRVAR(scanner_digest_doc,
"scanner_digest(scanner) -> bytes\n\n"
"Canonical XXH3-128 of everything scanned so far (a scanner made with digest=True).");

static PyObject *
py_scanner_digest(PyObject *self, PyObject *cap)
{
    scan_ctx *c = PyCapsule_GetPointer(cap, SCANNER_NAME);
    if (c == NULL)
        return NULL;
    if (c->hash == NULL) {
        PyErr_SetString(PyExc_ValueError, "scanner was made without digest=True");
        return NULL;
    }
    XXH128_canonical_t out;
    XXH128_canonicalFromHash(&out, XXH3_128bits_digest(c->hash));
    return PyBytes_FromStringAndSize((const char *)out.digest, 16);
}

PyDoc_STRVAR(fs_type_doc,
"fs_type(fd) -> int\n\n"
"f_type of fstatfs(fd): the kind of filesystem the file is on (a magic number).");

static PyObject *
py_fs_type(PyObject *self, PyObject *arg)
{
    int fd = PyObject_AsFileDescriptor(arg);
    if (fd < 0)
        return NULL;
    struct statfs st;
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = fstatfs(fd, &st);
    Py_END_ALLOW_THREADS
    if (r != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromUnsignedLong((unsigned long)st.f_type);
}

/* ------------------------------------------------------------------ */
/* module                                                              */
/* ------------------------------------------------------------------ */

static PyMethodDef methods[] = {
    {"weak_sums", (PyCFunction)(void (*)(void))py_weak_sums, METH_VARARGS | METH_KEYWORDS, weak_sums_doc},
    {"block_sums", (PyCFunction)(void (*)(void))py_block_sums, METH_VARARGS | METH_KEYWORDS, block_sums_doc},
    {"scan", (PyCFunction)(void (*)(void))py_scan, METH_VARARGS | METH_KEYWORDS, scan_doc},
    {"scanner", (PyCFunction)(void (*)(void))py_scanner, METH_VARARGS | METH_KEYWORDS, scanner_doc},
    {"scan_next", (PyCFunction)(void (*)(void))py_scan_next, METH_VARARGS | METH_KEYWORDS, scan_next_doc},
    {"scanner_digest", (PyCFunction)py_scanner_digest, METH_O, scanner_digest_doc},
    {"fs_type", (PyCFunction)py_fs_type, METH_O, fs_type_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "zcsync.delta._rolling",
    "Rolling checksum, block sums and block-match scan for the rsync algorithm.",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__rolling(void)
{
#ifdef HAVE_X86_SIMD
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    if (getenv("ZCSYNC_NO_AVX2") != NULL)  /* tests compare the two paths */
        have_avx2 = 0;
#endif
    PyObject *errs = PyImport_ImportModule("zcsync.delta.errors");
    if (errs == NULL)
        return NULL;
    SourceChanged = PyObject_GetAttrString(errs, "SourceChanged");
    Py_DECREF(errs);
    if (SourceChanged == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    Py_INCREF(SourceChanged);
    if (PyModule_AddObject(m, "SourceChanged", SourceChanged) < 0
        || PyModule_AddIntConstant(m, "MAX_BLOCK_LEN", MAX_BLOCK_LEN) < 0
        || PyModule_AddIntConstant(m, "MAX_STRONG_LEN", MAX_STRONG_LEN) < 0
        || PyModule_AddIntConstant(m, "OP_LITERAL", OP_LITERAL) < 0
        || PyModule_AddIntConstant(m, "OP_MATCH", OP_MATCH) < 0
        || PyModule_AddIntConstant(m, "XXHASH_VERSION_NUMBER", XXH_VERSION_NUMBER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
