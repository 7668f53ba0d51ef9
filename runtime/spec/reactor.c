/* wasm-exec's CPython reactor: the interpreter lives in linear memory between turns.
 *
 * Exports (the same ABI as the scientific runtime):
 *   _initialize()          wasi-libc's constructors (called once, at build time: the
 *                          published module is pre-initialised and does not export it)
 *   host_alloc(n) -> ptr   a buffer for the host to write a turn's source (or a reply)
 *   turn(ptr, len) -> i32  run UTF-8 source in __main__; frees ptr. Low 8 bits: 0 ok,
 *                          1 uncaught exception (traceback on stderr), n for sys.exit(n);
 *                          -1 when the interpreter could not start.
 *   shutdown() -> i32      finalise the interpreter (never needed between turns)
 * Imports: wasi_snapshot_preview1.*, and host.call(req, req_len, out_ptr, out_len) -> i32,
 * reachable from the guest as the built-in module `_host` (`_host.call(bytes) -> bytes`).
 *
 * A turn runs its source in __main__, unless the built-in module `_reactor` holds a callable
 * `_run_turn`: then the turn is `_reactor._run_turn(source, number)` and its int result the
 * status (how a runner keeps control of every turn after its first). `_reactor` is looked up
 * once, at start-up: replacing sys.modules["_reactor"] does not change what a turn calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <netdb.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define STDLIB_ZIP L"/usr/local/lib/python313.zip"

/* ------------------------------------------------------------------------ malloc
 * The C library's allocator, replacing the toolchain's (zig's libc ships a weak malloc over
 * a power-of-two size-class allocator: memory freed in one size class is never reused for
 * another, so an agent that filled its memory and freed it could still not allocate, and
 * the interpreter could not even compile the next call). This one keeps free chunks with
 * boundary tags and coalesces them, like dlmalloc: memory freed is memory for anything.
 *
 * A chunk starts 8 bytes before the pointer it gives: prev_foot (the previous chunk's size,
 * valid while that one is free) and head (this chunk's size | flags). Sizes are multiples of
 * 16 (the pointers are 16-aligned), at least 16. A free chunk keeps its list links in its
 * payload. Each region of linear memory (from memory.grow) ends with a fence: a header of
 * size 0 marked in use, so coalescing stops there; a region grown right after the last one
 * extends it. Single-threaded, like the rest of the reactor. */
#include <errno.h>

#define WX_PINUSE 1u   /* the previous chunk is in use */
#define WX_CINUSE 2u   /* this chunk is in use */
#define WX_MIN 16u     /* smallest chunk */
#define WX_PAGE 65536u
#define WX_NBINS 152u  /* 1..63: exact sizes 16..1008; then 4 bins per power of two */
#define WX_MAX_REQUEST 0x7fff0000u

typedef struct wx_chunk {
    size_t prev_foot;
    size_t head;
    struct wx_chunk *fd; /* (free chunks only) */
    struct wx_chunk *bk;
} wx_chunk;

static wx_chunk *wx_bins[WX_NBINS];
static uint32_t wx_map[(WX_NBINS + 31) / 32];
static uintptr_t wx_heap_end; /* end of the last region (its fence is the last 8 bytes) */

#define WX_SIZE(c) ((c)->head & ~(size_t)3)
#define WX_AT(c, off) ((wx_chunk *)((char *)(c) + (off)))
#define WX_MEM(c) ((void *)((char *)(c) + 8))
#define WX_CHUNK(p) ((wx_chunk *)((char *)(p) - 8))

static inline unsigned wx_bin(size_t size) {
    if (size < 1024) return (unsigned)(size >> 4);
    unsigned l = 31u - (unsigned)__builtin_clz((unsigned)size);
    return 64u + (l - 10u) * 4u + (unsigned)((size >> (l - 2u)) & 3u);
}

static void wx_insert(wx_chunk *c, size_t size) {
    unsigned i = wx_bin(size);
    c->fd = wx_bins[i];
    c->bk = NULL;
    if (c->fd) c->fd->bk = c;
    wx_bins[i] = c;
    wx_map[i >> 5] |= 1u << (i & 31);
}

static void wx_unlink(wx_chunk *c) {
    unsigned i = wx_bin(WX_SIZE(c));
    if (c->bk) c->bk->fd = c->fd;
    else wx_bins[i] = c->fd;
    if (c->fd) c->fd->bk = c->bk;
    if (!wx_bins[i]) wx_map[i >> 5] &= ~(1u << (i & 31));
}

/* mark free chunk `c` of `size` (its previous chunk is in use) and file it */
static void wx_release(wx_chunk *c, size_t size) {
    c->head = size | WX_PINUSE;
    wx_chunk *next = WX_AT(c, size);
    next->prev_foot = size;
    next->head &= ~(size_t)WX_PINUSE;
    wx_insert(c, size);
}

/* the lowest non-empty bin from `i` on, or WX_NBINS */
static unsigned wx_next_bin(unsigned i) {
    while (i < WX_NBINS) {
        uint32_t bits = wx_map[i >> 5] & (~0u << (i & 31));
        if (bits) return (i & ~31u) + (unsigned)__builtin_ctz(bits);
        i = (i & ~31u) + 32u;
    }
    return WX_NBINS;
}

static wx_chunk *wx_find(size_t size) {
    unsigned i = wx_bin(size);
    wx_chunk *c = wx_bins[i];
    if (i >= 64) {
        while (c && WX_SIZE(c) < size) c = c->fd; /* a bin of ranges: first fit */
    }
    if (!c) {
        i = wx_next_bin(i + 1);
        if (i >= WX_NBINS) return NULL;
        c = wx_bins[i]; /* every chunk of a later bin is large enough */
    }
    wx_unlink(c);
    return c;
}

/* in-use chunk `c` keeps `size` bytes; a remainder large enough is freed */
static void wx_trim(wx_chunk *c, size_t size) {
    size_t total = WX_SIZE(c);
    if (total - size < WX_MIN) return;
    c->head = size | (c->head & WX_PINUSE) | WX_CINUSE;
    wx_chunk *rest = WX_AT(c, size);
    rest->head = (total - size) | WX_PINUSE | WX_CINUSE;
    free(WX_MEM(rest));
}

/* more linear memory for a chunk of `size` (false when the memory limit says no) */
static int wx_grow(size_t size) {
    size_t pages = (size + 16u + WX_PAGE - 1u) / WX_PAGE;
    size_t index = __builtin_wasm_memory_grow(0, pages);
    if (index == (size_t)-1) return 0;
    uintptr_t start = (uintptr_t)index * WX_PAGE, end = start + pages * WX_PAGE;
    wx_chunk *c;
    size_t csize;
    if (wx_heap_end != 0 && start == wx_heap_end) {
        /* right after the last region: its fence becomes the head of the new chunk */
        c = (wx_chunk *)(start - 8u);
        csize = end - start;
        if (!(c->head & WX_PINUSE)) {
            wx_chunk *prev = WX_AT(c, -(ptrdiff_t)c->prev_foot);
            wx_unlink(prev);
            csize += WX_SIZE(prev);
            c = prev;
        }
    } else {
        c = (wx_chunk *)(start + 8u);
        c->prev_foot = 0;
        csize = end - start - 16u;
    }
    wx_chunk *fence = (wx_chunk *)(end - 8u);
    fence->head = WX_CINUSE | WX_PINUSE;
    wx_heap_end = end;
    wx_release(c, csize);
    return 1;
}

static inline size_t wx_request(size_t n) {
    return n <= 8u ? WX_MIN : (n + 8u + 15u) & ~(size_t)15u;
}

void *malloc(size_t n) {
    if (n > WX_MAX_REQUEST) { errno = ENOMEM; return NULL; }
    size_t size = wx_request(n);
    wx_chunk *c = wx_find(size);
    if (!c) {
        if (!wx_grow(size) || !(c = wx_find(size))) { errno = ENOMEM; return NULL; }
    }
    c->head |= WX_CINUSE;
    WX_AT(c, WX_SIZE(c))->head |= WX_PINUSE;
    wx_trim(c, size);
    return WX_MEM(c);
}

void free(void *p) {
    if (!p) return;
    wx_chunk *c = WX_CHUNK(p);
    size_t size = WX_SIZE(c);
    wx_chunk *next = WX_AT(c, size);
    if (!(c->head & WX_PINUSE)) {
        wx_chunk *prev = WX_AT(c, -(ptrdiff_t)c->prev_foot);
        wx_unlink(prev);
        size += WX_SIZE(prev);
        c = prev;
    }
    if (!(next->head & WX_CINUSE)) {
        wx_unlink(next);
        size += WX_SIZE(next);
    }
    wx_release(c, size);
}

void *realloc(void *p, size_t n) {
    if (!p) return malloc(n);
    if (n == 0) { free(p); return NULL; }
    if (n > WX_MAX_REQUEST) { errno = ENOMEM; return NULL; }
    size_t size = wx_request(n);
    wx_chunk *c = WX_CHUNK(p);
    size_t have = WX_SIZE(c);
    if (size > have) {
        wx_chunk *next = WX_AT(c, have);
        if (!(next->head & WX_CINUSE) && have + WX_SIZE(next) >= size) {
            wx_unlink(next);
            have += WX_SIZE(next);
            c->head = have | (c->head & WX_PINUSE) | WX_CINUSE;
            WX_AT(c, have)->head |= WX_PINUSE;
        } else {
            void *q = malloc(n);
            if (!q) return NULL;
            memcpy(q, p, have - 8u);
            free(p);
            return q;
        }
    }
    wx_trim(c, size);
    return p;
}

void *calloc(size_t count, size_t each) {
    size_t n;
    if (__builtin_mul_overflow(count, each, &n)) { errno = ENOMEM; return NULL; }
    void *p = malloc(n);
    if (p) memset(p, 0, n);
    return p;
}

void *reallocarray(void *p, size_t count, size_t each) {
    size_t n;
    if (__builtin_mul_overflow(count, each, &n)) { errno = ENOMEM; return NULL; }
    return realloc(p, n);
}

static void *wx_aligned(size_t align, size_t n) {
    if (align <= 16u) return malloc(n);
    if (n > WX_MAX_REQUEST || align > WX_MAX_REQUEST / 2u) { errno = ENOMEM; return NULL; }
    char *p = malloc(n + align + WX_MIN);
    if (!p) return NULL;
    if (((uintptr_t)p & (align - 1u)) == 0) {
        wx_trim(WX_CHUNK(p), wx_request(n));
        return p;
    }
    /* the first aligned address with room for a free chunk before it */
    char *a = (char *)(((uintptr_t)p + WX_MIN + align - 1u) & ~(uintptr_t)(align - 1u));
    wx_chunk *c = WX_CHUNK(p), *ac = WX_CHUNK(a);
    size_t total = WX_SIZE(c), lead = (size_t)(a - p);
    c->head = lead | (c->head & WX_PINUSE) | WX_CINUSE;
    ac->head = (total - lead) | WX_PINUSE | WX_CINUSE;
    free(p);
    wx_trim(ac, wx_request(n));
    return a;
}

void *aligned_alloc(size_t align, size_t n) {
    if (align == 0 || (align & (align - 1u))) { errno = EINVAL; return NULL; }
    return wx_aligned(align, n);
}

void *memalign(size_t align, size_t n) { return aligned_alloc(align, n); }

int posix_memalign(void **res, size_t align, size_t n) {
    if (align < sizeof(void *) || (align & (align - 1u))) return EINVAL;
    void *p = wx_aligned(align, n);
    if (!p) return ENOMEM;
    *res = p;
    return 0;
}

void *valloc(size_t n) { return wx_aligned(WX_PAGE, n); }

size_t malloc_usable_size(void *p) { return p ? WX_SIZE(WX_CHUNK(p)) - 8u : 0; }


__attribute__((import_module("host"), import_name("call")))
extern int32_t wasm_exec_host_call(const char *req, int32_t req_len, char **out_ptr,
                                   int32_t *out_len);

/* The socket module's name-service calls: WASI has no resolver and this sandbox no network,
 * so every lookup fails as "host not found" (the module itself builds, so that the
 * standard library modules that import it, asyncio and urllib among them, import). */
static int resolver_errno = 0;
int *__h_errno_location(void) { return &resolver_errno; }
struct hostent *gethostbyname(const char *name) { resolver_errno = HOST_NOT_FOUND; return NULL; }
struct hostent *gethostbyaddr(const void *addr, socklen_t len, int type) {
    resolver_errno = HOST_NOT_FOUND;
    return NULL;
}
struct servent *getservbyname(const char *name, const char *proto) { return NULL; }
struct servent *getservbyport(int port, const char *proto) { return NULL; }
struct protoent *getprotobyname(const char *name) { return NULL; }
const char *hstrerror(int err) { return "no name service in the sandbox"; }

static PyObject *host_call(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    char *out = NULL;
    int32_t out_len = 0;
    int32_t rc = wasm_exec_host_call((const char *)view.buf, (int32_t)view.len, &out, &out_len);
    PyBuffer_Release(&view);
    if (rc == -1) {
        PyErr_SetString(PyExc_ConnectionRefusedError, "the host refused the call");
        return NULL;
    }
    if (rc != 0) {
        PyErr_SetString(PyExc_OSError, "the host call failed");
        return NULL;
    }
    if (out == NULL || out_len < 0) return PyBytes_FromStringAndSize("", 0);
    PyObject *res = PyBytes_FromStringAndSize(out, out_len);
    free(out);
    return res;
}

static PyMethodDef host_methods[] = {
    {"call", host_call, METH_O, "call(request: bytes) -> bytes: one request to the host"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef host_module = {PyModuleDef_HEAD_INIT, "_host",
                                         "The host's request/reply door.", -1, host_methods};

static PyObject *PyInit__host(void) { return PyModule_Create(&host_module); }

static struct PyModuleDef reactor_module = {PyModuleDef_HEAD_INIT, "_reactor",
                                            "The reactor's turn hook (_run_turn).", -1, NULL};

static PyObject *PyInit__reactor(void) { return PyModule_Create(&reactor_module); }

static PyObject *reactor_dict = NULL; /* the dict of the `_reactor` module, for good */
static PyObject *turn_filename = NULL;
static long turn_number = 0;

static int started = 0;
static int failed = 0;

static int start(void) {
    if (started) return failed ? -1 : 0;
    started = 1;
    if (PyImport_AppendInittab("_host", PyInit__host) < 0 ||
        PyImport_AppendInittab("_reactor", PyInit__reactor) < 0) {
        failed = 1;
        return -1;
    }
    /* UTF-8 everywhere (file names, stdio, open()), whatever the (empty) locale says */
    PyPreConfig preconfig;
    PyPreConfig_InitIsolatedConfig(&preconfig);
    preconfig.utf8_mode = 1;
    if (PyStatus_Exception(Py_PreInitialize(&preconfig))) { failed = 1; return -1; }
    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 0;
    config.write_bytecode = 0;
    config.install_signal_handlers = 0;
    config.pathconfig_warnings = 0;
    /* a fixed hash seed: the build is reproducible (every agent of one build shares the
     * start-up state baked into the module anyway, the seed included) */
    config.use_hash_seed = 1;
    config.hash_seed = 0;
    PyStatus st = PyConfig_SetString(&config, &config.program_name, L"python3.13");
    if (!PyStatus_Exception(st)) st = PyConfig_SetString(&config, &config.home, L"/usr/local");
    if (!PyStatus_Exception(st)) st = PyConfig_SetString(&config, &config.executable, L"");
    if (!PyStatus_Exception(st)) {
        config.module_search_paths_set = 1;
        st = PyWideStringList_Append(&config.module_search_paths, STDLIB_ZIP);
    }
    if (!PyStatus_Exception(st)) st = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(st)) {
        failed = 1;
        return -1;
    }
    PyObject *mod = PyImport_ImportModule("_reactor");
    turn_filename = PyUnicode_FromString("<turn>");
    if (mod == NULL || turn_filename == NULL) {
        PyErr_Print();
        failed = 1;
        return -1;
    }
    reactor_dict = PyModule_GetDict(mod); /* borrowed from a module kept alive below */
    Py_INCREF(reactor_dict);
    if (PyDict_SetItemString(reactor_dict, "_run_turn", Py_None) < 0) {
        PyErr_Print();
        failed = 1;
        return -1;
    }
    return 0;
}

__attribute__((export_name("host_alloc")))
void *host_alloc(int32_t n) { return malloc(n > 0 ? (size_t)n : 1); }

__attribute__((export_name("turn")))
int32_t turn(char *src, int32_t len) {
    if (start() < 0) { free(src); return -1; }
    PyObject *code = NULL, *main = NULL, *res = NULL;
    int32_t status = 0;
    turn_number++;
    PyObject *text = PyUnicode_DecodeUTF8(src, len, "strict");
    free(src);
    if (text == NULL) goto error;
    PyObject *hook = PyDict_GetItemString(reactor_dict, "_run_turn"); /* borrowed */
    if (hook != NULL && hook != Py_None && PyCallable_Check(hook)) {
        Py_INCREF(hook);
        res = PyObject_CallFunction(hook, "Ol", text, turn_number);
        Py_DECREF(hook);
        Py_DECREF(text);
        if (res == NULL) goto error;
        status = PyLong_Check(res) ? (int32_t)PyLong_AsLong(res) : 0;
        Py_DECREF(res);
        if (PyErr_Occurred()) PyErr_Clear();
        return status;
    }
    const char *utf8 = PyUnicode_AsUTF8(text);
    if (utf8 == NULL) { Py_DECREF(text); goto error; }
    code = Py_CompileStringObject(utf8, turn_filename, Py_file_input, NULL, -1);
    Py_DECREF(text);
    if (code == NULL) goto error;
    main = PyImport_AddModule("__main__"); /* borrowed */
    if (main == NULL) goto error;
    PyObject *globals = PyModule_GetDict(main); /* borrowed */
    res = PyEval_EvalCode(code, globals, globals);
    Py_DECREF(code);
    if (res == NULL) goto error;
    Py_DECREF(res);
    return 0;
error:
    if (PyErr_ExceptionMatches(PyExc_SystemExit)) {
        PyObject *exc = PyErr_GetRaisedException();
        PyObject *c = PyObject_GetAttrString(exc, "code");
        PyErr_Clear();
        if (c == NULL || c == Py_None) status = 0;
        else if (PyLong_Check(c)) status = (int32_t)(PyLong_AsLong(c) & 0xff);
        else status = 1;
        PyErr_Clear();
        Py_XDECREF(c);
        Py_DECREF(exc);
        return status;
    }
    PyErr_Print();
    return 1;
}

__attribute__((export_name("shutdown")))
int32_t wasm_exec_shutdown(void) {
    if (!started || failed) return 0;
    return Py_FinalizeEx();
}
