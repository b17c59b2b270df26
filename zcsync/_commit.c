/*
 * zcsync._commit: the commit protocol for a file whose bytes are already in memory
 * (a small file received in one frame), as one call with the GIL released:
 *
 *   commit_bytes(dir_fd, base, data, perms, uid, gid, times, mtime_ns, fsync) -> None
 *
 * creates ".<base>.<random>.zcs" beside `base` in dir_fd (O_CREAT|O_EXCL|
 * O_NOFOLLOW, mode 0600), writes data, sets owner (uid/gid -1: leave), permissions
 * and, if times, atime and mtime to mtime_ns on the descriptor, fsyncs it if asked, closes
 * it and renames it over `base`. On any failure the temp file is removed and
 * OSError is raised with the failing step's errno and `base` as the filename;
 * nothing is left under either name. The same steps as writer.Writer._write_in
 * takes one system call at a time, so that a receiver thread holding the GIL
 * for Python work is not blocked by this one's ~8 system calls per file.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define NAME_KEEP 200   /* bytes of base kept in the temp name (NAME_MAX is 255) */
#define TRIES 16

static uint64_t rng_state;
static pid_t rng_pid;

/* Temp names need to be unlikely, not secret (they are created O_EXCL): xorshift64*,
 * seeded from getrandom once per process (a forked daemon session reseeds). */
static uint32_t
next_random(void)
{
    pid_t pid = getpid();
    if (rng_pid != pid || rng_state == 0) {
        uint64_t seed = 0;
        if (getrandom(&seed, sizeof seed, 0) != sizeof seed)
            seed = (uint64_t)pid * 0x9E3779B97F4A7C15ULL ^ (uint64_t)(uintptr_t)&seed;
        rng_state = seed | 1;
        rng_pid = pid;
    }
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1DULL) >> 32);
}

static int
commit(int dir_fd, const char *base, Py_ssize_t base_len, const char *data, Py_ssize_t size,
       int perms, long long uid, long long gid, int times, long long mtime_ns, int do_fsync)
{
    char tmp[NAME_KEEP + 32];
    int fd = -1, err = 0;
    Py_ssize_t keep = base_len < NAME_KEEP ? base_len : NAME_KEEP;

    for (int i = 0; i < TRIES; i++) {
        tmp[0] = '.';
        memcpy(tmp + 1, base, keep);
        snprintf(tmp + 1 + keep, sizeof tmp - 1 - keep, ".%08x.zcs", next_random());
        fd = openat(dir_fd, tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0 || errno != EEXIST)
            break;
    }
    if (fd < 0)
        return errno;
    Py_ssize_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(fd, data + done, (size_t)(size - done), done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            err = errno;
            goto fail;
        }
        done += n;
    }
    if ((uid != -1 || gid != -1) && fchown(fd, (uid_t)uid, (gid_t)gid) < 0) {
        err = errno;
        goto fail;
    }
    if (fchmod(fd, (mode_t)perms) < 0) {
        err = errno;
        goto fail;
    }
    if (times) {
        struct timespec ts[2];
        long long sec = mtime_ns / 1000000000LL, nsec = mtime_ns % 1000000000LL;
        if (nsec < 0) {  /* before 1970: floor division, as Python's os.utime */
            nsec += 1000000000LL;
            sec -= 1;
        }
        ts[0].tv_sec = ts[1].tv_sec = (time_t)sec;
        ts[0].tv_nsec = ts[1].tv_nsec = (long)nsec;
        if (futimens(fd, ts) < 0) {
            err = errno;
            goto fail;
        }
    }
    if (do_fsync && fsync(fd) < 0) {
        err = errno;
        goto fail;
    }
    if (close(fd) < 0) {
        fd = -1;
        err = errno;
        goto fail;
    }
    fd = -1;
    if (renameat(dir_fd, tmp, dir_fd, base) < 0) {
        err = errno;
        goto fail;
    }
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    unlinkat(dir_fd, tmp, 0);
    return err;
}

static PyObject *
py_commit_bytes(PyObject *self, PyObject *args)
{
    int dir_fd, perms, times, do_fsync;
    long long uid, gid, mtime_ns;
    Py_buffer base, data;

    if (!PyArg_ParseTuple(args, "iy*y*iLLpLp:commit_bytes", &dir_fd, &base, &data, &perms, &uid, &gid,
                          &times, &mtime_ns, &do_fsync))
        return NULL;
    int err = 0;
    if (base.len == 0 || base.len > 255 || memchr(base.buf, '/', (size_t)base.len)
        || memchr(base.buf, '\0', (size_t)base.len)) {
        err = -1;
    } else {
        char name[256];
        memcpy(name, base.buf, (size_t)base.len);
        name[base.len] = '\0';
        Py_BEGIN_ALLOW_THREADS
        err = commit(dir_fd, name, base.len, data.buf, data.len, perms, uid, gid, times, mtime_ns, do_fsync);
        Py_END_ALLOW_THREADS
    }
    PyObject *filename = err ? PyBytes_FromStringAndSize(base.buf, base.len) : NULL;
    PyBuffer_Release(&base);
    PyBuffer_Release(&data);
    if (err == -1) {
        Py_XDECREF(filename);
        PyErr_SetString(PyExc_ValueError, "base must be one path component of 1..255 bytes");
        return NULL;
    }
    if (err) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, filename);
        Py_XDECREF(filename);
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(commit_bytes_doc,
"commit_bytes(dir_fd, base, data, perms, uid, gid, times, mtime_ns, fsync)\n--\n\n"
"Write data to a fresh temp file beside base, set its owner (-1: leave), permissions\n"
"and (if times) atime and mtime, fsync if asked, and rename it over base; the GIL is\n"
"released throughout. On failure nothing is left behind and OSError names base.");

static PyMethodDef methods[] = {
    {"commit_bytes", (PyCFunction)py_commit_bytes, METH_VARARGS, commit_bytes_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "zcsync._commit", "One-call commit of an in-memory file.", -1, methods,
};

PyMODINIT_FUNC
PyInit__commit(void)
{
    return PyModule_Create(&moduledef);
}
