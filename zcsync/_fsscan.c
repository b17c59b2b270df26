/*
 * zcsync._fsscan: list a directory and lstat its entries in one call, with the
 * GIL released around every syscall.
 *
 *   list_dir(dir_fd, follow_symlinks=False) -> list of
 *       (name, mode, size, mtime_ns, uid, gid, ino, dev, nlink, rdev)
 *   stat_names(dir_fd, names) -> list of
 *       (mode, size, mtime_ns, uid, gid, ino, dev, nlink, rdev) or None
 *   digest_names(dir_fd, names, sizes) -> list of digest or -errno / -1
 *   read_file(path, size, follow) -> (data, digest), -errno or None
 *
 * The directory is read through a fresh open file description,
 * openat(dir_fd, "."), so the caller's descriptor keeps its offset and two
 * threads may list through the same dir_fd.  Where that open is refused with
 * EACCES (a directory with read but no search permission) the listing goes
 * through a dup of dir_fd instead, from offset 0, and the caller's offset is
 * put back afterwards; then every entry reports -EACCES, as rsync does.
 *
 * Each name is stat-ed with fstatat(dir_fd, name), AT_SYMLINK_NOFOLLOW unless
 * follow_symlinks.  A failed stat is not an exception; the tuple carries it
 * in the mode field, with every other field 0:
 *     mode == 0       ENOENT: the name vanished between readdir and stat
 *                     (stat_names returns None instead of a tuple)
 *     mode == -errno  any other error; with follow_symlinks a dangling
 *                     symlink (lstat works, stat says ENOENT) is -ENOENT
 * Field conversions are those of os.stat_result, so that the pure-Python
 * fallback in zcsync/fsscan.py gives equal tuples.
 *
 * Everything happens in two passes: with the GIL released, read the names
 * into one buffer and stat them into a C array; then, with the GIL held,
 * build the Python objects.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include "delta/xxhash.h"

#ifdef __APPLE__
#  define ST_MTIM st_mtimespec
#else
#  define ST_MTIM st_mtim
#endif

#define NS_PER_SEC 1000000000LL

typedef struct {
    int mode;                   /* st_mode, 0 for ENOENT, -errno on error */
    long nsec;
    long long sec;
    long long size;
    unsigned long long ino, dev, rdev, nlink;
    uid_t uid;
    gid_t gid;
} rec_t;

typedef struct {
    rec_t st;
    size_t name_off;            /* into the names buffer, NUL-terminated */
    size_t name_len;
} ent_t;

static void
rec_fill(rec_t *r, const struct stat *st)
{
    r->mode = (int)st->st_mode;
    r->size = (long long)st->st_size;
    r->sec = (long long)st->ST_MTIM.tv_sec;
    r->nsec = (long)st->ST_MTIM.tv_nsec;
    r->uid = st->st_uid;
    r->gid = st->st_gid;
    r->ino = (unsigned long long)st->st_ino;
    r->dev = (unsigned long long)st->st_dev;
    r->nlink = (unsigned long long)st->st_nlink;
    r->rdev = (unsigned long long)st->st_rdev;
}

/* fstatat one name into r; never fails (errors go into r->mode). */
static void
stat_one(int dir_fd, const char *name, int follow, rec_t *r)
{
    struct stat st;

    if (fstatat(dir_fd, name, &st, follow ? 0 : AT_SYMLINK_NOFOLLOW) == 0) {
        rec_fill(r, &st);
        return;
    }
    int err = errno;
    memset(r, 0, sizeof(*r));
    if (err == ENOENT) {
        /* With follow, ENOENT may mean a dangling link rather than a vanished name. */
        if (follow && fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
            r->mode = -ENOENT;
        return;
    }
    r->mode = -err;
}

/* ---- Python objects, as os.stat_result makes them ---------------------- */

static PyObject *
long_from_id(unsigned long long id, unsigned long long all_ones)
{
    /* CPython maps (uid_t)-1, (gid_t)-1 and NODEV to -1. */
    if (id == all_ones)
        return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLongLong(id);
}

static PyObject *
ns_from_timespec(long long sec, long nsec)
{
    long long ns;

    if (!__builtin_mul_overflow(sec, NS_PER_SEC, &ns) &&
        !__builtin_add_overflow(ns, (long long)nsec, &ns))
        return PyLong_FromLongLong(ns);

    /* Beyond year 2262 (or before 1677): exact arithmetic in Python ints. */
    PyObject *s = NULL, *b = NULL, *m = NULL, *n = NULL, *res = NULL;
    if ((s = PyLong_FromLongLong(sec)) && (b = PyLong_FromLongLong(NS_PER_SEC)) &&
        (m = PyNumber_Multiply(s, b)) && (n = PyLong_FromLong(nsec)))
        res = PyNumber_Add(m, n);
    Py_XDECREF(s);
    Py_XDECREF(b);
    Py_XDECREF(m);
    Py_XDECREF(n);
    return res;
}

/* Set the 9 stat fields of r into tuple t from position at on; -1 on error. */
static int
set_fields(PyObject *t, Py_ssize_t at, const rec_t *r)
{
    PyObject *v[9];

    v[0] = PyLong_FromLong(r->mode);
    v[1] = PyLong_FromLongLong(r->size);
    v[2] = ns_from_timespec(r->sec, r->nsec);
    v[3] = long_from_id(r->uid, (unsigned long long)(uid_t)-1);
    v[4] = long_from_id(r->gid, (unsigned long long)(gid_t)-1);
    v[5] = PyLong_FromUnsignedLongLong(r->ino);
    v[6] = long_from_id(r->dev, (unsigned long long)(dev_t)-1);
    v[7] = PyLong_FromUnsignedLongLong(r->nlink);
    v[8] = long_from_id(r->rdev, (unsigned long long)(dev_t)-1);
    int ok = 1;
    for (int i = 0; i < 9; i++) {
        if (v[i] == NULL)
            ok = 0;
        PyTuple_SET_ITEM(t, at + i, v[i]);  /* NULL slots are fine for Py_DECREF(t) */
    }
    return ok ? 0 : -1;
}

/* ---- list_dir ----------------------------------------------------------- */

typedef struct {
    ent_t *ents;
    size_t n, cap;
    char *names;
    size_t names_len, names_cap;
} listing_t;

static void
listing_free(listing_t *l)
{
    free(l->ents);
    free(l->names);
    memset(l, 0, sizeof(*l));
}

static int
listing_add(listing_t *l, const char *name)
{
    size_t len = strlen(name);

    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        ent_t *e = realloc(l->ents, cap * sizeof(*e));
        if (e == NULL)
            return ENOMEM;
        l->ents = e;
        l->cap = cap;
    }
    if (l->names_cap - l->names_len < len + 1) {
        size_t cap = l->names_cap ? 2 * l->names_cap : 16384;
        while (cap - l->names_len < len + 1)
            cap *= 2;
        char *p = realloc(l->names, cap);
        if (p == NULL)
            return ENOMEM;
        l->names = p;
        l->names_cap = cap;
    }
    memcpy(l->names + l->names_len, name, len + 1);
    l->ents[l->n].name_off = l->names_len;
    l->ents[l->n].name_len = len;
    l->n++;
    l->names_len += len + 1;
    return 0;
}

/* Read all names except . and .. from dir_fd; 0 or an errno. Runs without the GIL. */
static int
read_names(int dir_fd, listing_t *l)
{
    off_t saved = -1;
    int via_dup = 0;
    int fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (fd < 0 && errno == EACCES) {
        /* No search permission: list through the caller's own description. */
        via_dup = 1;
        saved = lseek(dir_fd, 0, SEEK_CUR);
        fd = fcntl(dir_fd, F_DUPFD_CLOEXEC, 0);
    }
    if (fd < 0)
        return errno;
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        int err = errno;
        close(fd);
        return err;
    }
    if (via_dup)
        rewinddir(d);

    int err = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL) {
            err = errno;
            break;
        }
        const char *nm = de->d_name;
        if (nm[0] == '.' && (nm[1] == '\0' || (nm[1] == '.' && nm[2] == '\0')))
            continue;
        if ((err = listing_add(l, nm)) != 0)
            break;
    }
    closedir(d);
    if (via_dup && saved >= 0)
        lseek(dir_fd, saved, SEEK_SET);
    return err;
}

PyDoc_STRVAR(list_dir_doc,
"list_dir(dir_fd, follow_symlinks=False) -> list[tuple]\n\n"
"Read the directory open as dir_fd (without moving its offset) and stat every\n"
"entry but . and .. relative to it. Returns, in directory order,\n"
"(name: bytes, mode, size, mtime_ns, uid, gid, ino, dev, nlink, rdev) tuples;\n"
"mode is 0 for a name that vanished before its stat and -errno for any other\n"
"stat error (all other fields 0). Raises OSError if the directory cannot be read.");

static PyObject *
py_list_dir(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"dir_fd", "follow_symlinks", NULL};
    int dir_fd, follow = 0;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "i|p:list_dir", kwlist, &dir_fd, &follow))
        return NULL;

    listing_t l = {0};
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = read_names(dir_fd, &l);
    if (err == 0)
        for (size_t i = 0; i < l.n; i++)
            stat_one(dir_fd, l.names + l.ents[i].name_off, follow, &l.ents[i].st);
    Py_END_ALLOW_THREADS

    if (err != 0) {
        listing_free(&l);
        errno = err;
        return err == ENOMEM ? PyErr_NoMemory() : PyErr_SetFromErrno(PyExc_OSError);
    }

    PyObject *list = PyList_New((Py_ssize_t)l.n);
    if (list == NULL)
        goto fail;
    for (size_t i = 0; i < l.n; i++) {
        const ent_t *e = &l.ents[i];
        PyObject *t = PyTuple_New(10);
        if (t == NULL)
            goto fail;
        PyList_SET_ITEM(list, (Py_ssize_t)i, t);
        PyObject *name = PyBytes_FromStringAndSize(l.names + e->name_off, (Py_ssize_t)e->name_len);
        PyTuple_SET_ITEM(t, 0, name);
        if (name == NULL || set_fields(t, 1, &e->st) < 0)
            goto fail;
    }
    listing_free(&l);
    return list;

fail:
    Py_XDECREF(list);
    listing_free(&l);
    return NULL;
}

/* ---- stat_names --------------------------------------------------------- */

PyDoc_STRVAR(stat_names_doc,
"stat_names(dir_fd, names) -> list[tuple | None]\n\n"
"lstat each name (bytes; AT_SYMLINK_NOFOLLOW applies to the last component)\n"
"relative to dir_fd. Returns (mode, size, mtime_ns, uid, gid, ino, dev, nlink,\n"
"rdev) per name, None where it does not exist, or a tuple (-errno, 0, ...) for\n"
"any other error.");

static PyObject *
py_stat_names(PyObject *self, PyObject *args)
{
    int dir_fd;
    PyObject *seq;

    if (!PyArg_ParseTuple(args, "iO:stat_names", &dir_fd, &seq))
        return NULL;
    /* A private tuple: nothing can free the names while the GIL is released. */
    PyObject *names = PySequence_Tuple(seq);
    if (names == NULL)
        return NULL;

    Py_ssize_t n = PyTuple_GET_SIZE(names);
    const char **ptrs = PyMem_Malloc((n ? n : 1) * sizeof(*ptrs));
    rec_t *recs = PyMem_Malloc((n ? n : 1) * sizeof(*recs));
    PyObject *list = NULL;
    if (ptrs == NULL || recs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PyTuple_GET_ITEM(names, i);
        if (!PyBytes_Check(o)) {
            PyErr_Format(PyExc_TypeError, "stat_names: names must be bytes, not %.200s",
                         Py_TYPE(o)->tp_name);
            goto done;
        }
        ptrs[i] = PyBytes_AS_STRING(o);
        if (strlen(ptrs[i]) != (size_t)PyBytes_GET_SIZE(o)) {
            PyErr_SetString(PyExc_ValueError, "stat: embedded null character in path");
            goto done;
        }
    }

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        stat_one(dir_fd, ptrs[i], 0, &recs[i]);
    Py_END_ALLOW_THREADS

    if ((list = PyList_New(n)) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (recs[i].mode == 0) {
            Py_INCREF(Py_None);
            PyList_SET_ITEM(list, i, Py_None);
            continue;
        }
        PyObject *t = PyTuple_New(9);
        if (t == NULL) {
            Py_CLEAR(list);
            goto done;
        }
        PyList_SET_ITEM(list, i, t);
        if (set_fields(t, 0, &recs[i]) < 0) {
            Py_CLEAR(list);
            goto done;
        }
    }

done:
    PyMem_Free(ptrs);
    PyMem_Free(recs);
    Py_DECREF(names);
    return list;
}

/* ---- digest_names ------------------------------------------------------- */

PyDoc_STRVAR(digest_names_doc,
"digest_names(dir_fd, names, sizes, noatime=False) -> list[bytes | int]\n\n"
"xxh3-128 (canonical, as xxhash.xxh3_128().digest()) of each regular file\n"
"names[i] below dir_fd, opened with O_NOFOLLOW. Returns the 16-byte digest, or\n"
"-errno when it cannot be read, or -1 when it is not a regular file of exactly\n"
"sizes[i] bytes (it changed). The GIL is released for the whole batch. noatime:\n"
"O_NOATIME as well, where the kernel allows it (--open-noatime).");

#define DIGEST_BUF (256 * 1024)

/* openat for reading; with noatime (--open-noatime) with O_NOATIME as well, unless the
   kernel refuses that (EPERM: we neither own the file nor have CAP_FOWNER). */
static int
open_read(int dir_fd, const char *path, int flags, int noatime)
{
#ifdef O_NOATIME
    if (noatime) {
        int fd = openat(dir_fd, path, flags | O_NOATIME);
        if (fd >= 0 || errno != EPERM)
            return fd;
    }
#endif
    return openat(dir_fd, path, flags);
}

static int
digest_one(int dir_fd, const char *name, long long size, unsigned char *buf,
           XXH3_state_t *state, XXH128_canonical_t *out, int noatime)
{
    int fd = open_read(dir_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, noatime);
    if (fd < 0)
        return -errno;
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        goto out;
    }
    if (!S_ISREG(st.st_mode) || (long long)st.st_size != size) {
        rc = -1;
        goto out;
    }
    XXH3_128bits_reset(state);
    long long done = 0;
    while (done < size) {
        size_t want = (size - done) < DIGEST_BUF ? (size_t)(size - done) : DIGEST_BUF;
        ssize_t n = pread(fd, buf, want, (off_t)done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            goto out;
        }
        if (n == 0) {
            rc = -1;                /* shrank under us */
            goto out;
        }
        XXH3_128bits_update(state, buf, (size_t)n);
        done += n;
    }
    XXH128_canonicalFromHash(out, XXH3_128bits_digest(state));
out:
    close(fd);
    return rc;
}

static PyObject *
py_digest_names(PyObject *self, PyObject *args)
{
    int dir_fd;
    PyObject *seq, *sizes_seq;
    int noatime = 0;

    if (!PyArg_ParseTuple(args, "iOO|p:digest_names", &dir_fd, &seq, &sizes_seq, &noatime))
        return NULL;
    PyObject *names = PySequence_Tuple(seq);
    if (names == NULL)
        return NULL;
    PyObject *sizes = PySequence_Tuple(sizes_seq);
    if (sizes == NULL) {
        Py_DECREF(names);
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    PyObject *list = NULL;
    const char **ptrs = PyMem_Malloc((n ? n : 1) * sizeof(*ptrs));
    long long *want = PyMem_Malloc((n ? n : 1) * sizeof(*want));
    int *rcs = PyMem_Malloc((n ? n : 1) * sizeof(*rcs));
    XXH128_canonical_t *digests = PyMem_Malloc((n ? n : 1) * sizeof(*digests));
    unsigned char *buf = PyMem_Malloc(DIGEST_BUF);
    XXH3_state_t *state = XXH3_createState();
    if (!ptrs || !want || !rcs || !digests || !buf || !state) {
        PyErr_NoMemory();
        goto done;
    }
    if (PyTuple_GET_SIZE(sizes) != n) {
        PyErr_SetString(PyExc_ValueError, "digest_names: names and sizes differ in length");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PyTuple_GET_ITEM(names, i);
        if (!PyBytes_Check(o)) {
            PyErr_SetString(PyExc_TypeError, "digest_names: names must be bytes");
            goto done;
        }
        ptrs[i] = PyBytes_AS_STRING(o);
        if (strlen(ptrs[i]) != (size_t)PyBytes_GET_SIZE(o)) {
            PyErr_SetString(PyExc_ValueError, "embedded null character in path");
            goto done;
        }
        want[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(sizes, i));
        if (want[i] == -1 && PyErr_Occurred())
            goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        rcs[i] = digest_one(dir_fd, ptrs[i], want[i], buf, state, &digests[i], noatime);
    Py_END_ALLOW_THREADS
    if ((list = PyList_New(n)) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = rcs[i] == 0
            ? PyBytes_FromStringAndSize((const char *)digests[i].digest, sizeof(digests[i].digest))
            : PyLong_FromLong(rcs[i]);
        if (item == NULL) {
            Py_CLEAR(list);
            goto done;
        }
        PyList_SET_ITEM(list, i, item);
    }
done:
    if (state)
        XXH3_freeState(state);
    PyMem_Free(buf);
    PyMem_Free(digests);
    PyMem_Free(rcs);
    PyMem_Free(want);
    PyMem_Free(ptrs);
    Py_DECREF(sizes);
    Py_DECREF(names);
    return list;
}

PyDoc_STRVAR(read_file_doc,
"read_file(path, size, follow, noatime=False) -> (data, digest) | int | None\n\n"
"The contents of the regular file at path and their xxh3-128 (canonical), in one\n"
"call with the GIL released: open (O_NOFOLLOW unless follow), fstat, pread, close.\n"
"Returns -errno when it cannot be opened or read, None when it is not a regular\n"
"file of exactly size bytes (it changed). A file that shrinks between the fstat and the\n"
"read comes back short, with the digest of what was read. noatime as in digest_names.");

static PyObject *
py_read_file(PyObject *self, PyObject *args)
{
    const char *path;
    Py_ssize_t path_len, size;
    int follow, noatime = 0;
    if (!PyArg_ParseTuple(args, "y#np|p:read_file", &path, &path_len, &size, &follow, &noatime))
        return NULL;
    if ((size_t)path_len != strlen(path)) {
        PyErr_SetString(PyExc_ValueError, "embedded null character in path");
        return NULL;
    }
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "read_file: negative size");
        return NULL;
    }
    PyObject *data = PyBytes_FromStringAndSize(NULL, size);
    if (data == NULL)
        return NULL;
    char *buf = PyBytes_AS_STRING(data);
    XXH128_canonical_t digest;
    Py_ssize_t done = 0;
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS
    /* O_NONBLOCK: a FIFO swapped in since the scan must not wait for a writer. */
    int fd = open_read(AT_FDCWD, path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | (follow ? 0 : O_NOFOLLOW),
                       noatime);
    struct stat st;
    if (fd < 0)
        rc = -errno;
    else if (fstat(fd, &st) < 0)
        rc = -errno;
    else if (!S_ISREG(st.st_mode) || (long long)st.st_size != (long long)size)
        rc = 1;  /* changed */
    while (rc == 0 && done < size) {
        ssize_t n = pread(fd, buf + done, (size_t)(size - done), (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            rc = -errno;
        else if (n == 0)
            break;  /* shrank under us: sent short, its digest cannot pass the size check */
        else
            done += n;
    }
    if (fd >= 0)
        close(fd);
    if (rc == 0)
        XXH128_canonicalFromHash(&digest, XXH3_128bits(buf, (size_t)done));
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(data);
        if (rc == 1)
            Py_RETURN_NONE;
        return PyLong_FromLong(rc);
    }
    if (done < size && _PyBytes_Resize(&data, done) < 0)
        return NULL;
    return Py_BuildValue("(Ny#)", data, (const char *)digest.digest, (Py_ssize_t)sizeof digest.digest);
}

static PyMethodDef methods[] = {
    {"digest_names", (PyCFunction)py_digest_names, METH_VARARGS, digest_names_doc},
    {"list_dir", (PyCFunction)(void (*)(void))py_list_dir, METH_VARARGS | METH_KEYWORDS, list_dir_doc},
    {"stat_names", (PyCFunction)py_stat_names, METH_VARARGS, stat_names_doc},
    {"read_file", (PyCFunction)py_read_file, METH_VARARGS, read_file_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "zcsync._fsscan",
    "Directory listing with bulk lstat, GIL released (see zcsync.fsscan).",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__fsscan(void)
{
    return PyModule_Create(&moduledef);
}
