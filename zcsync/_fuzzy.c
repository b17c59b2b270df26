/* zcsync._fuzzy: the name pass of -y's basis choice in C (zcsync/fuzzy.py has the rule
 * and the same code in Python, which this must match to the bit).
 *
 *   scan(names, suffixes, name, suffix, lowest) -> (index, lowest)
 *
 * For each candidate i in order: its suffix distance to `suffix`, times ten, plus its
 * name distance to `name` (rsync's fuzzy_distance, an edit distance in units of 1 << 16
 * plus the byte values involved); the last candidate whose total is <= the running
 * lowest wins. index is -1 if none did; lowest is the new lowest.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

#define UNIT ((uint32_t)1 << 16)
#define NO_MATCH (0xFFFFu * UNIT + 1)
#define SUFFIX_LIMIT 0xFFFF0000u

/* rsync's fuzzy_distance(s1, s2, limit); row holds len2 cells. NO_MATCH once the distance
 * must exceed limit: the length difference says so, or a whole row of the table is above
 * it (no later cell can be lower than a row's lowest and its left edge). */
static uint32_t distance(const unsigned char *s1, Py_ssize_t len1, const unsigned char *s2, Py_ssize_t len2,
                         uint32_t limit, uint32_t *row)
{
    Py_ssize_t diff = len1 > len2 ? len1 - len2 : len2 - len1;
    if ((uint64_t)diff * UNIT > limit)
        return NO_MATCH;
    if (!len1 || !len2) {
        int32_t cost = 0;
        if (!len1) {
            s1 = s2;
            len1 = len2;
        }
        for (Py_ssize_t i = 0; i < len1; i++)
            cost += (signed char)s1[i];  /* rsync sums plain chars here */
        return (uint32_t)((int32_t)len1 * (int32_t)UNIT + cost);
    }
    for (Py_ssize_t i2 = 0; i2 < len2; i2++)
        row[i2] = (uint32_t)(i2 + 1) * UNIT;
    for (Py_ssize_t i1 = 0; i1 < len1; i1++) {
        uint32_t c1 = s1[i1];
        uint32_t diag = (uint32_t)i1 * UNIT, above = diag + UNIT, floor = diag;
        for (Py_ssize_t i2 = 0; i2 < len2; i2++) {
            uint32_t c2 = s2[i2];
            uint32_t left = row[i2];
            uint32_t cost = c1 == c2 ? 0 : UNIT + (c1 > c2 ? c1 - c2 : c2 - c1);
            uint32_t diag_inc = diag + cost;
            uint32_t inc = left < above ? left + UNIT + c1 : above + UNIT + c2;
            above = inc < diag_inc ? inc : diag_inc;
            row[i2] = above;
            diag = left;
            if (above < floor)
                floor = above;
        }
        if (floor > limit)
            return NO_MATCH;
    }
    return row[len2 - 1];
}

static PyObject *scan(PyObject *self, PyObject *args)
{
    PyObject *names, *suffixes;
    const char *name, *suffix;
    Py_ssize_t name_len, suffix_len;
    unsigned long lowest_arg;
    if (!PyArg_ParseTuple(args, "OOy#y#k", &names, &suffixes, &name, &name_len, &suffix, &suffix_len, &lowest_arg))
        return NULL;
    if (lowest_arg > 0xFFFFFFFFul) {
        PyErr_SetString(PyExc_ValueError, "lowest must fit in 32 bits");
        return NULL;
    }
    PyObject *nseq = PySequence_Fast(names, "names must be a sequence");
    if (!nseq)
        return NULL;
    PyObject *sseq = PySequence_Fast(suffixes, "suffixes must be a sequence");
    if (!sseq) {
        Py_DECREF(nseq);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(nseq);
    PyObject *result = NULL;
    uint32_t *row = NULL;
    if (PySequence_Fast_GET_SIZE(sseq) != n) {
        PyErr_SetString(PyExc_ValueError, "names and suffixes differ in length");
        goto done;
    }
    row = PyMem_Malloc(sizeof(uint32_t) * ((size_t)(name_len > suffix_len ? name_len : suffix_len) + 1));
    if (!row) {
        PyErr_NoMemory();
        goto done;
    }
    uint32_t lowest = (uint32_t)lowest_arg;
    Py_ssize_t best = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *nm = PySequence_Fast_GET_ITEM(nseq, i), *sf = PySequence_Fast_GET_ITEM(sseq, i);
        if (!PyBytes_Check(nm) || !PyBytes_Check(sf)) {
            PyErr_SetString(PyExc_TypeError, "names and suffixes must be bytes");
            goto done;
        }
        uint64_t extra = (uint64_t)distance((const unsigned char *)PyBytes_AS_STRING(sf), PyBytes_GET_SIZE(sf),
                                            (const unsigned char *)suffix, suffix_len, SUFFIX_LIMIT, row) * 10;
        if (extra > lowest)
            continue;
        uint32_t dist = distance((const unsigned char *)PyBytes_AS_STRING(nm), PyBytes_GET_SIZE(nm),
                                 (const unsigned char *)name, name_len, lowest - (uint32_t)extra, row);
        if (dist >= SUFFIX_LIMIT)
            continue;
        uint64_t total = dist + extra;
        if (total <= lowest) {
            lowest = (uint32_t)total;
            best = i;
        }
    }
    result = Py_BuildValue("(nk)", best, (unsigned long)lowest);
done:
    PyMem_Free(row);
    Py_DECREF(nseq);
    Py_DECREF(sseq);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "scan(names, suffixes, name, suffix, lowest) -> (index, lowest)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "zcsync._fuzzy", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fuzzy(void)
{
    return PyModule_Create(&module);
}
