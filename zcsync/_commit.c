/*
 * zcsync._commit: the commit protocol for a file whose bytes are already in memory
 * (a small file received in one frame), as one call with the GIL released:
 *
 *   commit_bytes(dir_fd, base, data, perms, uid, gid, times, mtime_ns, fsync, umask=-1) -> None
 *
 * writes data into a new file beside `base` in dir_fd, sets owner (uid/gid -1: leave),
 * permissions and, if times, atime and mtime to mtime_ns on the descriptor, fsyncs it if
 * asked, and only then gives it the name `base`. The file is unnamed while written
 * (O_TMPFILE), then linked in as `base` (linkat AT_EMPTY_PATH): a crash leaves nothing,
 * and a new file costs no rename (tmpfs: 14.7 -> 13.1 us per file for these calls). Where
 * `base` exists, the complete file is linked as ".<base>.<random>.zcs" and renamed over
 * it. Where the filesystem has no O_TMPFILE or linking is refused (kernels before 6.10
 * without CAP_DAC_READ_SEARCH), the temp file is named from the start (O_CREAT|O_EXCL|
 * O_NOFOLLOW, mode 0600) and renamed over `base`, as writer.Writer._write_in does. On any
 * failure the temp file is removed and OSError is raised with the failing step's errno
 * and `base` as the filename; nothing is left under either name. What
 * writer.Writer._write_in does one system call at a time happens here in one call, so
 * that a receiver thread holding the GIL for Python work is not blocked by this one's
 * ~7 system calls per file.
 *
 *   Committer(max_jobs, max_bytes): the same commit on a thread of its own that never
 *   takes the GIL. submit(token, <commit_bytes' arguments>) queues a file and returns
 *   at once (it waits, GIL released, only while max_jobs files or max_bytes bytes are
 *   queued); collect(wait) returns [(token, errno)] for the files done since the last
 *   call (errno 0: committed), after waiting for every queued one if wait is true. The
 *   caller keeps dir_fd open until its token comes back. A receiver thread then spends
 *   one call per small file instead of its system calls.
 *
 * Two system calls are left out where they would change nothing: given the process
 * umask (>= 0) and perms without set-id or sticky bits that it keeps, the temp file is
 * created with perms (the owner change that follows cannot clear bits it does not have)
 * and not chmod-ed; and the owner is changed only if an fstat shows it differs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NAME_KEEP 200   /* bytes of base kept in the temp name (NAME_MAX is 255) */
/* The Committer's thread is woken once this many files are queued (a wake-up per file
 * costs the submitting thread a futex call), or after IDLE_NS without one. */
#define WAKE_AT 16
#define IDLE_NS 20000000L
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

/* ".<first NAME_KEEP bytes of base>.<8 hex digits>.zcs" into tmp. */
static void
name_temp(const char *base, Py_ssize_t keep, char *tmp, size_t tmp_size)
{
    tmp[0] = '.';
    memcpy(tmp + 1, base, (size_t)keep);
    snprintf(tmp + 1 + keep, tmp_size - 1 - (size_t)keep, ".%08x.zcs", next_random());
}

/* 1 while linking an O_TMPFILE into place (linkat AT_EMPTY_PATH) may work here, 0 once it
 * was refused: kernels before 6.10 allow it only with CAP_DAC_READ_SEARCH, and some
 * filesystems make no hard links. Shared by every thread; a stale 1 only costs a retry. */
static int flink_ok = 1;

/* Create ".<base>.<random>.zcs" in dir_fd (O_EXCL, never following a symlink); -1 and errno. */
static int
open_named(int dir_fd, const char *base, Py_ssize_t keep, char *tmp, size_t tmp_size, int mode)
{
    int fd = -1;
    for (int i = 0; i < TRIES; i++) {
        name_temp(base, keep, tmp, tmp_size);
        fd = openat(dir_fd, tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
        if (fd >= 0 || errno != EEXIST)
            break;
    }
    return fd;
}

/* Give the unnamed file fd a temp name beside base (base exists: the caller renames over it). */
static int
link_named(int fd, int dir_fd, const char *base, Py_ssize_t keep, char *tmp, size_t tmp_size)
{
    int rc = -1;
    for (int i = 0; i < TRIES; i++) {
        name_temp(base, keep, tmp, tmp_size);
        rc = linkat(fd, "", dir_fd, tmp, AT_EMPTY_PATH);
        if (rc == 0 || errno != EEXIST)
            break;
    }
    return rc;
}

static int
commit(int dir_fd, const char *base, Py_ssize_t base_len, const char *data, Py_ssize_t size,
       int perms, long long uid, long long gid, int times, long long mtime_ns, int do_fsync, int umask)
{
    char tmp[NAME_KEEP + 32];
    int fd = -1, err = 0;
    Py_ssize_t keep = base_len < NAME_KEEP ? base_len : NAME_KEEP;
    int exact = umask >= 0 && !(perms & (07000 | umask));  /* created with perms, no chmod */
    int mode = exact ? perms : 0600;
    /* An unnamed file (O_TMPFILE) gets its name only once complete, so a crash leaves
     * nothing behind and a new file needs no rename. Any refusal: a named temp file. */
    int anon = 0;
    if (__atomic_load_n(&flink_ok, __ATOMIC_RELAXED)) {
        fd = openat(dir_fd, ".", O_RDWR | O_TMPFILE | O_CLOEXEC, mode);
        anon = fd >= 0;
    }
    if (!anon && (fd = open_named(dir_fd, base, keep, tmp, sizeof tmp, mode)) < 0)
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
    if (uid != -1 || gid != -1) {
        struct stat st;
        int same = fstat(fd, &st) == 0 && (uid == -1 || st.st_uid == (uid_t)uid)
                   && (gid == -1 || st.st_gid == (gid_t)gid);
        if (!same && fchown(fd, (uid_t)uid, (gid_t)gid) < 0) {
            err = errno;
            goto fail;
        }
    }
    if (!exact && fchmod(fd, (mode_t)perms) < 0) {
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
    if (anon) {
        if (linkat(fd, "", dir_fd, base, AT_EMPTY_PATH) == 0) {
            close(fd);  /* nothing is buffered: the data was written (and fsynced if asked) */
            return 0;
        }
        if (errno == EEXIST) {  /* a replacement: a temp name first, then the rename below */
            if (link_named(fd, dir_fd, base, keep, tmp, sizeof tmp) < 0) {
                err = errno;
                goto fail;
            }
            anon = 0;
        } else if (errno == EPERM || errno == ENOENT || errno == EACCES) {
            /* Not allowed here (or the directory went away, which the retry reports). */
            __atomic_store_n(&flink_ok, 0, __ATOMIC_RELAXED);
            close(fd);
            return commit(dir_fd, base, base_len, data, size, perms, uid, gid, times, mtime_ns,
                          do_fsync, umask);
        } else {
            err = errno;
            goto fail;
        }
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
    if (!anon)
        unlinkat(dir_fd, tmp, 0);
    return err;
}

static PyObject *
py_commit_bytes(PyObject *self, PyObject *args)
{
    int dir_fd, perms, times, do_fsync, umask = -1;
    long long uid, gid, mtime_ns;
    Py_buffer base, data;

    if (!PyArg_ParseTuple(args, "iy*y*iLLpLp|i:commit_bytes", &dir_fd, &base, &data, &perms, &uid, &gid,
                          &times, &mtime_ns, &do_fsync, &umask))
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
        err = commit(dir_fd, name, base.len, data.buf, data.len, perms, uid, gid, times, mtime_ns, do_fsync, umask);
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
"commit_bytes(dir_fd, base, data, perms, uid, gid, times, mtime_ns, fsync, umask=-1)\n--\n\n"
"Write data to a fresh temp file beside base, set its owner (-1: leave), permissions\n"
"and (if times) atime and mtime, fsync if asked, and rename it over base; the GIL is\n"
"released throughout. On failure nothing is left behind and OSError names base.\n"
"umask: the process umask, if known (lets the file be created with perms).");

/* -- Committer ----------------------------------------------------------------- */

typedef struct Job {
    struct Job *next;
    PyObject *token;   /* owned; handed back by collect() */
    Py_buffer data;    /* held until collect() */
    int dir_fd, perms, times, do_fsync, umask, err;
    long long uid, gid, mtime_ns;
    Py_ssize_t base_len;
    char base[256];
} Job;

typedef struct {
    Job *head, *tail;
} JobList;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;
    pthread_cond_t work;   /* todo got a job, or stop */
    pthread_cond_t done;   /* a job finished */
    pthread_t thread;
    int started, stop;
    int idle;      /* the thread waits for work: submit() must signal */
    int waiters;   /* threads waiting for a job to finish: the thread must signal */
    JobList todo, finished;
    Py_ssize_t in_flight, in_flight_bytes;  /* submitted, not yet finished */
    Py_ssize_t max_jobs, max_bytes;
} Committer;

static void
list_push(JobList *l, Job *j)
{
    j->next = NULL;
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
}

static void *
committer_main(void *arg)
{
    Committer *c = (Committer *)arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->todo.head && !c->stop) {
            /* Idle: submit() wakes us only once WAKE_AT files are queued; a few files
             * queued before the submitting thread went quiet are picked up after IDLE_NS. */
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += IDLE_NS;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec += 1;
                until.tv_nsec -= 1000000000L;
            }
            c->idle = 1;
            pthread_cond_timedwait(&c->work, &c->mu, &until);
            c->idle = 0;
        }
        Job *j = c->todo.head;
        if (!j)
            break;  /* stop, and nothing left to do */
        c->todo.head = j->next;
        if (!c->todo.head)
            c->todo.tail = NULL;
        pthread_mutex_unlock(&c->mu);
        j->err = commit(j->dir_fd, j->base, j->base_len, j->data.buf, j->data.len, j->perms, j->uid, j->gid,
                        j->times, j->mtime_ns, j->do_fsync, j->umask);
        pthread_mutex_lock(&c->mu);
        list_push(&c->finished, j);
        c->in_flight--;
        c->in_flight_bytes -= j->data.len;
        /* Waiters wake at half full (a full queue refills in one go) or empty (collect). */
        if (c->waiters && (c->in_flight <= c->max_jobs / 2 || c->in_flight == 0))
            pthread_cond_broadcast(&c->done);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static int
committer_init(Committer *c, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_jobs", "max_bytes", NULL};
    /* 256 files: the receiver thread waits less often for a commit thread that shares the
     * cores with it (daemon push of 100k files, tmpfs: 3.0 -> 2.7 s against 64 files; 1024
     * was no faster). */
    Py_ssize_t max_jobs = 256, max_bytes = 32 << 20;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|nn:Committer", kwlist, &max_jobs, &max_bytes))
        return -1;
    if (c->started) {
        PyErr_SetString(PyExc_RuntimeError, "Committer already started");
        return -1;
    }
    if (max_jobs < 1 || max_bytes < 1) {
        PyErr_SetString(PyExc_ValueError, "max_jobs and max_bytes must be positive");
        return -1;
    }
    c->max_jobs = max_jobs;
    c->max_bytes = max_bytes;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->work, NULL);
    pthread_cond_init(&c->done, NULL);
    int rc = pthread_create(&c->thread, NULL, committer_main, c);
    if (rc) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    c->started = 1;
    return 0;
}

static PyObject *
committer_submit(Committer *c, PyObject *args)
{
    PyObject *token;
    Py_buffer base;
    Job *j = PyMem_RawCalloc(1, sizeof *j);
    if (!j)
        return PyErr_NoMemory();
    j->umask = -1;
    if (!PyArg_ParseTuple(args, "Oiy*y*iLLpLp|i:submit", &token, &j->dir_fd, &base, &j->data, &j->perms, &j->uid,
                          &j->gid, &j->times, &j->mtime_ns, &j->do_fsync, &j->umask)) {
        PyMem_RawFree(j);
        return NULL;
    }
    int bad = base.len == 0 || base.len > 255 || memchr(base.buf, '/', (size_t)base.len)
              || memchr(base.buf, '\0', (size_t)base.len);
    if (!bad) {
        memcpy(j->base, base.buf, (size_t)base.len);
        j->base[base.len] = '\0';
        j->base_len = base.len;
    }
    PyBuffer_Release(&base);
    if (bad || !c->started || c->stop) {
        PyBuffer_Release(&j->data);
        PyMem_RawFree(j);
        if (bad)
            PyErr_SetString(PyExc_ValueError, "base must be one path component of 1..255 bytes");
        else
            PyErr_SetString(PyExc_RuntimeError, "Committer is closed");
        return NULL;
    }
    Py_INCREF(token);
    j->token = token;
    /* The thread holds the mutex only for a few instructions: take it with the GIL held,
     * and let the GIL go only to wait for room (a queue full of jobs or bytes). */
    pthread_mutex_lock(&c->mu);
    if (c->in_flight >= c->max_jobs || c->in_flight_bytes + j->data.len > c->max_bytes) {
        pthread_mutex_unlock(&c->mu);
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&c->mu);
        if (c->idle)
            pthread_cond_signal(&c->work);
        while (c->in_flight > c->max_jobs / 2) {
            c->waiters++;
            pthread_cond_wait(&c->done, &c->mu);
            c->waiters--;
        }
        pthread_mutex_unlock(&c->mu);
        Py_END_ALLOW_THREADS
        pthread_mutex_lock(&c->mu);
    }
    list_push(&c->todo, j);
    c->in_flight++;
    c->in_flight_bytes += j->data.len;
    if (c->idle && (c->in_flight >= WAKE_AT || c->in_flight_bytes * 4 >= c->max_bytes))
        pthread_cond_signal(&c->work);
    pthread_mutex_unlock(&c->mu);
    Py_RETURN_NONE;
}

/* Hand back finished jobs as [(token, errno)], freeing them (the GIL is held). */
static PyObject *
take_finished(Job *j)
{
    PyObject *out = PyList_New(0);
    while (j) {
        Job *next = j->next;
        PyObject *item = out ? Py_BuildValue("(Oi)", j->token, j->err) : NULL;
        if (item == NULL || PyList_Append(out, item) < 0)
            Py_CLEAR(out);
        Py_XDECREF(item);
        Py_DECREF(j->token);
        PyBuffer_Release(&j->data);
        PyMem_RawFree(j);
        j = next;
    }
    return out;
}

static PyObject *
collect_jobs(Committer *c, int wait)
{
    Job *j;
    if (!c->started)
        return PyList_New(0);
    if (wait) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&c->mu);
        if (c->idle)
            pthread_cond_signal(&c->work);
        while (c->in_flight) {
            c->waiters++;
            pthread_cond_wait(&c->done, &c->mu);
            c->waiters--;
        }
        pthread_mutex_unlock(&c->mu);
        Py_END_ALLOW_THREADS
    }
    pthread_mutex_lock(&c->mu);  /* held briefly by the thread: no need to let the GIL go */
    j = c->finished.head;
    c->finished.head = c->finished.tail = NULL;
    pthread_mutex_unlock(&c->mu);
    return take_finished(j);
}

static PyObject *
committer_collect(Committer *c, PyObject *args)
{
    int wait = 0;
    if (!PyArg_ParseTuple(args, "|p:collect", &wait))
        return NULL;
    return collect_jobs(c, wait);
}

/* Stop the thread once the queue is empty; what finished stays for collect(). */
static void
committer_stop(Committer *c)
{
    if (!c->started || c->stop)
        return;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_signal(&c->work);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    Py_END_ALLOW_THREADS
}

static PyObject *
committer_close(Committer *c, PyObject *Py_UNUSED(ignored))
{
    committer_stop(c);
    return collect_jobs(c, 0);
}

static void
committer_dealloc(Committer *c)
{
    committer_stop(c);
    if (c->started) {
        PyObject *rest = take_finished(c->finished.head);
        Py_XDECREF(rest);
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->work);
        pthread_cond_destroy(&c->done);
    }
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyMethodDef committer_methods[] = {
    {"submit", (PyCFunction)committer_submit, METH_VARARGS,
     "submit(token, dir_fd, base, data, perms, uid, gid, times, mtime_ns, fsync, umask=-1): queue one commit_bytes."},
    {"collect", (PyCFunction)committer_collect, METH_VARARGS,
     "collect(wait=False) -> [(token, errno)]: the files done since the last call (all queued ones if wait)."},
    {"close", (PyCFunction)committer_close, METH_NOARGS,
     "close() -> [(token, errno)]: finish the queue, stop the thread, return what finished."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CommitterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zcsync._commit.Committer",
    .tp_basicsize = sizeof(Committer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Committer(max_jobs=256, max_bytes=32 MiB): commit_bytes on a thread of its own.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)committer_init,
    .tp_dealloc = (destructor)committer_dealloc,
    .tp_methods = committer_methods,
};

static PyObject *
py_unnamed(PyObject *self, PyObject *args)
{
    int flag = -1;
    if (!PyArg_ParseTuple(args, "|p:unnamed", &flag))
        return NULL;
    int was = __atomic_load_n(&flink_ok, __ATOMIC_RELAXED);
    if (flag != -1)
        __atomic_store_n(&flink_ok, flag, __ATOMIC_RELAXED);
    return PyBool_FromLong(was);
}

PyDoc_STRVAR(unnamed_doc,
"unnamed([flag]) -> bool\n--\n\n"
"Whether commits still try an unnamed temp file (O_TMPFILE, linked into place); with\n"
"flag, set it (False: always a named temp file, as where linking is refused). The\n"
"previous value is returned. For tests and for reports of which path is in use.");

static PyMethodDef methods[] = {
    {"commit_bytes", (PyCFunction)py_commit_bytes, METH_VARARGS, commit_bytes_doc},
    {"unnamed", (PyCFunction)py_unnamed, METH_VARARGS, unnamed_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "zcsync._commit", "One-call commit of an in-memory file.", -1, methods,
};

PyMODINIT_FUNC
PyInit__commit(void)
{
    if (PyType_Ready(&CommitterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CommitterType);
    if (PyModule_AddObject(m, "Committer", (PyObject *)&CommitterType) < 0) {
        Py_DECREF(&CommitterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
