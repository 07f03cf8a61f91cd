/* The master's hot path in C: accept + peek, hand-off sendmsg, batched channel reads.
 *
 * A compiled twin of gunicorn_fdpass/master/fastpath.py (same functions, same results; the
 * tests run both). Every function works on raw file descriptors, so no Python socket object
 * (and no getsockname() to build one) is made per connection. Nothing here keeps state or
 * decides policy: the verdicts only sort out the plain case (a whole request head and nothing
 * else to decide); everything else goes back to the Python logic unchanged.
 *
 * Built by setup.py when a compiler is there; FDPASS_NO_EXTENSIONS=1 ignores it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

/* Verdicts of a peek; the same numbers as fastpath.py. */
#define V_PLAIN 1   /* a method, a whole head, no body framing, no PROXY line: hand it out */
#define V_WAIT 2    /* nothing arrived yet */
#define V_STARTED 3 /* part of a head that begins with a method */
#define V_GONE 4    /* the client hung up or the socket failed */
#define V_OTHER 5   /* bytes that need the Python logic's decision */

#define HEADER_SIZE 13
#define MAX_PAYLOAD (64 * 1024)
#define MAX_MESSAGE (HEADER_SIZE + MAX_PAYLOAD)
#define RECV_BATCH 16

/* Case-insensitive search for "\n" + name + optional blanks + ':' (name in lower case), the
 * spellings http/arrival.py looks for too. */
static int
has_field(const unsigned char *p, size_t n, const char *name, size_t len)
{
    const unsigned char *end = p + n;
    const unsigned char *nl = p;
    while ((nl = memchr(nl, '\n', (size_t)(end - nl))) != NULL) {
        nl++;
        if ((size_t)(end - nl) <= len)
            return 0;
        size_t i = 0;
        while (i < len && (nl[i] | 0x20) == (unsigned char)name[i])
            i++;
        if (i < len)
            continue;
        while (nl + i < end && (nl[i] == ' ' || nl[i] == '\t'))
            i++;
        if (nl + i < end && nl[i] == ':')
            return 1;
    }
    return 0;
}

/* RFC 9110 token characters (a method), as http/request_rules.py's TOKEN. */
static int
is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Offset just past the blank line ending a head ("\n\n" or "\n\r\n"), or 0. */
static size_t
end_of_head(const unsigned char *p, size_t n)
{
    const unsigned char *end = p + n;
    const unsigned char *nl = p;
    while ((nl = memchr(nl, '\n', (size_t)(end - nl))) != NULL) {
        nl++;
        if (nl < end && *nl == '\n')
            return (size_t)(nl + 1 - p);
        if (nl + 1 < end && nl[0] == '\r' && nl[1] == '\n')
            return (size_t)(nl + 2 - p);
    }
    return 0;
}

static int
classify(const unsigned char *p, ssize_t n, size_t max_peek)
{
    if (n == 0)
        return V_GONE;
    if ((size_t)n > max_peek)
        return V_OTHER;
    /* A request line begins with a method and a space. Anything else (a TLS record, a control
     * byte, an empty line, a PROXY v2 signature) and a PROXY v1 line are for http/arrival.py,
     * which refuses bad bytes at once: never "wait" for them here. */
    size_t method = 0;
    while (method < (size_t)n && is_tchar(p[method]))
        method++;
    if (method == (size_t)n)
        return V_STARTED; /* the method so far */
    if (method == 0 || p[method] != ' ' || (method == 5 && memcmp(p, "PROXY", 5) == 0))
        return V_OTHER;
    size_t head = end_of_head(p, (size_t)n);
    if (head == 0)
        return V_STARTED;
    /* A body to come: http/arrival.py decides whether it waits in the master. */
    if (has_field(p, head, "content-length", 14) || has_field(p, head, "transfer-encoding", 17))
        return V_OTHER;
    return V_PLAIN;
}

static int
peek_fd(int fd, Py_buffer *buf, size_t max_peek)
{
    ssize_t n;
    do {
        n = recv(fd, buf->buf, (size_t)buf->len, MSG_PEEK | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? V_WAIT : V_GONE;
    return classify(buf->buf, n, max_peek);
}

static int
get_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t max_peek)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE) < 0)
        return -1;
    if (view->len < max_peek + 1) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "peek buffer must hold max_peek + 1 bytes");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(accept_batch_doc,
"accept_batch(listener_fd, limit, buf, max_peek) -> (list of (fd, verdict), errno)\n\n"
"Accept up to limit connections (close-on-exec) and peek at each.\n"
"errno is 0 when the backlog ran empty or limit was reached, else the accept error.");

static PyObject *
accept_batch(PyObject *self, PyObject *args)
{
    int lfd;
    Py_ssize_t limit, max_peek;
    PyObject *bufobj;
    if (!PyArg_ParseTuple(args, "inOn", &lfd, &limit, &bufobj, &max_peek))
        return NULL;
    Py_buffer buf;
    if (get_buffer(bufobj, &buf, max_peek) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    int err = 0;
    if (out == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < limit;) {
        /* Blocking, as Python's accept() leaves it: the master only uses MSG_DONTWAIT on it
         * and the worker sets its own timeouts. */
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                err = errno;
            break;
        }
        i++;
        int verdict = peek_fd(fd, &buf, (size_t)max_peek);
        PyObject *item = Py_BuildValue("(ii)", fd, verdict);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            close(fd); /* the ones already in the list are closed by the caller's except */
            goto fail;
        }
        Py_DECREF(item);
    }
    PyBuffer_Release(&buf);
    return Py_BuildValue("(Ni)", out, err);
fail:
    PyBuffer_Release(&buf);
    if (out != NULL) {
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(out); j++)
            close((int)PyLong_AsLong(PyTuple_GET_ITEM(PyList_GET_ITEM(out, j), 0)));
        Py_DECREF(out);
    }
    return NULL;
}

PyDoc_STRVAR(peek_doc,
"peek(fd, buf, max_peek) -> verdict\n\nPeek (MSG_PEEK, nothing consumed) at a client socket.");

static PyObject *
peek(PyObject *self, PyObject *args)
{
    int fd;
    Py_ssize_t max_peek;
    PyObject *bufobj;
    if (!PyArg_ParseTuple(args, "iOn", &fd, &bufobj, &max_peek))
        return NULL;
    Py_buffer buf;
    if (get_buffer(bufobj, &buf, max_peek) < 0)
        return NULL;
    int verdict = peek_fd(fd, &buf, (size_t)max_peek);
    PyBuffer_Release(&buf);
    return PyLong_FromLong(verdict);
}

PyDoc_STRVAR(send_handoff_doc,
"send_handoff(inbox_fd, conn_id, family, prefix, client_fd) -> bool\n\n"
"Send one HANDOFF message with client_fd attached (SCM_RIGHTS). False when the inbox is\n"
"full; OSError for anything else.");

static PyObject *
send_handoff(PyObject *self, PyObject *args)
{
    int ifd, family, cfd;
    unsigned long long conn_id;
    Py_buffer prefix;
    if (!PyArg_ParseTuple(args, "iKiy*i", &ifd, &conn_id, &family, &prefix, &cfd))
        return NULL;
    if (prefix.len > MAX_PAYLOAD || family < 0) {
        PyBuffer_Release(&prefix);
        PyErr_SetString(PyExc_ValueError, "handoff prefix too long or bad family");
        return NULL;
    }
    unsigned char header[HEADER_SIZE];
    uint32_t value = (uint32_t)family;
    header[0] = 2; /* Kind.HANDOFF */
    for (int i = 0; i < 4; i++)
        header[1 + i] = (unsigned char)(value >> (24 - 8 * i));
    for (int i = 0; i < 8; i++)
        header[5 + i] = (unsigned char)(conn_id >> (56 - 8 * i));
    struct iovec iov[2] = {{header, HEADER_SIZE}, {prefix.buf, (size_t)prefix.len}};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr msg = {0};
    msg.msg_iov = iov;
    msg.msg_iovlen = prefix.len ? 2 : 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof(control.buf);
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &cfd, sizeof(int));
    ssize_t r;
    do {
        r = sendmsg(ifd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    PyBuffer_Release(&prefix);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            Py_RETURN_FALSE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_TRUE;
}

/* One buffer per batch slot, made on first use: only the master calls recv_batch. */
static unsigned char *recv_buffers;

PyDoc_STRVAR(recv_batch_doc,
"recv_batch(channel_fd) -> (list of (datagram, fd, fd_lost), status)\n\n"
"Receive up to 16 messages at once (recvmmsg, MSG_DONTWAIT, MSG_CMSG_CLOEXEC). fd is -1\n"
"when none came; fd_lost is true when one was cut off (MSG_CTRUNC), which also closes any\n"
"that came. status: 0 (nothing more waiting, or a full batch), 1 the peer hung up,\n"
"2 a datagram larger than a message arrived (a protocol error). Only the first fd of a\n"
"message is kept: extra ones are closed.");

static PyObject *
recv_batch(PyObject *self, PyObject *args)
{
    int cfd;
    if (!PyArg_ParseTuple(args, "i", &cfd))
        return NULL;
    if (recv_buffers == NULL) {
        recv_buffers = PyMem_RawMalloc((size_t)RECV_BATCH * MAX_MESSAGE);
        if (recv_buffers == NULL)
            return PyErr_NoMemory();
    }
    struct mmsghdr msgs[RECV_BATCH];
    struct iovec iovs[RECV_BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } controls[RECV_BATCH];
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < RECV_BATCH; i++) {
        iovs[i].iov_base = recv_buffers + (size_t)i * MAX_MESSAGE;
        iovs[i].iov_len = MAX_MESSAGE;
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_control = controls[i].buf;
        msgs[i].msg_hdr.msg_controllen = sizeof(controls[i].buf);
    }
    int got;
    do {
        got = recvmmsg(cfd, msgs, RECV_BATCH, MSG_DONTWAIT | MSG_CMSG_CLOEXEC, NULL);
    } while (got < 0 && errno == EINTR);
    int status = 0;
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            got = 0;
        else if (errno == ECONNRESET || errno == EPIPE || errno == ENOTCONN ||
                 errno == ECONNREFUSED) {
            got = 0;
            status = 1;
        } else
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *out = PyList_New(0);
    for (int i = 0; i < got; i++) {
        struct msghdr *h = &msgs[i].msg_hdr;
        int fd = -1, lost = (h->msg_flags & MSG_CTRUNC) != 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t k = 0; k < count; k++) {
                int one;
                memcpy(&one, CMSG_DATA(c) + k * sizeof(int), sizeof(int));
                if (fd < 0 && !lost)
                    fd = one;
                else
                    close(one);
            }
        }
        if (status != 0 || out == NULL) {
            if (fd >= 0)
                close(fd);
            continue;
        }
        if (msgs[i].msg_len == 0) {
            status = 1; /* end of file: a zero-length datagram never comes from our peer */
            continue;
        }
        if (h->msg_flags & MSG_TRUNC) {
            if (fd >= 0)
                close(fd);
            status = 2;
            continue;
        }
        PyObject *item = Py_BuildValue("(y#iO)", (char *)iovs[i].iov_base,
                                       (Py_ssize_t)msgs[i].msg_len, fd,
                                       lost ? Py_True : Py_False);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            if (fd >= 0)
                close(fd);
            Py_CLEAR(out);
            continue; /* close the remaining fds too */
        }
        Py_DECREF(item);
    }
    if (out == NULL)
        return NULL;
    return Py_BuildValue("(Ni)", out, status);
}

static PyMethodDef core_methods[] = {
    {"accept_batch", accept_batch, METH_VARARGS, accept_batch_doc},
    {"peek", peek, METH_VARARGS, peek_doc},
    {"send_handoff", send_handoff, METH_VARARGS, send_handoff_doc},
    {"recv_batch", recv_batch, METH_VARARGS, recv_batch_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "gunicorn_fdpass.master._core",
    "The master's hot path in C (see fastpath.py for the pure-Python twin).", -1,
    core_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModule_Create(&core_module);
}
