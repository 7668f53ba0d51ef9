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
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define STDLIB_ZIP L"/usr/local/lib/python313.zip"

__attribute__((import_module("host"), import_name("call")))
extern int32_t wasm_exec_host_call(const char *req, int32_t req_len, char **out_ptr,
                                   int32_t *out_len);

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
    config.use_hash_seed = 0;
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
int32_t shutdown(void) {
    if (!started || failed) return 0;
    return Py_FinalizeEx();
}
