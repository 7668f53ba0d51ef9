# wasm-exec guest runner: runs INSIDE the WebAssembly sandbox (a pre-initialised CPython
# reactor on WASI: 3.13 for the default runtime, 3.15 for the scientific one).
#
# The host's first turn compiles this file as "<wasm-exec-runner>" and runs it (boot: the
# hook, the import guard, the default imports, then the ready message); every later turn
# is `_reactor._run_turn`, which reads one framed request from fd 0 and answers it with one
# write on fd 1 that carries the session token. Between turns no frame of the guest is
# live, so the host can image the interpreter's memory.
#
# Map of this file (one function, _wasm_exec_boot, whose locals are the runner: nothing
# here may read a global or builtin name after boot, see tests/test_runner_static.py):
# - channel: reading the framed init request; json_scanner (the C scanner of JSON text,
#   for requests and for the tools' answers);
# - install_hook: the audit hook and everything it holds. Inside it: the facts it checks
#   (roles by code identity, library files, granted imports), `grant_rules` (the ordered,
#   named rules that decide each import the guard is asked for), `handlers` (one small
#   function per (role, operation) a trusted runner function may ask for), and `check`
#   (the audit events it refuses);
# - the guard: guard_impl, its steps (guard_arguments, guard_relative_name,
#   guard_verdicts, guard_answer: constants of its code, bound at boot) and its entry
#   points (__import__, importlib.import_module), the built-in module loader wrappers,
#   the lazy-import filter;
# - the agent's world: its namespace, builtins, gc stand-ins, streams;
# - a call: run_call (start_call binds the globals and the host's tools; it compiles and
#   runs the cell; record_error and returned_globals make the reply), step / turn_step
#   (one request per reactor turn);
# - tools: tool_call (one call through the host's door, `_host.call`, which only the hook
#   holds), tool_plain (arguments as plain JSON data), the agents' stubs (make_tool, from
#   source of their own file name) and bind_tools;
# - arming: binding the guard's steps and the request slot, the trusted code table, the
#   roles, the hook.
# Lint: ruff checks this file like the package; its exceptions are marked `noqa` where
# they stand, with the reason (the request slot is a lambda; a name kept alive on purpose).
#
# Security design (README, "Threat model"):
# - The WebAssembly boundary is the real wall: no preopened directory, no sockets, no
#   processes, no host environment. Everything here is policy on top of it.
# - Every secret and every capability (the session token, the reply channel, the reader of
#   requests, the real import function, the built-in module loader, the garbage
#   collector) lives only in the closure of an audit hook installed before any agent code
#   runs. No object reachable from agent code refers to that closure, and the hook never
#   calls code the agent could have supplied.
# - Automatic garbage collection is off for good and the `gc` module is unreachable: in
#   CPython 3.12 a collection runs at the next function entry, so a finalizer (`__del__`)
#   could otherwise run inside the hook and read its frame. The runner collects cyclic
#   garbage itself at the end of each call, from its main loop, whose frame holds nothing
#   secret.
# - Trusted runner code asks the hook for a capability by assigning a request tuple to
#   `REQUEST.__defaults__` (an audited assignment whose event carries the tuple). The hook
#   identifies the asking frame by the identity of its code object, checks the exact type
#   of every element before touching it (never hashing or comparing an object the agent
#   could have made), and answers through a list in the tuple. It never reads a frame's
#   f_locals. The runner's own frames therefore hold no reference to `sys`, `os`, the
#   reply channel or the real `__import__`.
# - From Python 3.13 any code can rewrite the local (and free) variables of a frame on
#   the stack through `frame.f_locals`. So a role frame trusts no variable that agent
#   code could have rewritten: each answer list is a fresh `[]` made just before its
#   request, the tuple of tools a request names is checked by identity in the hook, the
#   slot itself is a constant of the role's code (bound to REQUEST at boot: a variable
#   could be swapped for an object whose __setattr__ forges a request from the role's own
#   request site), and it is emptied with `del <slot>.__defaults__` (an instruction, not
#   a call, and not a request site) right after the hook answers.
# - Import-time privileges (compiling and running library code, marshal, loading built-in
#   modules, a library's own imports) hold only for frames whose callers, back to the
#   guard that granted the import, are all library or runner code: agent code that runs
#   during an import (a patched function, a sys.meta_path finder) gets none of them.
# - The import guard (`builtins.__import__`) is a bound method of a plain function over
#   an immutable tuple; its code (and that of its steps, constants of that code) uses no
#   global or builtin name and no cell, so editing dicts, cells or builtins cannot change
#   what it decides, and the hook re-checks who calls it.


def _wasm_exec_boot():
    import _blake2
    import _imp
    import _io
    import _json
    import _operator
    import _signal
    import binascii
    import builtins
    import gc
    import importlib
    import itertools
    import marshal
    import opcode
    import posix  # not os: importing os costs a cold start 7 ms
    import sys
    import time

    # the host's request/reply door (tools): a capability of the hook alone. The module
    # leaves the module table, and the hook refuses to create it again
    import _host
    host_call = _host.call
    del sys.modules["_host"], _host

    RUNNER_FILE = "<wasm-exec-runner>"
    TOOL_FILE = "<wasm-exec-tool>"  # the stubs of the host's tools (see make_tool)
    TOOL_DOC = ("A tool of the host's: call it like a function. Arguments and the result "
                "travel as JSON data (dict, list, str, int, float, bool, None); a failure of "
                "the tool raises ToolError.")
    IMPORT_NAME = opcode.opmap["IMPORT_NAME"]
    EXTENDED_ARG = opcode.opmap["EXTENDED_ARG"]
    # how IMPORT_NAME's argument names its module: co_names[arg >> IMPORT_SHIFT] (the
    # shift is 0 up to Python 3.14 and 2 from 3.15, whose low bits carry flags)
    _probe = compile("x = 1\nimport zz", "<probe>", "exec")
    _raw = _probe.co_code
    IMPORT_SHIFT = 0
    for _i in range(0, len(_raw), 2):
        if _raw[_i] == IMPORT_NAME:
            IMPORT_SHIFT = 0 if _raw[_i + 1] == 1 else 2
    _probe = compile("x = 1\nx.zz = 1", "<probe>", "exec")
    _raw = _probe.co_code
    STORE_ATTR_SHIFT = 0
    for _i in range(0, len(_raw), 2):
        if _raw[_i] == opcode.opmap["STORE_ATTR"]:
            STORE_ATTR_SHIFT = 0 if _raw[_i + 1] == 1 else 2
    del _probe, _raw, _i
    # the types module costs a cold start 2 ms: take the types from objects instead
    FunctionType = type(lambda: None)
    CodeType = type((lambda: None).__code__)
    ModuleType = type(sys)
    FrameType = type(sys._getframe())

    class _Bound:
        def method(self):
            pass

    MethodType = type(_Bound().method)
    del _Bound
    module_dict = ModuleType.__dict__["__dict__"].__get__

    # ------------------------------------------------------------------ channel
    def read_exact(n):
        chunks = []
        got = 0
        while got < n:
            b = posix.read(0, n - got)
            if not b:
                raise EOFError("channel closed")
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)

    def read_frame():
        header = read_exact(8)
        if header[:4] != b"WXQ1":
            raise EOFError("bad request frame")
        return read_exact(int.from_bytes(header[4:8], "little"))

    def json_scanner(constants):
        """json.loads's C scanner of JSON text, with no hook of anyone's: objects are dicts,
        arrays lists, numbers int and float; `constants` makes NaN, Infinity and -Infinity
        (the requests' scanner and the tools' differ only there). Called at boot only."""
        class _Ctx:
            strict = True
            object_hook = None
            object_pairs_hook = None
            array_hook = None  # Python 3.15+
            parse_float = float
            parse_int = int
            parse_constant = constants
            memo = {}

        return _json.make_scanner(_Ctx())

    # (a request's NaNs are all one object)
    scan = json_scanner({"NaN": float("nan"), "Infinity": float("inf"),
                         "-Infinity": float("-inf")}.__getitem__)

    def json_loads(text, _len=len, _ValueError=ValueError):
        obj, end = scan(text, 0)
        if end != _len(text):
            raise _ValueError("trailing data in request")
        return obj

    init = json_loads(read_frame().decode("utf-8"))

    # ------------------------------------------------------------------ the hook
    REQUEST = lambda: None  # noqa: E731 - assigning REQUEST.__defaults__ calls the hook

    def install_hook(token, allowed, prefixes, real_import, create_builtin, exec_builtin,
                     trusted_codes, roles, REQUEST, guard_T, builtin_types, streams,
                     impl_code, implicit_names, request_sites, builtin_B, import_calls,
                     load_code, real_find_and_load, code_index, blake2b, a2b_base64,
                     interpreter_modules, host_call):
        # Everything the hook uses is a local of this function (own cells, shared with
        # no other closure), bound before any agent code exists.
        _type = type
        _str = str
        _int = int
        _len = len
        _id = id
        _bytes = bytes
        _list = list
        _tuple = tuple
        _bool = bool
        _frozenset = frozenset
        _PermissionError = PermissionError
        _BaseException = BaseException
        _host_call = host_call  # (tools: the only way to the host's door)
        _ModuleNotFoundError = ModuleNotFoundError
        _blake2b = blake2b
        code_names = {}  # BLAKE2b-128 of a genuine .pyc -> its module (built when needed)
        _import_calls = import_calls  # offsets of the guard's calls of the real import
        _FunctionType = FunctionType
        _staticmethod = staticmethod
        _ModuleType = type(sys)
        _classmethod = classmethod
        _FrameType = FrameType
        _CodeType = CodeType
        _gf = sys._getframe
        _write = posix.write
        _read = posix.read
        _collect = gc.collect
        _get_count = gc.get_count
        _thresholds = gc.get_threshold()
        # the interpreter's own module table and sys's own dict, captured now: the agent
        # can rebind sys.modules or swap sys's class, never these objects themselves
        _modules = sys.modules
        _sys_dict = sys.__dict__
        _sys_module = sys
        # object's own __class__ setter: `object.__setattr__(x, "__class__", ...)` would look
        # "__class__" up in x's class first, and the agent's class could hold a descriptor
        _set_class = object.__dict__["__class__"].__set__
        _dict_items = dict.items
        _dict_iter = dict.__iter__
        _dict_get = dict.get
        _dict_values = dict.values
        _dict_copy = dict.copy
        _dict_update = dict.update
        # copies into this function's own cells: the hook shares no cell with any function
        # the agent can reach (cells are writable from Python)
        _IMPORT_NAME = IMPORT_NAME
        _EXTENDED_ARG = EXTENDED_ARG
        _IMPORT_SHIFT = IMPORT_SHIFT
        # instructions where a Python 3.15 lazy import takes effect (loading the name)
        reify_ops = frozenset(opcode.opmap[n] for n in (
            "LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS") if n in opcode.opmap)
        _RUNNER_FILE = RUNNER_FILE
        _header = b"WXR1" + token
        _role = roles.get  # id(code) -> (code, role)
        _sites = request_sites.get  # id(code) -> offsets of its STORE_ATTR __defaults__
        _trusted = trusted_codes.get  # id(code) -> code
        state = [True, False]  # booting, inside the hook
        # (tb_frame: a traceback's frame; the event names the frame itself)
        code_attrs = frozenset(("__code__", "f_code", "gi_code", "cr_code", "ag_code",
                                "tb_frame"))
        # built-in modules no one may create once booted: gc would let automatic collection
        # (and so finalizers inside the hook) back in
        reserved_builtins = frozenset(("gc", "_testcapi", "_testinternalcapi", "_host"))
        always_deny = frozenset((
            "sys.addaudithook", "sys.settrace", "sys.setprofile", "sys._current_frames",
            "gc.get_objects", "gc.get_referrers", "gc.get_referents", "code.__new__",
            "sys.monitoring.register_callback", "cpython._PySys_ClearAuditHooks",
            "sys._setprofileallthreads", "sys._settraceallthreads"))

        # The import machinery as boot left it. Library frames of a granted import may
        # compile and unmarshal code; the agent can rewrite the globals those frames use
        # (importlib's, zipimport's, _io's, builtins') to feed them bytes of its own, with
        # no frame of its own on the stack. So each time such code is made, these module
        # dicts and sys's import lists must still hold exactly what they held at boot.
        machinery = []  # (dict, its keys at boot, its values at boot)
        import_lists = []  # (name in sys, the list, its items at boot)
        library_roots = []  # where the import machinery may read files from
        namespace_path = []  # importlib's _NamespacePath class
        machinery_modules = ("builtins", "importlib._bootstrap", "importlib._bootstrap_external",
                             "zipimport", "_io", "marshal", "_imp", "zlib")

        # the only frames that may make or run a library module's code, each at its own
        # call of marshal.loads / compile / exec (code objects are unforgeable; a chain of
        # C callables the agent sets off from some other machinery frame is refused)
        pinned = {"marshal": [], "marshal_frozen": [], "compile": [], "exec": [],
                  "trampoline": [], "fromlist": []}
        pins = (("importlib._bootstrap", None, "_call_with_frames_removed", "trampoline"),
                ("importlib._bootstrap", None, "_handle_fromlist", "fromlist"),
                ("importlib._bootstrap_external", None, "_compile_bytecode", "marshal"),
                ("importlib._bootstrap_external", "SourceLoader", "source_to_code", "compile"),
                ("importlib._bootstrap_external", "_LoaderBasics", "exec_module", "exec"),
                ("importlib._bootstrap", "FrozenImporter", "exec_module", "exec"),
                # (3.15 audits the unmarshalling of a frozen module's code, fetched by name)
                ("importlib._bootstrap", "FrozenImporter", "exec_module", "marshal_frozen"),
                ("zipimport", None, "_unmarshal_code", "marshal"),
                ("zipimport", None, "_compile_source", "compile"),
                ("zipimport", "zipimporter", "exec_module", "exec"))
        # (zipimporter.load_module, the legacy API, is not pinned: it loads whatever name
        # it is given, and the machinery itself never calls it)

        def snapshot_machinery():
            for key, mod in _dict_items(_modules):
                if _type(key) is _str and key in machinery_modules:
                    d = mod.__dict__
                    machinery.append((d, _tuple(d), _tuple(_dict_values(d))))
                    if key == "importlib._bootstrap_external":
                        ns_type = _dict_get(d, "_NamespacePath")
                        if _type(ns_type) is _type:
                            namespace_path.append(ns_type)
                    for modname, clsname, fname, kind in pins:
                        if key != modname:
                            continue
                        owner = d if clsname is None else _dict_get(d, clsname).__dict__
                        fn = owner.get(fname)
                        if _type(fn) is _staticmethod or _type(fn) is _classmethod:
                            fn = fn.__func__
                        if _type(fn) is _FunctionType:
                            pinned[kind].append(fn.__code__)
            for key, value in _dict_items(_sys_dict):
                # (not meta_path or path: libraries add to those, six for one; agent finders
                # gain nothing there, as only the pinned calls make library code, and the
                # machinery reads files only under the library roots)
                if _type(key) is _str and key == "path_hooks" \
                        and _type(value) is _list:
                    import_lists.append((key, value, _tuple(value)))
                if _type(key) is _str and key == "path" and _type(value) is _list:
                    for entry in value:
                        if _type(entry) is _str and entry.startswith("/") \
                                and not entry.startswith("/tmp"):
                            library_roots.append(entry)

        def same_items(now, then):
            if _len(now) != _len(then):
                return False
            i = 0
            for item in now:
                if item is not then[i]:
                    return False
                i += 1
            return True

        def machinery_change():
            """What differs from boot (a short description), or None."""
            for d, keys, values in machinery:
                if _len(d) != _len(keys):
                    return "names were added to or removed from a module's globals"
                if not same_items(_tuple(_dict_values(d)), values):
                    return "a module global was replaced"
                if not same_items(_tuple(d), keys):
                    return "a module global was renamed"
            seen = 0
            for key, value in _dict_items(_sys_dict):
                if _type(key) is not _str:
                    return "sys has a key that is not a str"
                for name, lst, items in import_lists:
                    if key == name:
                        if value is not lst or not same_items(_tuple(lst), items):
                            return "sys." + name + " was changed"
                        seen += 1
            return None if seen == _len(import_lists) else "sys lost one of its import lists"

        def require_machinery():
            change = machinery_change()
            if change is not None:
                raise _PermissionError(
                    "the import machinery was modified (" + change + "): imports that load "
                    "code are refused until the agent is reset")

        def is_pinned(kind, frame):
            for code in pinned[kind]:
                if frame.f_code is code:
                    return True
            return False

        def called_from(kind, frame):
            """Whether `frame` (the caller of marshal.loads, compile or exec) is one of the
            machinery's own calls of it, directly or through importlib's trampoline."""
            if is_pinned(kind, frame):
                return True
            if is_pinned("trampoline", frame) and frame.f_back is not None:
                return is_pinned(kind, frame.f_back)
            return False

        def package_paths_intact(absname):
            """Whether each loaded package above `absname` still searches only its own
            directory: a `__path__` pointed elsewhere would load another module (say the
            stdlib's subprocess) under an allowed name."""
            parent = absname.rpartition(".")[0]
            while parent:
                mod = module_named(parent)
                if mod is not absent and mod is not None:
                    if _type(mod) is not _ModuleType:
                        return False
                    path = None
                    for key, value in _dict_items(mod.__dict__):
                        if _type(key) is _str and key == "__path__":
                            path = value
                    if namespace_path and _type(path) is namespace_path[0]:
                        # a namespace package: its directories are attributes of an object
                        # whose class the agent can change (reading them could run the
                        # agent's __getattribute__ in here). Left alone: what loads under
                        # it is the runtime's own code for the name asked anyway
                        path = None
                    suffix = "/" + parent.replace(".", "/")
                    if path is not None:
                        if _type(path) is not _list and _type(path) is not _tuple:
                            return False
                        for entry in path:
                            if _type(entry) is not _str or not entry.endswith(suffix):
                                return False
                parent = parent.rpartition(".")[0]
            return True

        def machinery_frame(code):
            fn = code.co_filename
            return _type(fn) is _str and (fn.startswith("<frozen importlib._bootstrap")
                                          or fn == "<frozen zipimport>")

        def role_of(code):
            entry = _role(_id(code))
            if entry is not None and entry[0] is code:
                return entry[1]
            return None

        def is_trusted(code):
            return _trusted(_id(code)) is code

        def library_file(code):
            fn = code.co_filename
            return _type(fn) is _str and (not fn.startswith("<") or fn.startswith("<frozen"))

        def granting_guard(frame):
            """The guard frame whose granted import `frame` runs for, with nothing but
            library and runner frames between them; or None. The guard must be inside one
            of its calls of the real import (not, say, reading the agent's fromlist,
            whose iterator could be made of C callables that import by themselves)."""
            f = frame
            while f is not None:
                code = f.f_code
                if code is impl_code:
                    return f if f.f_lasti in _import_calls else None
                if not (library_file(code) or is_trusted(code)):
                    return None  # agent code in between: no privileges for it
                f = f.f_back
            return None

        def in_granted_import(frame):
            return granting_guard(frame) is not None

        # what each guard frame was granted last (id(frame) -> (name, mode)) and what each
        # call of the runner's _find_and_load is loading (id(frame) -> name); a frame on the
        # stack has written its own entry before anything can depend on it
        grants = {}
        loads = {}

        def loading_name(frame):
            """The module the innermost _find_and_load above `frame` is loading, or None."""
            f = frame
            while f is not None:
                if f.f_code is load_code:
                    return loads.get(_id(f))
                f = f.f_back
            return None

        def not_genuine(data, frame):
            """None when `data` (bytes the machinery unmarshals or compiles) is the
            runtime's own file of the module being loaded; else what is wrong."""
            if _type(data) is not _bytes:
                return "not bytes"
            if not code_names:
                digests = a2b_base64(code_index[0])
                i = 0
                for name in code_index[1].split("\n"):
                    code_names[digests[i:i + 16]] = name
                    i += 16
            name = _dict_get(code_names, _blake2b(data, digest_size=16).digest())
            loading = loading_name(frame)
            if name is not None and name == loading:
                return None
            return ("code that is not the runtime's own" if name is None else
                    "the code of " + name) + " for " + (
                        loading if _type(loading) is _str else "no module")

        def module_code_of(code, name):
            """Whether `code` is the top-level code of module `name`'s own file."""
            if code.co_name != "<module>" or _type(name) is not _str:
                return False
            fn = code.co_filename
            if _type(fn) is not _str:
                return False
            rel = "/" + name.replace(".", "/")
            return (fn == "<frozen " + name + ">" or fn.endswith(rel + ".py")
                    or fn.endswith(rel + "/__init__.py"))

        def may_load(name, grant):
            """Whether a granted import of grant[0] may load module `name`: the module
            itself, a package above it, or (for a library's own import statement) a
            submodule its `from ... import` names."""
            absname, mode = grant[0], grant[1]
            if name == absname or absname.startswith(name + "."):
                return True
            return mode == "raw" and name.rpartition(".")[0] == absname

        absent = object()

        def module_named(name):
            """sys.modules[name], or `absent`. The table is walked, not looked up: a lookup
            would compare the keys, and the agent may have planted one with its own __eq__."""
            for key, value in _dict_items(_modules):
                if _type(key) is _str and key == name:
                    return value
            return absent

        def is_loaded(name):
            return module_named(name) is not absent

        def allowed_top(top):
            """Whether the allow-list names ``top`` or one of its submodules."""
            if top in allowed:
                return True
            for a in allowed:
                if a.startswith(top + "."):
                    return True
            return False

        def allowed_name(name):
            # (`prefixes` is a tuple: one startswith call tries them all)
            return name in allowed or name.startswith(prefixes)

        def read_exact(n):
            chunks = []
            got = 0
            while got < n:
                b = _read(0, n - got)
                if not b:
                    return None
                chunks.append(b)
                got += _len(b)
            return b"".join(chunks)

        reactor_state = []  # (the reactor module's dict, its items at boot)
        reactor_functions = []  # (function, its code, defaults and kwdefaults at boot)
        stream_attrs = []  # (a runner stream object, its instance attributes at boot)
        # (a dict put back at the start of each call, a private copy of it at boot):
        # builtins' globals and the runner's stream objects' own attributes
        boot_dicts = []

        def reset_dict(d, items, box):
            """Make `d` hold exactly `items` again; what it held goes into `box` (keys too:
            nothing of the agent's is dropped, or compared, in here)."""
            for key, value in _dict_items(d):
                box.append(key)
                box.append(value)
            d.clear()
            for key, value in items:
                d[key] = value

        def reset_reactor(box):
            """Put the reactor's module globals back as boot left them, at the end of each
            turn: the code that ends a turn (after the answer, before the host images the
            interpreter) then runs nothing of the agent's. Everything replaced (keys too) goes
            into `box`, which the runner keeps until the next call: no finalizer runs here,
            nor in the turn's tail."""
            for d, items in reactor_state:
                reset_dict(d, items, box)
            for fn, code, defaults, kwdefaults in reactor_functions:
                box.append(fn.__code__)
                box.append(fn.__defaults__)
                box.append(fn.__kwdefaults__)
                fn.__code__ = code
                fn.__defaults__ = defaults
                fn.__kwdefaults__ = kwdefaults
            for obj, items in stream_attrs:
                reset_dict(obj.__dict__, items, box)
            if _type(_sys_module) is not _ModuleType:
                # (a subclass's __getattribute__ would run at the turn's `sys.stdout`)
                box.append(_type(_sys_module))
                _set_class(_sys_module, _ModuleType)

        def repair(box):
            """At the start of each call: put back what the runner and the libraries need,
            whatever the agent did to it in an earlier call: builtins' globals (the
            import machinery's pins, and library code, depend on them; displaying a value
            sets builtins._), and the runner's stream objects' own attributes (an
            instance `write` shadows the method). What is replaced goes into `box`. (A
            closed or detached stream is put back by the runner: see repair_streams.)"""
            for d, boot, items in boot_dicts:
                if _len(d) == _len(items) and _len(items) <= 4:
                    # (a stream's few attributes: compared by identity, in order)
                    same = True
                    i = 0
                    for key, value in _dict_items(d):
                        if key is not items[i][0] or value is not items[i][1]:
                            same = False
                            break
                        i += 1
                    if same:
                        continue
                # (in C, and cheaper than comparing builtins: what `d` held is kept alive
                # in `box`, so its clearing runs no finalizer, and the copy it gets back
                # holds only the exact str keys of boot, so refilling it compares nothing)
                box.append(_list(d))
                box.append(_list(_dict_values(d)))
                d.clear()
                _dict_update(d, boot)

        def restore_streams(box):
            """Give sys back the runner's stdout/stderr (and no stdin), when every key of
            sys's dict is an exact str: then looking keys up compares nothing the agent
            wrote. The objects replaced go into ``box``, for the caller to drop: no
            finalizer of the agent's runs in here."""
            for key in _dict_iter(_sys_dict):
                if _type(key) is not _str:
                    return
            for key, value in (("stdout", streams[0]), ("stderr", streams[1]),
                               ("stdin", None)):
                box.append(_dict_get(_sys_dict, key))
                _sys_dict[key] = value

        def uses_name(code, name):
            """Whether the bytecode of `code` uses the global or attribute `name`."""
            for n in code.co_names:
                if _type(n) is _str and n == name:
                    return True
            return False

        def names_constant(code, name):
            """Whether `name` is one of the string constants of `code` (in tuples too)."""
            stack = [code.co_consts]
            while stack:
                for c in stack.pop():
                    t = _type(c)
                    if t is _str and c == name:
                        return True
                    if t is _tuple or t is _frozenset:
                        stack.append(c)
            return False

        def module_of(code):
            """The module whose file holds library code `code` (from its file name), or None."""
            fn = code.co_filename
            if _type(fn) is not _str:
                return None
            if fn.startswith("<frozen ") and fn.endswith(">"):
                return fn[8:-1]
            for root in library_roots:
                if fn.startswith(root + "/"):
                    rel = fn[_len(root) + 1:]
                    if rel.endswith(".py"):
                        rel = rel[:-3]
                    elif rel.endswith(".pyc"):
                        rel = rel[:-4]
                    else:
                        return None
                    if rel.endswith("/__init__"):
                        rel = rel[:-9]
                    return rel.replace("/", ".")
            return None

        def interpreter_statement(requester, code, absname):
            """Whether an import statement in library `code` (run by `requester`) must not
            load `absname`: the code belongs to a module the interpreter loaded for itself
            (before the agent's imports: importlib's machinery, site's help, os on the
            scientific runtime) that the allow-list does not name, it runs outside any
            granted import, and `absname` is not loaded yet. Such modules are reachable by
            an object walk whatever the allow-list says, so their statements would import
            for the agent (PathFinder.find_distributions() loaded importlib.metadata, and
            os, shutil, zipfile... with it; help() pydoc and subprocess). Libraries the
            agent imported keep their own statements (the allow-list admits them)."""
            if state[0] or absname in implicit_names:
                return False
            mod = module_of(code)
            if mod is None or mod not in interpreter_modules or allowed_name(mod):
                return False
            return not is_loaded(absname) and not in_granted_import(requester)

        def fromlist_child(requester, absname):
            """Whether `absname` is a submodule of what the guard granting the import under
            way (with `requester` in it) was asked for."""
            guard_frame = granting_guard(requester)
            if guard_frame is None:
                return False
            grant = grants.get(_id(guard_frame))
            return grant is not None and absname.rpartition(".")[0] == grant[0]

        def own_import(requester, code, absname, fromlist):
            """Whether library code asking for `absname` (by a call, during a granted
            import) imports for itself: C code of a built-in module being initialised
            (numpy importing datetime, through the runner's loader); library code importing
            a name its own code spells out (pandas: `for dependency in ("numpy",
            "dateutil"): __import__(dependency)`; matplotlib's _check_versions). Not library
            code importing a name it was handed: a chain of C callables (or a property) the agent
            planted in the machinery's path can call one and hand it any name
            (warnings._getcategory('subprocess.X'), linecache loading a "source" through a
            loader whose get_source is importlib.import_module). Modules that libraries
            import that way while they are imported are loaded at boot (the host's
            "preload" list), and then count as loaded."""
            if role_of(code) in ("builtin", "guard"):
                return True
            lasti = requester.f_lasti
            raw = code.co_code
            if 0 <= lasti < _len(raw) and raw[lasti] in reify_ops:
                # a Python 3.15 lazy import taking effect where the code first uses the
                # name it bound (`lazy import glob` ... `glob.x`; `lazy from glob import
                # f` ... `f()`): the name used at this very instruction
                if uses_name(code, absname.rpartition(".")[2]):
                    return True
                for item in fromlist:
                    if uses_name(code, item):
                        return True
                return False
            return names_constant(code, absname)

        # grants made in the current call, for the reply's import trace: (module name,
        # the rule that granted it, or None where the guard refused); at most this many
        trace = []
        TRACE_MAX = 256

        def give(frame, box, absname, mode, rule):
            """Grant guard `frame` the real import of `absname`, called as `mode`
            ("raw": a library's own import, as asked; "policy": the agent's import, as
            the guard shapes it; "implicit": loaded for C code, answered with a stand-in),
            because of grant rule `rule`."""
            grants[_id(frame)] = (absname, mode, rule)
            if _len(trace) < TRACE_MAX:
                trace.append((absname, rule))
            box.append(real_import)
            box.append(mode)

        # ------------------------------------------------------------ grant rules
        # Each import the guard is asked for is decided by the first of these rules whose
        # test holds (`a` holds the request's facts: see grant); none holding means refused.
        # A rule names its mode (see give) and whether the packages above the module must
        # still have their own __path__ (the agent could point one elsewhere).
        def library_statement(a):
            # a library's own import statement: the name is the one in its code, and a
            # relative one stays inside the file's own package
            if not (a["library"] and a["statement"]) or interpreter_statement(
                    a["requester"], a["code"], a["absname"]):
                return False
            code = a["code"]
            raw = code.co_code
            lasti = a["lasti"]
            oparg = raw[lasti + 1]
            if lasti >= 2 and raw[lasti - 2] == _EXTENDED_ARG:
                oparg |= raw[lasti - 1] << 8
            oparg >>= _IMPORT_SHIFT
            names_ = code.co_names
            stmt_name = names_[oparg] if oparg < _len(names_) else None
            fn = code.co_filename
            absname = a["absname"]
            top = a["top"]
            return (_type(stmt_name) is _str and stmt_name == a["name"]
                    and (absname == a["name"] or ("/" + top + "/") in fn
                         or fn.startswith("<frozen " + top)))

        def on_allow_list(a):
            return allowed_name(a["absname"])

        def implicit_for_c(a):
            # an import CPython's C code makes for the caller (time.strptime loading
            # _strptime): C calls __import__ for its side effect and then reads
            # sys.modules, and the agent's own __import__ call looks the same from here,
            # so the module is loaded but the guard answers with a stand-in
            return not a["statement"] and (a["absname"] in implicit_names
                                           or a["top"] in implicit_names)

        def allowed_children(a):
            # `from a import b` under an entry `a.b`
            if not a["children"]:
                return False
            for child in a["children"]:
                if not allowed_name(a["absname"] + "." + child):
                    return False
            return True

        def package_own_submodule(a):
            # a package importing its own submodule by name at run time: matplotlib
            # loading its backend, or (Python 3.15) a lazy import of the package's own
            # module taking effect where the name is first used
            top = a["top"]
            return (a["library"] and not a["statement"]
                    and ("/" + top + "/") in a["code"].co_filename
                    and (allowed_top(top) or is_loaded(top)))

        def library_gets_loaded(a):
            # library code at run time asking, by name, for a module that is loaded
            # already (C code of a package getting `os`, say): it gains nothing new
            return a["library"] and not a["statement"] and is_loaded(a["absname"])

        def machinery_fromlist(a):
            # the machinery's own `from package import submodule` (Python 3.15 calls
            # __import__ for it): a submodule of the package the granted import named
            return (is_pinned("fromlist", a["requester"])
                    and fromlist_child(a["requester"], a["absname"]))

        def library_own_import(a):
            # an import a library makes for itself while a granted import runs (see
            # own_import)
            return (a["library"] and in_granted_import(a["requester"])
                    and own_import(a["requester"], a["code"], a["absname"], a["fromlist"]))

        # (name, test, mode, check the packages' __path__)
        grant_rules = (
            ("library import statement", library_statement, "raw", False),
            ("allow-list", on_allow_list, "policy", True),
            ("import by C for the caller", implicit_for_c, "implicit", True),
            ("allowed submodules of a from-import", allowed_children, "policy", True),
            ("package's own submodule", package_own_submodule, "raw", False),
            ("library asking for a loaded module", library_gets_loaded, "raw", False),
            ("machinery's from-import", machinery_fromlist, "raw", False),
            ("library's own import during an import", library_own_import, "raw", False),
        )

        # ------------------------------------------------------- requests, by role
        # Each trusted runner function has a role (see `roles` at boot); a request names
        # an operation; `handlers` maps (role, operation) to the function that answers.
        def main_read(frame, op, box, req):
            header = read_exact(8)
            if header is None or header[:4] != b"WXQ1":
                box.append(None)
                return
            box.append(read_exact(_int.from_bytes(header[4:8], "little")))
            repair(box)
            restore_streams(box)
            grants.clear()  # (between calls no import is under way)
            loads.clear()
            trace.clear()

        def main_reply(frame, op, box, req):
            payload = req[2] if _len(req) > 2 else None
            if _type(payload) is not _bytes:
                raise _PermissionError("bad reply")
            # one write: the host takes a single fd_write on fd 1 that starts with the
            # magic and the session token as the reply
            _write(1, _header + _len(payload).to_bytes(4, "little") + payload)

        def main_restore(frame, op, box, req):
            restore_streams(box)

        def main_reactor_reset(frame, op, box, req):
            reset_reactor(box)
            restore_streams(box)

        def main_boot_done(frame, op, box, req):
            snapshot_machinery()
            for key, mod in _dict_items(_modules):
                if _type(key) is _str and key == "_reactor":
                    d = mod.__dict__
                    reactor_state.append((d, _tuple(_dict_items(d))))
                    for value in _dict_values(d):
                        if _type(value) is _FunctionType:
                            reactor_functions.append((
                                value, value.__code__, value.__defaults__,
                                value.__kwdefaults__))
                if _type(key) is _str and key == "builtins":
                    d = mod.__dict__
                    boot_dicts.append((d, _dict_copy(d), _tuple(_dict_items(d))))
            # the runner's streams, their buffers and files: their own attributes (an
            # instance `flush` would shadow the method) and their settings
            for stream in streams:
                for obj in (stream, stream.buffer, stream.buffer.raw):
                    d = obj.__dict__
                    stream_attrs.append((obj, _tuple(_dict_items(d))))
                    boot_dicts.append((d, _dict_copy(d), _tuple(_dict_items(d))))
            grants.clear()
            loads.clear()
            trace.clear()
            state[0] = False

        def main_collect(frame, op, box, req):
            # which generations are due, as the automatic collector would decide
            counts = _get_count()
            generation = 0 if counts[0] >= 100 else -1  # young objects to look at
            for g in (1, 2):
                if counts[g] >= _thresholds[g]:
                    generation = g
            if _len(req) > 2 and req[2] is True:
                generation = 2
            if generation >= 0:
                box.append(generation)
                box.append(_collect)

        def main_imports(frame, op, box, req):
            # the grants (and refusals) of this call so far, oldest first
            for item in trace:
                box.append(item)

        def reseed_generators_of(frame, op, box, req):
            # the random generators of the modules the code has loaded (reseeded after
            # the interpreter was restored from an image)
            for name in ("random", "numpy.random"):
                found = module_named(name)
                box.append(None if found is absent else found)

        def figures_pyplot(frame, op, box, req):
            # matplotlib.pyplot, if the code has loaded it
            found = module_named("matplotlib.pyplot")
            box.append(None if found is absent else found)

        def guard_grant(frame, op, box, req):
            # req: ("grant", box, T, absname, name, children, fromlist)
            if _len(req) != 7 or req[2] is not guard_T:
                raise _PermissionError("not allowed")
            entry = frame.f_back
            if entry is None or role_of(entry.f_code) != "entry":
                raise _PermissionError("not allowed")
            requester = entry.f_back
            absname = req[3]
            name = req[4]
            children = req[5]
            fromlist = req[6]
            if (_type(absname) is not _str or _type(name) is not _str
                    or _type(children) is not _tuple or _type(fromlist) is not _tuple
                    or requester is None):
                raise _PermissionError("bad request")
            for child in children + fromlist:
                if _type(child) is not _str:
                    raise _PermissionError("bad request")
            code = requester.f_code
            lasti = requester.f_lasti
            raw = code.co_code
            statement = 0 <= lasti < _len(raw) - 1 and raw[lasti] == _IMPORT_NAME
            # C code of a built-in module being loaded (through the runner's loader
            # wrapper) imports on behalf of the library code that asked for it (or of the
            # real import a guard called, when no Python frame came between)
            library = library_file(code) or role_of(code) in ("builtin", "guard")
            facts = {"absname": absname, "name": name, "top": absname.partition(".")[0],
                     "children": children, "fromlist": fromlist, "requester": requester,
                     "code": code, "lasti": lasti, "statement": statement,
                     "library": library}
            for rule, test, mode, check_paths in grant_rules:
                if test(facts):
                    if check_paths and not package_paths_intact(absname):
                        raise _PermissionError(
                            "Import of '" + absname + "' refused: the __path__ of a package "
                            "it belongs to was changed to point outside the package")
                    give(frame, box, absname, mode, rule)
                    return
            if _len(trace) < TRACE_MAX:
                trace.append((absname, None))
            # refused: the guard raises ImportError

        def lazy_allowed(frame, op, box, req):
            stmt = frame.f_back  # the frame running the `lazy import` statement
            ok = False
            if stmt is not None and library_file(stmt.f_code):
                raw = stmt.f_code.co_code
                lasti = stmt.f_lasti
                ok = 0 <= lasti < _len(raw) and raw[lasti] == _IMPORT_NAME
            box.append(ok)

        def load_module(frame, op, box, req):
            # req: ("load", box, name): the runner's _find_and_load is about to load
            # `name`. Inside a granted import it may load only what was granted (a C
            # callable the agent planted in the machinery's path could ask for anything)
            if _len(req) != 3 or _type(req[2]) is not _str:
                raise _PermissionError("bad request")
            name = req[2]
            caller = frame.f_back
            if not state[0] and caller is not None:
                guard_frame = granting_guard(caller)
                # inside a granted import only what it was granted, whoever calls: the
                # one exception is C code of a built-in module being initialised (a
                # Cython module importing by name without the guard; the frame below is
                # then the runner's built-in loader)
                if guard_frame is not None and role_of(caller.f_code) != "builtin":
                    grant = grants.get(_id(guard_frame))
                    if grant is None or not may_load(name, grant):
                        raise _ModuleNotFoundError(
                            "Import of '" + name + "' is not allowed here (the import "
                            "under way may load only the module it names)", name=name)
            loads[_id(frame)] = name
            box.append(real_find_and_load)

        def builtin_loader(frame, op, box, req):
            # req: ("create", box, name, B) | ("exec", box, B): only inside a granted
            # import, never the modules the runner keeps for itself, and only with the
            # runner's own tool tuple B (the agent can rebind the method over another)
            if op == "create":
                if _len(req) != 4 or req[3] is not builtin_B:
                    raise _PermissionError("not allowed")
                name = req[2]
                if _type(name) is not _str or name in reserved_builtins:
                    raise _PermissionError("loading that built-in module is not allowed")
                if not state[0] and name != loading_name(frame.f_back):
                    raise _PermissionError(
                        "a built-in module may be created only by the import of its name")
            elif _len(req) != 3 or req[2] is not builtin_B:
                raise _PermissionError("not allowed")
            if not (state[0] or in_granted_import(frame.f_back)):
                raise _PermissionError(
                    "loading built-in modules outside an import is not allowed")
            box.append(create_builtin if op == "create" else exec_builtin)

        def tool_call_host(frame, op, box, req):
            # req: ("tool", box, request): one tool call through the host's door. What it
            # grants is what the host grants any agent: the host checks the tool's name,
            # the arguments (JSON) and the limits of the call running now
            if _len(req) != 3 or _type(req[2]) is not _bytes:
                raise _PermissionError("bad request")
            try:
                answer = _host_call(req[2])
            except _BaseException:
                answer = None  # refused, or its answer did not fit in memory
            box.append(answer if _type(answer) is _bytes else None)

        handlers = {
            ("tool", "tool"): tool_call_host,
            ("main", "read"): main_read,
            ("main", "reply"): main_reply,
            ("main", "restore"): main_restore,
            ("main", "reactor_reset"): main_reactor_reset,
            ("main", "boot_done"): main_boot_done,
            ("main", "collect"): main_collect,
            ("main", "imports"): main_imports,
            ("reseed", "generators"): reseed_generators_of,
            ("figures", "pyplot"): figures_pyplot,
            ("guard", "grant"): guard_grant,
            ("lazy", "lazy"): lazy_allowed,
            ("load", "load"): load_module,
            ("builtin", "create"): builtin_loader,
            ("builtin", "exec"): builtin_loader,
        }

        def serve(frame, role, req):
            """A trusted runner function asked for something; `req` says what: (operation,
            answer list, arguments...). The role comes from the asking code's identity; the
            operation and the list are checked to be exactly a str and a list."""
            if _type(req) is not _tuple or _len(req) < 2:
                raise _PermissionError("bad request")
            op = req[0]
            box = req[1]
            if _type(op) is not _str or _type(box) is not _list:
                raise _PermissionError("bad request")
            handler = _dict_get(handlers, (role, op))
            if handler is None:
                raise _PermissionError("not allowed")
            handler(frame, op, box, req)

        def check(event, args):
            if event == "object.__setattr__" and _len(args) == 3 and args[0] is REQUEST:
                if args[2] is None:
                    return  # clearing the request slot
                frame = _gf(2)  # 0: check, 1: hook, 2: the frame that assigned
                role = role_of(frame.f_code)
                # ... and only by its own `REQUEST.__defaults__ = ...` instructions: a
                # chain of C callables (a weakref callback, say) set off while a role's
                # frame runs something else adds no frame of its own
                sites = _sites(_id(frame.f_code))
                if role is None or sites is None or frame.f_lasti not in sites:
                    raise _PermissionError("not allowed")
                serve(frame, role, args[2])
                return
            if state[0]:
                return  # booting: nothing of the agent exists yet
            if event == "object.__getattr__":
                if _len(args) != 2 or _type(args[1]) is not _str:
                    return
                if args[1] in code_attrs:
                    obj = args[0]
                    t = _type(obj)
                    code = None
                    if t is _FunctionType:
                        code = obj.__code__
                    elif t is _FrameType:
                        code = obj.f_code
                    if code is not None and is_trusted(code) and not is_trusted(_gf(2).f_code):
                        raise _PermissionError("the sandbox runner's code is not accessible")
                return
            if event in always_deny:
                raise _PermissionError(event + " is not available in the sandbox")
            if event == "object.__setattr__" or event == "object.__delattr__":
                obj = args[0] if _len(args) else None
                if _type(obj) is _FunctionType and is_trusted(obj.__code__):
                    raise _PermissionError("the sandbox runner's functions are read-only")
                return
            if event == "compile":
                fn = args[1] if _len(args) > 1 else None
                if _type(fn) is _str:
                    if fn.startswith("<") and not fn.startswith("<frozen") and fn != _RUNNER_FILE:
                        return
                elif fn is None:
                    return
                if not in_granted_import(_gf(2)) or not called_from("compile", _gf(2)):
                    raise _PermissionError(
                        "compile() with a file name that is not '<...>' is not allowed")
                require_machinery()
                wrong = not_genuine(args[0], _gf(2))
                if wrong is not None:
                    raise _PermissionError(
                        "the import machinery may compile only the library's own source of "
                        "the module being imported (got " + wrong + ")")
                return
            if event == "exec":
                code = args[0] if _len(args) else None
                if _type(code) is _CodeType and library_file(code) \
                        and not in_granted_import(_gf(2)):
                    raise _PermissionError(
                        "running library module code outside an import is not allowed")
                if _type(code) is _CodeType and library_file(code):
                    if not called_from("exec", _gf(2)):
                        raise _PermissionError(
                            "running library module code outside an import is not allowed")
                    require_machinery()
                    if not module_code_of(code, loading_name(_gf(2))):
                        raise _PermissionError(
                            "an import may run only the code of the module it loads")
                return
            if event == "marshal.loads" or event == "marshal.load":
                frame = _gf(2)
                if not in_granted_import(frame):
                    raise _PermissionError("marshal is not available in the sandbox")
                if called_from("marshal_frozen", frame):
                    # a frozen module's code, fetched by its name (bound to the module
                    # loaded when it runs: see "exec")
                    require_machinery()
                    return
                if not called_from("marshal", frame):
                    raise _PermissionError("marshal is not available in the sandbox")
                require_machinery()
                # the bytes come through functions the agent could have swapped for one
                # call (and back): only the runtime's own .pyc of the module being loaded
                wrong = not_genuine(args[0], frame) if _len(args) == 1 else "bad arguments"
                if wrong is not None:
                    raise _PermissionError(
                        "the import machinery may load only the library's own compiled code "
                        "of the module being imported (got " + wrong + ")")
                return
            if event == "open":
                if _len(args) and _type(args[0]) is _int:
                    if ((args[0] == 1 or args[0] == 2) and _len(args) > 1
                            and _type(args[1]) is _str and args[1] == "wb"
                            and role_of(_gf(2).f_code) == "streams"):
                        return  # the runner putting its own stdout/stderr back in order
                    raise _PermissionError(
                        "opening file descriptors is not allowed in the sandbox")
                if _len(args) and machinery_frame(_gf(2).f_code):
                    # the import machinery reads code only from where the library lives
                    path = args[0]
                    ok = False
                    if _type(path) is _str:
                        for root in library_roots:
                            if path == root or path.startswith(root + "/"):
                                ok = True
                    if not ok:
                        raise _PermissionError(
                            "importing code from outside the library is not allowed")
                return
            if event == "pickle.find_class":
                if _len(args) != 2:
                    raise _PermissionError("unpickling: bad global")
                mod, attr = args
                if _type(mod) is not _str or _type(attr) is not _str:
                    raise _PermissionError("unpickling: bad global")
                if mod == "builtins":
                    ok = attr in builtin_types  # classes only: never __import__ or eval
                elif mod == "copyreg":
                    ok = attr in ("_reconstructor", "__newobj__", "__newobj_ex__")
                else:
                    ok = mod == "__main__" or allowed_name(mod)
                if not ok:
                    raise _PermissionError(
                        "unpickling " + mod + "." + attr + " is not allowed in the sandbox")
                return

        def hook(event, args, _str=str, _tuple=tuple, _type=type,
                 _BaseException=BaseException):
            # sys.audit lets anyone raise any event with any arguments: only exact str
            # events and exact tuples are looked at, and nothing the agent made is hashed.
            # An exception leaving here carries this frame in its traceback, and the agent
            # can read a finished frame's variables: so `state` and `check` are constants of
            # this code (bound below; the code of the runner's frames is refused to agent
            # code), not variables, and what check() raised leaves without its traceback
            # (whose frames hold the hook's closures) and without a context in here.
            # (no call and no allocation where a failure would leave the hook half done: a
            # RecursionError or MemoryError raised in the except clause would carry the
            # first exception, traceback and all, as its context; one in the finally
            # clause would leave the hook switched off)
            st = "<hook state>"  # (a variable only until an exception could leave here)
            if st[1] or _type(event) is not _str or _type(args) is not _tuple:
                return
            st[1] = True  # events raised by the hook's own work pass straight through
            failed = None
            try:
                ["<hook check>"][0](event, args)
            except _BaseException as e:
                failed = e
            finally:
                st[1] = False
            del st
            if failed is not None:
                failed.__traceback__ = None
                raise failed

        hook.__code__ = hook.__code__.replace(co_consts=_tuple(
            state if _type(c) is _str and c == "<hook state>" else
            check if _type(c) is _str and c == "<hook check>" else c
            for c in hook.__code__.co_consts))
        # The hook's own functions are the runner's: an exception the hook raises carries
        # the frames of hook, check, serve... in its traceback, and their locals (free
        # variables too, on 3.12) are the hook's closures. Their frames and code are
        # refused to agent code like the runner's (tb_frame and f_code are audited).
        for value in _tuple(_dict_values(locals())):
            if _type(value) is _FunctionType and ".install_hook.<locals>." in \
                    value.__code__.co_qualname:
                trusted_codes[_id(value.__code__)] = value.__code__
        sys.addaudithook(hook)

    # ------------------------------------------------------------------ the guard
    allowed = frozenset(init["allowed"])
    prefixes = tuple(a + "." for a in sorted(allowed))
    # modules CPython's C code imports on the caller's behalf (never by a statement)
    implicit = frozenset(init.get("implicit", ()))

    # The guard's steps, in the order guard_impl takes them. Each is a constant of
    # guard_impl's code, bound at boot (see "arm the hook") like the request slot: no
    # variable and no field of T holds one, so agent code can neither reach a step nor
    # swap one for its own. A step takes what it uses as arguments and defaults (no cell,
    # no global name), asks the hook for nothing and loads nothing: the guard's requests
    # and its calls of the real import stay in guard_impl, whose frame the hook checks.
    def guard_arguments(name, fromlist, level, type_=type, str_=str, int_=int, list_=list,
                        tuple_=tuple, isinstance_=isinstance, TypeError_=TypeError):
        """The import's name, fromlist and level as an exact str, a tuple of exact str and
        an exact int. The fromlist is read first: it may be an iterable the agent wrote,
        and no code of the agent's may run in the guard's frame once the decisions are
        being made (on Python 3.13+ such code could rewrite that frame's variables)."""
        items = list_()
        if fromlist is not None:
            for item in fromlist:
                if type_(item) is not str_:
                    if not isinstance_(item, str_):
                        raise TypeError_("fromlist items must be str")
                    item = str_.__str__(item)
                items.append(item)
        fl = tuple_(items)
        if type_(name) is not str_:
            if not isinstance_(name, str_):
                raise TypeError_("module name must be str")
            name = str_.__str__(name)
        if type_(level) is not int_:
            if not isinstance_(level, int_):
                raise TypeError_("level must be an int")
            level = int_.__index__(level)
        return name, fl, level

    def guard_relative_name(name, globals, level, type_=type, str_=str, dict_=dict, len_=len,
                            ImportError_=ImportError):
        """The absolute name of a relative import (`level` dots, then `name`), from the
        package the importing module's globals name."""
        package = None
        if type_(globals) is dict_:
            # read by iterating: a lookup would compare keys, and a key the agent
            # planted could run its own __eq__ here
            pkg = modname = None
            has_path = False
            for key, value in dict_.items(globals):
                if type_(key) is str_:
                    if key == "__package__":
                        pkg = value
                    elif key == "__name__":
                        modname = value
                    elif key == "__path__":
                        has_path = True
            if type_(pkg) is str_ and pkg:
                package = pkg
            elif pkg is None and type_(modname) is str_:
                package = modname if has_path else modname.rpartition(".")[0]
        if not package:
            raise ImportError_("attempted relative import with no known parent package")
        bits = package.rsplit(".", level - 1)
        if len_(bits) < level:
            raise ImportError_("attempted relative import beyond top-level package")
        return bits[0] + "." + name if name else bits[0]

    def guard_verdicts(absname, top_name, fl, statement, library, level, filename,
                       allowed_set=allowed, prefixes=prefixes, implicit_set=implicit,
                       list_=list, tuple_=tuple, len_=len, range_=range, ImportError_=ImportError):
        """What the guard expects of the import of `absname` (the hook decides; this only
        shapes the answer): whether the module may be imported whole, the fromlist's
        names allowed one by one (a tuple), and the first name refused (or None). Refuses
        gc itself."""
        if top_name == "gc" and not (library and statement):
            # the runner alone drives the garbage collector (see the top of this file);
            # library code that imports gc gets the runner's inert stand-in
            raise ImportError_("Import of 'gc' is not allowed: the sandbox manages garbage "
                               "collection", name="gc")
        # An import statement in standard-library code imports for the library itself
        # (json importing re). A relative one must stay inside the file's own package.
        _library_statement = library and statement and (
            level == 0 or ("/" + top_name + "/") in filename
            or filename.startswith("<frozen " + top_name))
        names = [absname]
        for item in fl:
            if item != "*" and item[:2] != "__":
                names.append(absname + "." + item)
        verdicts = list_()
        for n in names:
            verdicts.append(n in allowed_set or n.startswith(prefixes))
        _implicit = not statement and (absname in implicit_set or top_name in implicit_set)
        whole = _library_statement or verdicts[0] or _implicit
        children = list_()
        refused = None
        if not whole:
            refused = absname
            if len_(names) > 1 and len_(names) == len_(fl) + 1:
                refused = None
                for i in range_(1, len_(names)):
                    if not verdicts[i]:
                        refused = names[i]
                        break
                    children.append(fl[i - 1])
        return whole, tuple_(children), refused

    def guard_answer(absname, top_name, top, leaf, fl, whole, children, statement,
                     allowed_set=allowed, prefixes=prefixes, implicit_set=implicit,
                     ModuleType_=ModuleType, module_dict_=module_dict, type_=type, str_=str,
                     dict_=dict, list_=list, len_=len, range_=range):
        """What the agent's import of `absname` gives back once its modules are loaded
        (`top`: the top-level package `top_name`; `leaf`: the module itself, when the
        import had a fromlist or names a top-level module): a restricted view where only
        some of it is allowed, the sandbox's view of importlib, or the module."""
        if fl and not whole:
            view = ModuleType_("<restricted " + absname + ">")
            d = module_dict_(view)
            src = module_dict_(leaf)
            for item in children:
                if item in src:
                    d[item] = src[item]
            return view
        if top_name == "importlib":
            # the agent sees importlib's public API only (not _bootstrap & co., whose
            # functions import without the guard); import_module and __import__ are guarded
            src = module_dict_(leaf if fl else top)
            view = ModuleType_("importlib (sandbox view)")
            d = module_dict_(view)
            for key in list_(src):
                if type_(key) is str_ and (not key.startswith("_") or key == "__import__"):
                    d[key] = src[key]
            return view
        if fl:
            return leaf
        ok_first = top_name in allowed_set or (not statement and top_name in implicit_set)
        if ok_first:
            return top
        # `import a.b.c` binds `a`: a stand-in holding only the allowed path
        parts = absname.split(".")
        view = ModuleType_("<restricted " + top_name + ">")
        cur = view
        obj = top
        prefix = top_name
        for i in range_(1, len_(parts)):
            obj = dict_.get(module_dict_(obj), parts[i])
            prefix = prefix + "." + parts[i]
            ok = prefix in allowed_set or prefix.startswith(prefixes)
            if ok or type_(obj) is not ModuleType_:
                module_dict_(cur)[parts[i]] = obj
                break
            nxt = ModuleType_("<restricted " + prefix + ">")
            module_dict_(cur)[parts[i]] = nxt
            cur = nxt
        return view

    def guard_impl(T, name, globals, locals, fromlist, level):
        # T's fields, named (T is built at boot, below: an immutable tuple)
        (allowed_set, _prefixes, _implicit_set, ModuleType_, module_dict_, type_, str_, int_,
         _tuple, _list, _dict, _len, _isinstance, _getattr, sorted_, repr_, ImportError_,
         _TypeError, ValueError_, _range, BaseException_, _request, _impl,
         import_name_op) = T
        # (each ["<guard_...>"][0] is a step: see guard_arguments. The agent's fromlist is
        # read first, there; an import statement without one has nothing to read)
        if fromlist is None and type_(name) is str_ and type_(level) is int_:
            fl = ()
        else:
            name, fl, level = ["<guard_arguments>"][0](name, fromlist, level)
        # who asked: the frame of the import statement or call
        try:
            raise ImportError_
        except BaseException_ as e:
            me = e.__traceback__.tb_frame
        requester = me.f_back.f_back  # 0: guard_impl, 1: entry point, 2: who asked
        del me
        code = requester.f_code
        filename = code.co_filename
        lasti = requester.f_lasti
        statement = lasti >= 0 and code.co_code[lasti] == import_name_op
        library = type_(filename) is str_ and (not filename.startswith("<")
                                               or filename.startswith("<frozen"))
        absname = name
        if level > 0:
            absname = ["<guard_relative_name>"][0](name, globals, level)
        if not absname:
            raise ValueError_("Empty module name")
        top_name = absname.partition(".")[0]
        # (one variable: tests/test_adversarial.py's round-6 finder finds this frame by it)
        verdicts = ["<guard_verdicts>"][0](absname, top_name, fl, statement, library, level,
                                           filename)
        whole, children, refused = verdicts
        # The audit hook decides, from the frames and names themselves (this frame's own
        # conclusions above only shape the answer): it hands back the real import and
        # whether to call it as asked ("raw": a library's own import) or as policed.
        # (nothing is called between making the answer list and asking: see the top)
        box = []
        "<wasm-exec request slot>".__defaults__ = ("grant", box, T, absname, name, children, fl)
        del "<wasm-exec request slot>".__defaults__
        if not box:
            shown = refused if refused is not None else absname
            raise ImportError_("Import of '" + shown + "' is not allowed. Allowed "
                               "imports: " + repr_(sorted_(allowed_set)), name=shown)
        mode = box.pop()
        if mode == "raw":
            return box.pop()(name, globals, locals, fl, level)
        if mode == "implicit":
            box.pop()(absname, None, None, (), 0)
            return ModuleType_(absname + " (loaded for the interpreter's own use; not "
                               "importable by the agent's code)")
        # The agent's import (or an implicit one): the import machinery gets no fromlist, so
        # no module __getattr__ runs while the import is granted; children are read from
        # the modules' own dicts and submodules imported by their full names.
        if fl or "." not in absname:
            # the module itself (a fromlist of "__name__" makes the import machinery return
            # it; every module has that attribute, so no module __getattr__ is consulted)
            leaf = top = box.pop()(absname, None, None, ("__name__",), 0)
        else:
            top = box.pop()(absname, None, None, (), 0)
            leaf = None
        if type_(top) is not ModuleType_:
            raise ImportError_("import of '" + absname + "' did not produce a module")
        if fl:
            wanted = children if not whole else [i for i in fl if i != "*" and i[:2] != "__"]
            for item in wanted:
                if item in module_dict_(leaf):
                    continue
                sub = absname + "." + item
                box = []  # fresh: the import above may have run the agent's code
                "<wasm-exec request slot>".__defaults__ = ("grant", box, T, sub, sub, (), ())
                del "<wasm-exec request slot>".__defaults__
                if box:
                    box.pop()  # the mode: a submodule by its full name is always policed
                    try:
                        box.pop()(sub, None, None, (), 0)
                    except ImportError_:
                        pass
        return ["<guard_answer>"][0](absname, top_name, top, leaf, fl, whole, children,
                                     statement)

    def guard_call(T, name, globals=None, locals=None, fromlist=(), level=0):
        """The sandbox's __import__: applies the import allow-list to agent code."""
        *_fields, impl, _import_name_op = T  # (T's fields: see guard_impl)
        return impl(T, name, globals, locals, fromlist, level)

    def guard_import_module(T, name, package=None):
        """importlib.import_module, routed through the sandbox's import guard."""
        (_allowed, _prefixes, _implicit, _ModuleType, _module_dict, type_, str_, _int,
         _tuple, _list, _dict, _len, _isinstance, _getattr, _sorted, _repr, _ImportError,
         TypeError_, _ValueError, _range, _BaseException, _request, impl,
         _import_name_op) = T  # (T's fields: see guard_impl)
        level = 0
        if type_(name) is str_ and name.startswith("."):
            if not package:
                raise TypeError_("the 'package' argument is required to perform a "
                                 "relative import for " + name)
            for character in name:
                if character != ".":
                    break
                level += 1
            return impl(T, name[level:], {"__package__": package, "__name__": package},
                        None, ("__name__",), level)
        return impl(T, name, None, None, ("__name__",), 0)

    def lazy_filter(importer=None, name=None, fromlist=None, _ImportError=ImportError):
        """Python 3.15's lazy-imports filter: `lazy import` is for library code. In the
        agent's code it is refused: a lazy object of the agent's, planted in a library's
        globals, would take effect in library code (while an import is granted) for a
        module the agent named; and made eager it would import without the guard."""
        box = []
        "<wasm-exec request slot>".__defaults__ = ("lazy", box)
        del "<wasm-exec request slot>".__defaults__
        if box and box.pop() is True:
            return True
        raise _ImportError("lazy imports are not available in the sandbox: use a plain "
                           "import statement")

    def load_named(name, import_, *more, **options):
        """importlib's _find_and_load, through the hook: it records the module about to
        be loaded (what the machinery may unmarshal and run is bound to it) and, inside a
        granted import, refuses a module that import did not name."""
        box = []
        "<wasm-exec request slot>".__defaults__ = ("load", box, name)
        del "<wasm-exec request slot>".__defaults__
        return box.pop()(name, import_, *more, **options)

    def guard_create_builtin(B, spec):
        # B: (REQUEST, SimpleNamespace, str, type, TypeError), named in the request and
        # checked by identity in the hook. The agent's spec is read before anything is
        # taken from B (its code could rewrite this frame's variables). The real loader
        # gets a fresh spec holding only the checked name: what the hook allowed is made.
        name = spec.name
        Spec, str_, type_, TypeError_ = B[1], B[2], B[3], B[4]
        if type_(name) is not str_:
            raise TypeError_("spec.name must be str")
        box = []
        "<wasm-exec request slot>".__defaults__ = ("create", box, name, B)
        del "<wasm-exec request slot>".__defaults__
        return box.pop()(Spec(name=name))

    def guard_exec_builtin(B, module):
        box = []
        "<wasm-exec request slot>".__defaults__ = ("exec", box, B)
        del "<wasm-exec request slot>".__defaults__
        return box.pop()(module)

    # the guard's one argument, an immutable tuple: its users name the fields by unpacking
    # it whole, in this order (guard_impl, guard_call, guard_import_module)
    T = (allowed, prefixes, implicit, ModuleType, module_dict, type, str, int, tuple, list,
         dict, len, isinstance, getattr, sorted, repr, ImportError, TypeError, ValueError,
         range, BaseException, REQUEST, guard_impl, IMPORT_NAME)
    guard = MethodType(guard_call, T)
    guard_import = MethodType(guard_import_module, T)

    # ------------------------------------------------------------- agent's world
    def _gc_nothing(*args, **kwargs):
        return None

    def _gc_false(*args):
        return False

    def _gc_zero():
        return 0

    def _gc_collect(generation=2):
        return 0

    def _gc_counts():
        return (0, 0, 0)

    def _gc_list():
        return []

    def _exit(code=None, _SystemExit=SystemExit):
        raise _SystemExit(code)

    def _unavailable(*args, _RuntimeError=RuntimeError, **kwargs):
        raise _RuntimeError("this function is not available in the sandbox")

    def _sleep(seconds, _sleep=time.sleep):
        """time.sleep, that first hands what the runner's streams hold to the host: the
        host buffers a burst of printing (wasm_exec/streams.py), and a sleep is where
        the agent waits, so what it printed before arrives before the wait."""
        flush_streams()
        _sleep(seconds)

    def _no_input(prompt=None, _EOFError=EOFError):
        raise _EOFError("input() has no stdin to read in the sandbox: pass data in with "
                        "execute(code, globals_dict={...}) (or put it in a file) instead")

    agent_builtins = dict(builtins.__dict__)
    for k in ("__loader__", "__spec__", "breakpoint", "help", "copyright", "credits",
              "license"):
        agent_builtins.pop(k, None)
    agent_builtins["__import__"] = guard
    agent_builtins["exit"] = _exit
    agent_builtins["quit"] = _exit
    agent_builtins["breakpoint"] = _unavailable
    agent_builtins["input"] = _no_input

    class ToolError(Exception):
        """A tool (a function of the host's) failed: the message says how. ``tool`` is the
        tool's name, ``error_type`` the name of what the host function raised."""

    ToolError.__module__ = "builtins"
    ToolError.__qualname__ = "ToolError"
    agent_builtins["ToolError"] = ToolError

    main_module = ModuleType("__main__")
    ns = module_dict(main_module)
    ns.clear()
    ns.update({"__name__": "__main__", "__doc__": None, "__package__": None,
               "__builtins__": agent_builtins})

    stdout = sys.stdout
    stderr = sys.stderr
    # line buffered: what was printed before a limit stopped the call is kept
    for stream in (stdout, stderr):
        stream.reconfigure(line_buffering=True, errors="backslashreplace")
    # (text, buffer, file, fd, encoding, errors, line_buffering) of each, as boot leaves
    # them: a stream the agent broke is put back in this state (see repair_streams)
    stream_parts = tuple((s, s.buffer, s.buffer.raw, s.buffer.raw.fileno(), s.encoding,
                          s.errors, s.line_buffering) for s in (stdout, stderr))
    # the host switches the runner's streams between line and block buffering while a call
    # runs (wasm_exec/streams.py): these probes, of the same type with known settings
    # (line_buffering, write_through), show it where that flag lives; they live as long
    # as the interpreter, so their addresses hold in every image of it
    stream_probes = tuple(_io.TextIOWrapper(_io.BytesIO(), encoding="utf-8",
                                            line_buffering=lb, write_through=wt)
                          for lb, wt in ((True, False), (False, True), (True, True),
                                         (False, False), (True, False)))
    # (held by the functions that send the addresses, so that they outlive the boot)
    stream_info = ([id(stdout), id(stderr)] + [id(p) for p in stream_probes], stream_probes)
    del stream_probes
    _init_file = _io.FileIO.__init__
    _init_buffer = _io.BufferedWriter.__init__
    _init_text = _io.TextIOWrapper.__init__
    _flush_buffer = _io.BufferedWriter.flush

    # the modules the interpreter loaded for itself (reachable by object walks whatever
    # the allow-list says: their import statements load nothing new for the agent)
    interpreter_modules = frozenset(k for k in sys.modules if type(k) is str)

    # modules libraries import by a computed name while they are imported (sysconfig's
    # _sysconfigdata): loaded now, so that such an import finds them loaded (see own_import)
    for modname in init.get("preload", ()):
        try:
            builtins.__import__(modname)
        except BaseException:  # (not in this runtime)
            pass

    # default imports are bound now, before the hook is strict (they are permissions)
    default_errors = {}
    for alias, modname in init.get("default_imports", {}).items():
        try:
            mod = builtins.__import__(modname)
            for part in modname.split(".")[1:]:
                mod = getattr(mod, part)
            ns[alias] = mod
        except BaseException as e:  # reported to the host, which refuses the config
            default_errors[alias] = type(e).__qualname__ + ": " + str(e)

    # ------------------------------------------------------------ running a call
    _tb_of = BaseException.__dict__["__traceback__"].__get__
    _qualname = type.__dict__["__qualname__"].__get__
    _modname = type.__dict__["__module__"].__get__
    _join = "".join
    _str = str
    _type = type
    _len = len
    _isinstance = isinstance
    _compile = compile
    _exec = exec
    _eval = eval
    _repr = repr
    _getattr = getattr
    _bytes_type = bytes
    _make_encoder = _json.make_encoder
    _encode_str = _json.encode_basestring
    _encode_ascii = _json.encode_basestring_ascii
    _UnicodeEncodeError = UnicodeEncodeError
    # the base types' own C functions, to read a subclass instance without its methods
    _issubclass = issubclass
    _dict = dict
    _list = list
    _tuple = tuple
    _int = int
    _float = float
    _bool = bool
    _dict_items = dict.items
    _dict_values = dict.values
    _list_copy = list.copy
    _tuple_item = tuple.__getitem__
    _whole = slice(None)
    _str_of = str.__str__
    _int_of = int.__int__
    _float_of = float.__float__
    _int_repr = int.__repr__
    _float_repr = float.__repr__
    _map = map
    _inf = float("inf")
    _flags_of = type.__dict__["__flags__"].__get__  # (type's own: a metaclass has no say)
    # the tp_flags bits of list, tuple and dict and of their subclasses
    container_bits = (1 << 25) | (1 << 26) | (1 << 29)
    for _t in (list, tuple, dict):
        if not _flags_of(_t) & container_bits:
            raise RuntimeError("runner: unexpected type flags")
    for _t in (str, int, float, bool, type(None), bytes, set):
        if _flags_of(_t) & container_bits:
            raise RuntimeError("runner: unexpected type flags")
    del _t

    _any = any
    _all = all
    _repeat = itertools.repeat
    _is = _operator.is_
    _dict_get = dict.get
    # what the agent's builtins hold at boot, put back at the start of a call when the
    # agent deleted some
    builtin_items = tuple(agent_builtins.items())
    containers = (list, tuple, dict)

    _end = object()  # (marks the end of a container in a walk's stack)

    def on_path(path, v):
        """Whether `v` is one of the containers of `path` (a cycle), by identity (in C
        for a long path)."""
        if _len(path) > 8:
            return _any(_map(_is, path, _repeat(v)))
        for outer in path:
            if outer is v:
                return True
        return False

    def holds_container(items):
        """Whether any of `items` is a list, tuple or dict (or a subclass of one), found
        in C: issubclass() with exact classes reads only the types' MROs."""
        return _any(_map(_issubclass, _map(_type, items), _repeat(containers)))
    _BaseException = BaseException
    _ValueError = ValueError
    _TypeError = TypeError
    _RecursionError = RecursionError
    _MemoryError = MemoryError
    _SyntaxError = SyntaxError
    _SystemExit = SystemExit
    _RuntimeError = RuntimeError
    _bytearray = bytearray
    _BytesIO = _io.BytesIO
    _b64 = binascii.b2a_base64
    sources = {}
    source_order = []
    # Headroom the agent's code never gets: held (in pieces, so that it can be taken again
    # around the few objects the runner made meanwhile) only while the agent's code runs,
    # and let go before the runner reads a request and after the code ends. So an agent
    # that filled its memory still has its next call read, compiled and run (to free it),
    # and its MemoryError reported. (The pieces are memory of the interpreter's: the
    # memory limit holds them too, and they never add to what the agent may use.)
    reserve = [bytearray(1 << 14) for _ in range(64)]
    reserve_slots = tuple(range(64))
    pressed = [False]  # memory ran short in the last call: collect everything at its end
    NO_MEMORY = ("the sandbox's memory is full (its memory limit is reached): this call could "
                 "not start, and none of its code ran. Free memory (for example `del` the "
                 "large objects, in a short call of its own) or reset the executor.")
    runner_blob = []

    def no_default(o):
        # (_join: a class's __qualname__ may be a str subclass, whose __radd__ would run)
        raise _TypeError("Object of type " + _join((_qualname(_type(o)),))
                         + " is not JSON serializable")

    def json_dumps(obj):
        return _join(_make_encoder({}, no_default, _encode_str, None, ":", ",", False, False,
                                   True)(obj, 0))

    def reply_bytes(reply):
        """The reply as UTF-8 JSON. A lone surrogate (a str may hold one, UTF-8 cannot) in
        a message or a returned value is sent escaped ("\\ud800"): the host reads the same
        str, and the interpreter is not lost over it."""
        text = json_dumps(reply)
        try:
            return text.encode("utf-8")
        except _UnicodeEncodeError:
            return _join(_make_encoder({}, no_default, _encode_ascii, None, ":", ",", False,
                                       False, True)(reply, 0)).encode("ascii")

    def format_tb(exc):
        """Traceback lines of the agent's frames (the runner's frames are left out)."""
        lines = []
        try:
            tb = _tb_of(exc)
        except _BaseException:
            return ""
        count = 0
        while tb is not None and count < 200:
            code = tb.tb_frame.f_code
            fn = _join((code.co_filename,))
            if fn != RUNNER_FILE and fn != TOOL_FILE:
                lineno = tb.tb_lineno
                lines.append('  File "' + fn + '", line ' + _str(lineno) + ", in "
                             + _join((code.co_name,)) + "\n")
                src = sources.get(fn)
                if src is not None and lineno is not None and 0 < lineno <= _len(src):
                    text = src[lineno - 1].strip()
                    if text:
                        lines.append("    " + text + "\n")
                count += 1
            tb = tb.tb_next
        return _join(lines)

    def describe(exc):
        cls = _type(exc)
        try:
            tname = _join((_qualname(cls),))
        except _BaseException:
            tname = "Exception"
        try:
            mod = _modname(cls)
        except _BaseException:
            mod = None
        if _type(mod) is _str and mod not in ("builtins", "__main__"):
            tname = mod + "." + tname
        try:
            msg = _str(exc)
            msg = _join((msg,)) if _isinstance(msg, _str) else "<unprintable>"
        except _BaseException:
            msg = "<unprintable " + tname + " object>"
        extra = ""
        if _isinstance(exc, _SyntaxError):
            try:
                if exc.text is not None and exc.lineno is not None:
                    extra = ('  File "' + _str(exc.filename) + '", line ' + _str(exc.lineno)
                             + "\n    " + _str(exc.text).strip() + "\n")
            except _BaseException:
                extra = ""
        tb = format_tb(exc) + extra
        text = "Traceback (most recent call last):\n" + tb if tb else ""
        text += tname + (": " + msg if msg else "") + "\n"
        return tname, msg, text

    def text_broken(text, buf, encoding, errors, line_buffering):
        """Whether a runner text stream no longer writes as boot left it: detached,
        reconfigured, or initialised again over another buffer (compared by identity
        first: only then is it asked, in C, and it asks only the runner's buffer)."""
        if text.buffer is not buf:
            return True
        now = text.errors
        if _type(now) is not _str or now != errors:
            return True
        now = text.encoding
        if _type(now) is not _str or now != encoding:
            return True
        return text.line_buffering is not line_buffering

    def repair_streams():
        """At the start of each call, after the hook gave sys the runner's stdout and
        stderr back: each layer of a stream that the agent closed, detached or
        reconfigured in an earlier call is initialised again in place, innermost first
        (the same objects: whoever holds them keeps working). Only a broken text layer is
        (its initialisation looks the codec up). Returns what the objects let go of, for
        the caller to drop."""
        dropped = []
        for text, buf, raw, fd, encoding, errors, line_buffering in stream_parts:
            try:
                if raw.closed:
                    _init_file(raw, fd, "wb", closefd=False)  # (this role may: see the hook)
                try:
                    # (a closed buffer has let its memory go, whatever its file: flushing
                    # it, empty at this point, says so)
                    broken = buf.raw is not raw or buf.closed or _flush_buffer(buf) is not None
                except _BaseException:  # (closed, detached, or left uninitialised)
                    broken = True
                if broken:
                    dropped.append(buf.raw)
                    _init_buffer(buf, raw)
                try:
                    broken = text_broken(text, buf, encoding, errors, line_buffering)
                except _BaseException:
                    broken = True
                if broken:
                    dropped.append(text.buffer)
                    _init_text(text, buf, encoding=encoding, errors=errors, newline="\n",
                               line_buffering=line_buffering)
            except _BaseException:
                pass  # (the descriptor is gone, or the codec was tampered with: the
                # stream stays broken, the call runs)
        return dropped

    def shorten(text, limit):
        """`text` (an exact str) cut to at most `limit` characters."""
        return text if _len(text) <= limit else text[:limit - 3] + "..."

    def flush_streams():
        for s in (stdout, stderr):
            try:
                s.flush()
            except _BaseException:
                pass

    def json_key(key):
        """A dict key as the exact str JSON makes of it (as the C encoder would), read
        with the base types' own functions."""
        t = _type(key)
        if t is _str:
            return key
        if key is True:
            return "true"
        if key is False:
            return "false"
        if key is None:
            return "null"
        if _issubclass(t, _str):
            return _str_of(key)
        if _issubclass(t, _int):
            return _int_repr(key)
        if _issubclass(t, _float):
            f = _float_of(key)
            if f != f:
                return "NaN"
            if f == _inf:
                return "Infinity"
            if f == -_inf:
                return "-Infinity"
            return _float_repr(f)
        raise _TypeError("keys must be str, int, float, bool or None, not "
                         + _join((_qualname(t),)))

    def plain(value, max_depth):
        """`value` as data the C encoder writes without calling anything the agent
        defined. The encoder reads str, int and float subclasses with the base types' own
        C functions and hands other objects to no_default, but it calls items() of a dict
        subclass and __iter__ of a list or tuple subclass: those are copied into plain
        ones with the base type's own C functions. A list, tuple or dict holding no
        container at all is used as it is (its items' types are read in C: no per-item
        Python work, and no id(), which is audited). Raises _ValueError for a cycle,
        _RecursionError for nesting deeper than `max_depth`."""
        root = [None]
        todo = [(value, root, 0)]
        path = []  # the containers being copied, outermost first
        while todo:
            item = todo.pop()
            if item is None:
                path.pop()  # (the end of a container)
                continue
            v, into, slot = item
            t = _type(v)
            if not _flags_of(t) & container_bits:
                into[slot] = v  # a leaf: the encoder reads (or refuses) it in C
                continue
            if path and on_path(path, v):
                raise _ValueError("Circular reference detected")  # (worded in convert)
            if _len(path) >= max_depth:
                raise _RecursionError("too deep")  # (worded in convert)
            if t is _dict or _issubclass(t, _dict):
                values = _dict_values(v)
                if not holds_container(values):
                    if t is _dict:
                        into[slot] = v  # (the encoder reads its keys in C, hashing none)
                        continue
                    out = {}  # (keys made exact str first: inserting hashes them)
                    for key, item in _list(_dict_items(v)):
                        out[json_key(key)] = item
                    into[slot] = out
                    continue
                path.append(v)
                todo.append(None)
                out = {}
                for key, item in _list(_dict_items(v)):
                    key = json_key(key)
                    out[key] = None
                    todo.append((item, out, key))
            else:
                items = v if t is _list or t is _tuple else \
                    _list_copy(v) if _issubclass(t, _list) else _tuple_item(v, _whole)
                if not holds_container(items):
                    into[slot] = items
                    continue
                path.append(v)
                todo.append(None)
                out = [None] * _len(items)
                n = 0
                for item in items:
                    todo.append((item, out, n))
                    n += 1
            into[slot] = out
        return root[0]

    def needs_plain(value, max_depth):
        """Whether `value` holds a dict, list or tuple subclass, a cycle, or nests deeper
        than `max_depth`: then plain() must copy it (or say what is wrong) before the C
        encoder may see it. Most values hold none, and are encoded as they are."""
        todo = [value]
        path = []  # the containers being looked into, outermost first
        while todo:
            v = todo.pop()
            if v is _end:
                path.pop()
                continue
            t = _type(v)
            if t is _dict:
                children = _dict_values(v)
            elif t is _list or t is _tuple:
                children = v
            else:
                return True
            if _len(path) >= max_depth or (path and on_path(path, v)):
                return True
            if _len(children) > 16 and not holds_container(children):
                continue
            path.append(v)
            todo.append(_end)
            for child in children:
                ct = _type(child)
                if ct is _dict or ct is _list or ct is _tuple:
                    todo.append(child)
                elif not (ct is _str or ct is _int or ct is _float or ct is _bool
                          or child is None) and _flags_of(ct) & container_bits:
                    return True  # a subclass of one
        return False

    def convert(value, max_depth):
        """A returned global as JSON text, or raise _ValueError with the reason. Nothing
        of the agent's runs: see plain()."""
        try:
            if _flags_of(_type(value)) & container_bits and needs_plain(value, max_depth):
                value = plain(value, max_depth)
            return _join((json_dumps(value),))
        except _RecursionError:
            raise _ValueError("value is nested too deeply to convert to JSON (more than "
                              + _str(max_depth) + " levels of lists and dicts)") from None
        except _ValueError as e:
            m = _join((_str(e),)) if _type(e) is _ValueError else ""
            if "Circular reference" in m:
                raise _ValueError("value contains a reference cycle and cannot be converted "
                                 "to JSON") from None
            if "digits" in m:
                raise _ValueError("integer too large to convert to JSON (over 4300 digits)") \
                    from None
            raise _ValueError("value cannot be converted to JSON: " + m) from None
        except _BaseException as e:
            if _type(e) is _TypeError:
                raise _ValueError(_join((_str(e),)) + " (return JSON values: dict, list, str, "
                                 "int, float, bool, None)") from None
            raise _ValueError("value cannot be converted to JSON") from None

    def collect_figures(budget):
        """Open matplotlib figures as PNG (base64), then closed: the call's charts."""
        box = []
        "<wasm-exec request slot>".__defaults__ = ("pyplot", box)
        del "<wasm-exec request slot>".__defaults__
        plt = box.pop()
        if plt is None:
            return []
        out = []
        try:
            numbers = plt.get_fignums()
            for number in numbers:
                buf = _BytesIO()
                plt.figure(number).savefig(buf, format="png")
                data = _b64(buf.getvalue(), newline=False).decode("ascii")
                if _len(data) > budget:
                    break
                budget -= _len(data)
                out.append(data)
            plt.close("all")
        except _BaseException:
            pass
        return out

    def tool_call(S, args, kwargs):
        """One call of a tool of the host's: (True, its result) or (False, the exception
        to raise). The agent's stub (see make_tool) raises it: so no frame of the runner's
        is in its traceback."""
        # S: (name, TT), an exact tuple the runner made; the agent may call this function
        # with any S (or rewrite its variables): all it can do then is send the host bytes
        # of its own, which the host reads like any tool call (see the hook's "tool" role)
        name = S[0]
        (plain_, H, encoders, scan_, ToolError_, TypeError_, ValueError_, RecursionError_,
         type_, str_, bytes_, list_, join_, UnicodeEncodeError_) = S[1]
        try:
            data = plain_([list_(args), kwargs], H)
        except TypeError_ as e:
            return False, TypeError_(
                name + "(): " + join_((str_(e),)) + "; tool arguments are JSON data (dict, "
                "list, str, int, float, bool, None): convert other values first (numpy "
                "values with .item() or .tolist())")
        request = {"tool": name, "args": data[0], "kwargs": data[1]}
        try:
            try:
                payload = join_(encoders[0](request, 0)).encode("utf-8")
            except UnicodeEncodeError_:
                payload = join_(encoders[1](request, 0)).encode("ascii")
        except (ValueError_, RecursionError_) as e:
            return False, TypeError_(name + "(): an argument cannot be sent as JSON ("
                                     + join_((str_(e),)) + ")")
        del data, request
        box = []
        "<wasm-exec request slot>".__defaults__ = ("tool", box, payload)
        del "<wasm-exec request slot>".__defaults__
        del payload
        answer = box[0] if box else None
        if type_(answer) is not bytes_:
            return False, ToolError_(name + ": the host did not answer (no call is running, "
                                     "or the answer did not fit in the sandbox's memory)")
        reply = scan_(answer.decode("utf-8"), 0)[0]
        del answer
        if reply.get("ok") is True:
            return True, reply.get("value")
        error = ToolError_(reply.get("message"))
        error.tool = name
        error.error_type = reply.get("type")
        return False, error

    def tool_plain(value, H):
        """A tool call's arguments as plain JSON data, read with the base types' own C
        functions (nothing the agent defined runs: see plain()); TypeError when a value
        is not JSON data."""
        (max_depth, type_, dict_, list_, tuple_, str_, int_, float_, bool_, issubclass_,
         len_, dict_items, list_copy, tuple_item, whole, str_of, int_of, float_of,
         int_repr, float_repr, TypeError_, qualname, join_, inf) = H
        root = [None]
        todo = [(value, root, 0, 0)]
        while todo:
            v, into, slot, depth = todo.pop()
            t = type_(v)
            if t is str_ or t is int_ or t is float_ or t is bool_ or v is None:
                into[slot] = v
                continue
            if depth > max_depth:
                raise TypeError_("a value is nested more than " + str_(max_depth)
                                 + " levels deep (or holds a cycle)")
            if issubclass_(t, dict_):
                out = {}
                for key, item in list_(dict_items(v)):
                    kt = type_(key)
                    if kt is str_:
                        pass
                    elif key is True or key is False or key is None:
                        key = "true" if key is True else "false" if key is False else "null"
                    elif issubclass_(kt, str_):
                        key = str_of(key)
                    elif issubclass_(kt, int_):
                        key = int_repr(key)
                    elif issubclass_(kt, float_):
                        f = float_of(key)
                        key = ("NaN" if f != f else "Infinity" if f == inf
                               else "-Infinity" if f == -inf else float_repr(f))
                    else:
                        raise TypeError_("a dict key is a " + join_((qualname(kt),))
                                         + " (keys must be str, int, float, bool or None)")
                    out[key] = None
                    todo.append((item, out, key, depth + 1))
                into[slot] = out
            elif issubclass_(t, list_) or issubclass_(t, tuple_):
                items = list_copy(v) if issubclass_(t, list_) else tuple_item(v, whole)
                out = [None] * len_(items)
                i = 0
                for item in items:
                    todo.append((item, out, i, depth + 1))
                    i += 1
                into[slot] = out
            elif issubclass_(t, str_):
                into[slot] = str_of(v)
            elif issubclass_(t, int_):
                into[slot] = int_of(v)
            elif issubclass_(t, float_):
                into[slot] = float_of(v)
            else:
                raise TypeError_("a " + join_((qualname(t),)) + " is not JSON data")
        return root[0]

    def tool_default(o, _TypeError=TypeError):
        raise _TypeError("not JSON data")  # (tool_plain let only JSON data through)

    def reseed_generators():
        """After a restore from an image every copy would draw the same random numbers:
        seed `random` and numpy's global generator afresh (from the host's entropy)."""
        box = []
        "<wasm-exec request slot>".__defaults__ = ("generators", box)
        del "<wasm-exec request slot>".__defaults__
        for mod in box:
            if mod is not None:
                try:
                    mod.seed()
                except _BaseException:
                    pass

    def repair_namespace():
        """Put back what the runner gave the agent's namespace, whatever an earlier call
        did to it: its builtins as __builtins__, with the guarded __import__, and the
        names it had at boot when some were deleted (a name the agent replaced stays
        replaced). Returns what it replaced, for the caller to drop. (Its look-ups are
        the ones the call's own code makes a moment later: a key the agent planted in
        these dicts is compared by those anyway.)"""
        replaced = []
        if _dict_get(ns, "__builtins__") is not agent_builtins:
            replaced.append(_dict_get(ns, "__builtins__"))
            ns["__builtins__"] = agent_builtins
        if _dict_get(agent_builtins, "__import__") is not guard:
            replaced.append(_dict_get(agent_builtins, "__import__"))
            agent_builtins["__import__"] = guard
        if _len(agent_builtins) < _len(builtin_items):
            for k, v in builtin_items:
                if k not in agent_builtins:
                    agent_builtins[k] = v
        return replaced

    def release_reserve():
        """Let the reserve go (its first piece by a plain store, which needs no memory)."""
        reserve[0] = None
        for i in reserve_slots:
            reserve[i] = None

    def take_reserve():
        """Take as much of the reserve back as memory allows."""
        for i in reserve_slots:
            if reserve[i] is None:
                try:
                    reserve[i] = _bytearray(1 << 14)
                except _MemoryError:
                    pressed[0] = True
                    return

    def no_memory_reply(call_id, why):
        """The answer to a call that memory let neither start nor answer."""
        return {"id": call_id, "ok": False, "error_type": "MemoryError",
                "error_message": why, "traceback": "MemoryError: " + why + "\n",
                "globals": {}, "globals_errors": {}}

    # the __future__ flags of a compiled cell (CO_FUTURE_*), for compiling its last line
    FUTURE_FLAGS = 0x1FE0000
    # how a line that cannot be a lone expression starts (a statement keyword)
    STATEMENT_WORDS = frozenset((
        "import", "from", "def", "class", "for", "while", "if", "elif", "else", "with",
        "try", "except", "finally", "del", "return", "raise", "assert", "global",
        "nonlocal", "pass", "break", "continue", "async", "yield"))
    AUGMENTED = frozenset(("+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "@=", "//=",
                           "**=", ">>=", "<<="))
    _se_code = SystemExit.__dict__["code"].__get__
    VALUE_TEXT_CHARS = 100_000
    VALUE_HTML_CHARS = 1_000_000

    def split_cell(text):
        """Where the cell's last statement may be a lone expression: (head, tail) with
        `tail` from the start of its last line that starts at column 0 (or after that
        line's last ';'), `head` everything before; None when that line plainly starts
        another statement. Only a guess: compile_cell keeps it only when both halves
        compile, which puts the split between two top-level statements."""
        pos = _len(text)
        while True:
            start = text.rfind("\n", 0, pos) + 1
            line = text[start:pos]
            if line and line[0] not in " \t\r\f#" and line.strip():
                break
            if start == 0:
                return None
            pos = start - 1
        i = 0
        while i < _len(line) and (line[i].isalnum() or line[i] == "_"):
            i += 1
        if line[:i] in STATEMENT_WORDS:  # (a compound statement's line included)
            return None
        cut = line.rfind(";")
        if cut >= 0 and "#" not in line[:cut]:
            # simple statements on one line: the last of them
            line = line[cut + 1:]
            rest = line.lstrip(" \t")
            start += cut + 1 + _len(line) - _len(rest)
            line = rest
        n = _len(line)
        i = 0
        while i < n and (line[i].isalnum() or line[i] == "_" or line[i] == "."):
            i += 1
        word = line[:i]
        if word in STATEMENT_WORDS or (word == "print" and line[i:i + 1] == "("):
            return None
        j = i
        while j < n and line[j] == " ":
            j += 1
        if i and j < n:
            if line[j] == ":" or (line[j] == "=" and line[j + 1:j + 2] != "="):
                return None  # an assignment to a name or an attribute
            if line[j:j + 2] in AUGMENTED or line[j:j + 3] in AUGMENTED:
                return None
        return text[:start], text[start:]

    def compile_cell(code_text, filename):
        """The cell's code, and the code of its last statement when that is a lone
        expression (evaluated apart, so that its value can be shown), else None."""
        split = split_cell(code_text)
        if split is not None:
            head, tail = split
            lines = head.count("\n")
            try:
                last = _compile("\n" * lines + tail, filename, "eval", 0, True)
                body = _compile(head, filename, "exec", 0, True)
                flags = body.co_flags & FUTURE_FLAGS
                if flags:
                    last = _compile("\n" * lines + tail, filename, "eval", flags, True)
                return body, last
            except _SyntaxError:
                pass  # (the whole cell's own error, if it has one, comes next)
        return _compile(code_text, filename, "exec", dont_inherit=True), None

    def show_value(value, max_depth, budget):
        """The last expression's value as the result shows it, like a notebook's
        execute_result: its repr() (shortened), JSON text when it is JSON data, HTML when
        its type offers _repr_html_ (a DataFrame's table), PNG (base64) when it offers
        _repr_png_. Its own methods run here, as at the interactive prompt (they are the
        agent's code, with the agent's limits); whatever they raise only leaves that form
        out. Returns the forms and what they cost of the reply's budget."""
        shown = {}
        try:
            text = _join((_repr(value),))
        except _BaseException:
            try:
                name = _join((_qualname(_type(value)),))
            except _BaseException:
                name = "object"
            text = "<" + name + " object (its repr() failed)>"
        shown["text"] = shorten(text, VALUE_TEXT_CHARS)
        cost = _len(_encode_ascii(shown["text"]))
        try:
            data = convert(value, max_depth)
            if cost + _len(data) <= budget:
                shown["json"] = data
                cost += _len(data)
        except _BaseException:
            pass
        for method, key in (("_repr_html_", "html"), ("_repr_png_", "png")):
            try:
                if _getattr(_type(value), method, None) is None:
                    continue
                form = _getattr(value, method)()
                if key == "html" and _isinstance(form, _str):
                    form = _join((form,))
                    if _len(form) > VALUE_HTML_CHARS:
                        continue
                elif key == "png" and _isinstance(form, _bytes_type):
                    form = _b64(form, newline=False).decode("ascii")
                else:
                    continue
                size = _len(_encode_ascii(form))
                if cost + size <= budget:
                    shown[key] = form
                    cost += size
            except _BaseException:
                pass
        return shown, cost

    def exit_status(exc):
        """The status of a SystemExit, as CPython's own exit gives it: None is 0, an int is
        itself (1 beyond 32 bits), anything else is 1 with its text printed to stderr."""
        code = _se_code(exc)
        if code is None:
            return 0
        if _issubclass(_type(code), _int):
            status = _int_of(code)
            return status if -(1 << 31) <= status < (1 << 31) else 1
        try:
            text = _join((_str(code),))
        except _BaseException:
            text = "<unprintable exit value>"
        try:
            stderr.write(text + "\n")
        except _BaseException:
            pass
        return 1

    def start_call(req, code_text, filename):
        """Ready the agent's namespace for a call: the cell's source kept (for tracebacks),
        the random generators reseeded when the host asks, the host's tools of this call
        bound, what the runner gave the namespace put back, and the globals sent in.
        Returns what the repair replaced, for the caller to keep until the call ends (no
        finalizer of it runs in here)."""
        sources[filename] = code_text.splitlines()
        source_order.append(filename)
        if _len(source_order) > 32:
            sources.pop(source_order.pop(0), None)
        if req.get("reseed") is True:
            reseed_generators()
        # the host's tools of this call are builtins of the agent's namespace (a global of
        # the same name hides one); those of the previous call go first, so that the
        # repair below counts the boot's builtins only
        for name in tools_bound:
            if name in agent_builtins:
                del agent_builtins[name]
        tools_bound.clear()
        replaced = repair_namespace()
        bind_tools(req.get("tools"))
        values = req.get("globals")
        if values:
            for k, v in values.items():
                ns[k] = v
        return replaced

    def record_error(reply, exc, started):
        """What the cell raised, into `reply` (`started`: its code had been compiled). A
        SystemExit gives its status; sys.exit(0) ends the cell as a success."""
        if _isinstance(exc, _MemoryError):
            pressed[0] = True
        status = exit_status(exc) if _isinstance(exc, _SystemExit) else None
        if status is not None:
            reply["exit_code"] = status  # (0: sys.exit(0) ends the cell as a success)
        if status is None or status != 0:
            reply["ok"] = False
            try:
                # (memory running out, not the parser's own MemoryError, which says why)
                if not started and _type(exc) is _MemoryError and not exc.args:
                    tname, msg, text = ("MemoryError", NO_MEMORY,
                                        "MemoryError: " + NO_MEMORY + "\n")
                else:
                    tname, msg, text = describe(exc)
            except _BaseException:
                tname, msg, text = "Exception", "<unprintable>", ""
            # (capped: the reply has to fit the host's cap, whatever the message)
            reply["error_type"] = shorten(tname, 500)
            reply["error_message"] = shorten(msg, 20_000)
            reply["traceback"] = text if _len(text) <= 50_000 else (
                text[:10_000] + "\n[... traceback shortened ...]\n" + text[-40_000:])

    def returned_globals(req, max_depth, max_bytes, used):
        """The globals the call asks for (by name, or all that convert with return_all), as
        JSON text: (name -> text, name -> why it could not be returned, the reply's bytes
        used in all). Their names and texts count against `max_bytes`, after the `used`
        bytes the cell's shown value took."""
        out = {}
        errs = {}
        names = req.get("return", ())
        quiet = False
        # the namespace, looked up directly while its keys are all exact str (checked in
        # C); else a copy of its str keys, made without looking anything up: a key the
        # agent planted with its own __hash__ and __eq__ would be compared with a name
        found = ns
        if (names or req.get("return_all") is True) \
                and not _all(_map(_is, _map(_type, ns), _repeat(_str))):
            found = {}
            for k, v in _list(_dict_items(ns)):
                if _type(k) is _str:
                    found[k] = v
        if req.get("return_all") is True:
            # every global the code's namespace holds that converts to JSON (modules,
            # functions, classes and other objects are left out without an error)
            names = []
            for k, v in _list(_dict_items(found)):
                t = _type(v)
                if _type(k) is _str and k[:2] != "__" and not (
                        t is ModuleType or t is FunctionType or _issubclass(t, _type)):
                    names.append(k)
            quiet = True
        for name in names:
            if name not in found:
                errs[name] = "name '" + shorten(name, 200) + "' is not defined"
                continue
            try:
                text = convert(found[name], max_depth)
            except _ValueError as e:
                if not quiet:
                    errs[name] = shorten(_join((_str(e.args[0]) if e.args
                                                else "cannot convert",)), 500)
                continue
            except _BaseException:
                if not quiet:
                    errs[name] = "value cannot be converted to JSON"
                continue
            # (names count too: return_all may return many small values)
            if used + _len(text) + _len(name) > max_bytes:
                errs[name] = ("value too large to return (returned globals are capped at "
                              + _str(max_bytes) + " bytes in all)")
                if quiet:
                    break  # (return_all: the rest would not fit either)
                continue
            used += _len(text) + _len(name)
            out[name] = text
        return out, errs, used

    def run_call(req, cell_no):
        """One call: ready the namespace, compile and run the cell (here, so that the
        agent's code has the stack it always had), then the reply: the value of its last
        expression or its error, the globals asked for, figures, the streams' addresses."""
        code_text = req["code"]
        filename = "<cell-" + _str(cell_no) + ">"
        # (kept alive until the call ends: no finalizer of what it replaced runs in repair)
        replaced = start_call(req, code_text, filename)  # noqa: F841
        reply = {"id": req["id"], "ok": True}
        started = False
        # (the host sends the call's cap with every call; the fallback is the host's
        # default, Limits.max_globals_bytes: 16 MiB)
        max_bytes = req.get("max_globals_bytes", 16 << 20)
        max_depth = req.get("max_depth")
        if _type(max_depth) is not _int:
            max_depth = 400
        used = 0
        try:
            compiled, last = compile_cell(code_text, filename)
            started = True
            take_reserve()
            try:
                _exec(compiled, ns)
                del compiled
                if last is not None:
                    # the cell's last statement is an expression: its value is the
                    # result's (like a notebook's execute_result; never bound to `_`)
                    value = _eval(last, ns)
                    if value is not None:
                        shown, used = show_value(value, max_depth, max_bytes)
                        value = None
                        reply["value"] = shown
                        if req.get("display") is True:
                            stdout.write(shown["text"] + "\n")  # as at the prompt
            finally:
                release_reserve()
        except _BaseException as exc:
            record_error(reply, exc, started)
            del exc
        flush_streams()
        out, errs, used = returned_globals(req, max_depth, max_bytes, used)
        reply["globals"] = out
        reply["globals_errors"] = errs
        if req.get("figures") is True:
            reply["figures"] = collect_figures(max_bytes - used)
        if req.get("streams") is True:
            reply["streams"] = stream_info[0]
        return reply

    # ------------------------------------------------------------- tools
    tool_encoders = tuple(_make_encoder(None, tool_default, enc, None, ":", ",", False, False,
                                        True) for enc in (_encode_str, _encode_ascii))
    tool_helpers = (400, type, dict, list, tuple, str, int, float, bool, issubclass, len,
                    dict.items, list.copy, tuple.__getitem__, slice(None), str.__str__,
                    int.__int__, float.__float__, int.__repr__, float.__repr__, TypeError,
                    _qualname, _join, float("inf"))
    # (the tools' scanner makes NaN, Infinity and -Infinity with float)
    TOOL_T = (tool_plain, tool_helpers, tool_encoders, json_scanner(float), ToolError, TypeError,
              ValueError, RecursionError, type, str, bytes, list, _join, UnicodeEncodeError)
    del json_scanner
    # the stub an agent calls: made (at boot, before any agent code) from source of its own
    # file name, not the runner's, so that a ToolError's traceback holds the agent's frames
    # and the stub's only (tracebacks can be read; the runner's frames cannot). `make_tool`
    # stays with the runner; each stub's closure holds tool_call and its own tuple
    _tool_globals = {"__builtins__": {}}
    exec(compile("def make_tool(call, S, doc):\n"
                 "    def tool(*args, **kwargs):\n"
                 "        ok, value = call(S, args, kwargs)\n"
                 "        if ok:\n"
                 "            return value\n"
                 "        raise value\n"
                 "    tool.__doc__ = doc\n"
                 "    return tool\n", TOOL_FILE, "exec"), _tool_globals)
    make_tool = _tool_globals.pop("make_tool")
    del _tool_globals
    boot_builtin_names = frozenset(k for k, _v in builtin_items)
    tool_stubs = {}  # name -> its stub (the same object from call to call)
    tools_bound = []  # the names bound for the call running now

    def bind_tools(names):
        """Bind a stub in the agent's builtins for each tool the host offers this call."""
        if _type(names) is not _list:
            return
        for name in names:
            if _type(name) is not _str or name in boot_builtin_names:
                continue  # (the host never sends one: it refuses such names)
            stub = tool_stubs.get(name)
            if stub is None:
                if _len(tool_stubs) >= 4096:
                    tool_stubs.clear()
                stub = tool_stubs[name] = make_tool(tool_call, (name, TOOL_T), TOOL_DOC)
                stub.__name__ = name
                stub.__qualname__ = name
            agent_builtins[name] = stub
            tools_bound.append(name)

    cell_counter = [0]
    tail_garbage = []  # what the end of the last turn replaced, dropped in the next call

    def boot_reply():
        """The end of the boot: the machinery is snapshotted and the host told we are
        ready (in the per-turn mode of a reactor runtime, the boot turn ends here)."""
        "<wasm-exec request slot>".__defaults__ = ("restore", [])
        del "<wasm-exec request slot>".__defaults__
        "<wasm-exec request slot>".__defaults__ = ("boot_done", [])
        del "<wasm-exec request slot>".__defaults__
        ready = json_dumps({"id": 0, "ready": True, "errors": default_errors,
                            "runner_blob": runner_blob[0] if runner_blob else None,
                            "streams": stream_info[0]}).encode()
        runner_blob.clear()
        "<wasm-exec request slot>".__defaults__ = ("reply", [], ready)
        del "<wasm-exec request slot>".__defaults__
        del ready

    def step():
        """Read one request and answer it; False when the channel has ended."""
        release_reserve()  # (for reading the request: before any answer list exists)
        pressed[0] = False
        box = []
        # (the read also restores the standard streams)
        "<wasm-exec request slot>".__defaults__ = ("read", box)
        del "<wasm-exec request slot>".__defaults__
        raw = box[0]
        box = None  # the streams the agent had set are dropped here, in the runner
        tail_garbage.clear()
        if raw is None:
            return False
        repair_streams()  # (what the streams let go of is dropped here, in the runner)
        reply = None
        try:
            req = json_loads(raw.decode("utf-8"))
        except _MemoryError:
            # too little memory even to decode the request: its id is the first `,"id":`
            # in it (a string in JSON holds its quotes escaped, and the values sent in
            # come after the id)
            at = raw.find(b',"id":')
            if at < 0:
                raise
            at += 6
            end = at
            while end < _len(raw) and 47 < raw[end] < 58:
                end += 1
            req = {"id": _int(raw[at:end]), "op": "exec"}
            reply = no_memory_reply(req["id"], NO_MEMORY)
        del raw
        if req.get("op") == "exit":
            return False
        cell_counter[0] += 1
        if reply is None:
            try:
                reply = run_call(req, cell_counter[0])
            except _BaseException as e:
                if _isinstance(e, _MemoryError):
                    reply = no_memory_reply(req["id"], "the sandbox's memory is full (its memory "
                                            "limit is reached): the call could not be answered")
                else:
                    reply = {"id": req["id"], "ok": False, "error_type": "RunnerError",
                             "error_message": "the sandbox runner failed: "
                             + _join((_qualname(_type(e)),)),
                             "traceback": "", "globals": {}, "globals_errors": {}}
        if req.get("trace_imports") is True:
            # which rule granted each import of the call (None: refused)
            box = []
            "<wasm-exec request slot>".__defaults__ = ("imports", box)
            del "<wasm-exec request slot>".__defaults__
            reply["imports"] = [[item[0], item[1]] for item in box]
            box = None
        full = pressed[0]  # (before the answer list exists: see the top)
        box = []
        "<wasm-exec request slot>".__defaults__ = ("collect", box, full)
        del "<wasm-exec request slot>".__defaults__
        if box:
            box.pop()(box.pop())
        # (a reactor's turn goes on after the answer: turn_step gives sys back the
        # runner's streams first, and keeps what they replace until the next call, so no
        # stream object or finalizer of the agent's runs in between)
        try:
            payload = reply_bytes(reply)
        except _MemoryError:
            payload = reply_bytes(no_memory_reply(req["id"], "the sandbox's memory is full (its "
                                                  "memory limit is reached): the call's answer "
                                                  "could not be built"))
        del reply, req
        "<wasm-exec request slot>".__defaults__ = ("reply", [], payload)
        del "<wasm-exec request slot>".__defaults__
        del payload
        return True

    def main():
        """The command-module runtime: boot, then answer requests until the end."""
        boot_reply()
        while step():
            pass

    def turn_step(source=None, number=None):
        """A reactor runtime's turn in per-turn mode (installed as the reactor's
        _run_turn): one request, then the turn ends and no frame of the guest is live,
        so the host can image the interpreter's memory between calls."""
        step()
        box = []
        "<wasm-exec request slot>".__defaults__ = ("reactor_reset", box)
        del "<wasm-exec request slot>".__defaults__
        tail_garbage.append(box)
        return 0

    # ------------------------------------------------------- arm the hook and go
    # The guard's steps are constants of its code, "<guard_arguments>" and so on (see the
    # guard), bound here to the functions of those names: like the request slot below,
    # they are then no variable, cell or field of T that agent code could reach or swap
    guard_steps = {"<" + f.__name__ + ">": f for f in (
        guard_arguments, guard_relative_name, guard_verdicts, guard_answer)}
    consts = guard_impl.__code__.co_consts
    if sorted(c for c in consts if type(c) is str and c in guard_steps) != sorted(guard_steps):
        raise RuntimeError("runner: a step constant is missing in guard_impl")
    guard_impl.__code__ = guard_impl.__code__.replace(co_consts=tuple(
        guard_steps[c] if type(c) is str and c in guard_steps else c for c in consts))
    # Each role names the request slot by a constant of its own code, bound here to
    # REQUEST: a frame's variables can be rewritten (Python 3.13+), its constants cannot,
    # so the object a role's STORE_ATTR assigns to is always the slot itself, and no
    # object of the agent's (with a __setattr__ made of C callables) runs at a request site
    slot = "<wasm-exec request slot>"
    for fn in (guard_impl, guard_create_builtin, guard_exec_builtin, collect_figures,
               reseed_generators, boot_reply, step, turn_step, load_named, lazy_filter,
               tool_call):
        consts = fn.__code__.co_consts
        bound = tuple(REQUEST if type(c) is str and c == slot else c for c in consts)
        if sum(1 for c in bound if c is REQUEST) != 1:
            raise RuntimeError("runner: request slot constant missing in " + fn.__name__)
        fn.__code__ = fn.__code__.replace(co_consts=bound)
    del slot, consts, bound, guard_steps
    trusted = [guard_impl, guard_arguments, guard_relative_name, guard_verdicts, guard_answer,
               guard_call, guard_import_module, guard_create_builtin, load_named, lazy_filter,
               guard_exec_builtin, main, boot_reply, step, turn_step, run_call, start_call,
               record_error, returned_globals, collect_figures,
               reseed_generators, tool_call, tool_plain, tool_default, bind_tools,
               install_hook, read_exact, read_frame, json_loads, json_dumps, reply_bytes,
               json_key, plain, holds_container, on_path, needs_plain, repair_namespace,
               release_reserve, take_reserve, no_memory_reply,
               text_broken, repair_streams, shorten, format_tb,
               describe, flush_streams, convert, no_default, _exit, _unavailable, _gc_nothing,
               _no_input, _sleep, split_cell, compile_cell, show_value, exit_status,
               _gc_false, _gc_zero, _gc_collect, _gc_counts, _gc_list]
    trusted_codes = {id(f.__code__): f.__code__ for f in trusted}
    roles = {id(boot_reply.__code__): (boot_reply.__code__, "main"),
             id(step.__code__): (step.__code__, "main"),
             id(turn_step.__code__): (turn_step.__code__, "main"),
             id(guard_impl.__code__): (guard_impl.__code__, "guard"),
             id(collect_figures.__code__): (collect_figures.__code__, "figures"),
             id(reseed_generators.__code__): (reseed_generators.__code__, "reseed"),
             id(guard_call.__code__): (guard_call.__code__, "entry"),
             id(guard_import_module.__code__): (guard_import_module.__code__, "entry"),
             id(guard_create_builtin.__code__): (guard_create_builtin.__code__, "builtin"),
             id(guard_exec_builtin.__code__): (guard_exec_builtin.__code__, "builtin"),
             id(load_named.__code__): (load_named.__code__, "load"),
             id(lazy_filter.__code__): (lazy_filter.__code__, "lazy"),
             id(tool_call.__code__): (tool_call.__code__, "tool"),
             # (no request site: it may only re-open the runner's stdout and stderr)
             id(repair_streams.__code__): (repair_streams.__code__, "streams")}
    builtin_types = frozenset(k for k, v in builtins.__dict__.items() if type(v) is type)
    # where each role's code assigns the request slot: its STORE_ATTR __defaults__
    store_attr = opcode.opmap["STORE_ATTR"]
    request_sites = {}
    for code, _role_name in roles.values():
        raw, sites, ext = code.co_code, set(), 0
        for i in range(0, len(raw), 2):
            op, arg = raw[i], raw[i + 1] | ext
            ext = arg << 8 if op == EXTENDED_ARG else 0
            if op == store_attr and (arg >> STORE_ATTR_SHIFT) < len(code.co_names) \
                    and code.co_names[arg >> STORE_ATTR_SHIFT] == "__defaults__":
                sites.add(i)
        request_sites[id(code)] = frozenset(sites)
    B = (REQUEST, type(sys.implementation), str, type, TypeError)
    # where the guard calls the real import: its only calls with five positional arguments
    call_op = opcode.opmap["CALL"]
    raw = guard_impl.__code__.co_code
    import_calls = frozenset(i for i in range(0, len(raw), 2)
                             if raw[i] == call_op and raw[i + 1] == 5)
    if len(import_calls) != 5:
        raise RuntimeError("runner: the guard's calls of the real import were not found")
    # the runtime's own compiled modules (BLAKE2b-128 digests, with their names; the
    # table is built when first needed, off the cold start)
    index = init.pop("code_index")
    code_index = (index["digests"], index["names"])
    del index, raw
    bootstrap = sys.modules["importlib._bootstrap"]
    install_hook(bytes.fromhex(init.pop("token")), allowed, prefixes, builtins.__import__,
                 _imp.create_builtin, _imp.exec_builtin, trusted_codes, roles, REQUEST, T,
                 builtin_types, (stdout, stderr), guard_impl.__code__, implicit,
                 request_sites, B, import_calls, load_named.__code__,
                 bootstrap._find_and_load, code_index, _blake2.blake2b, binascii.a2b_base64,
                 interpreter_modules, host_call)
    del host_call
    bootstrap._find_and_load = load_named  # (C's imports look it up there by name too)
    if hasattr(sys, "set_lazy_imports_filter"):  # Python 3.15+ (PEP 810)
        sys.set_lazy_imports_filter(lazy_filter)
        # the agent may not take the filter away, nor make every import lazy
        for fname in ("set_lazy_imports_filter", "set_lazy_imports"):
            sys.__dict__[fname] = _unavailable
    del bootstrap, code_index, interpreter_modules
    del trusted_codes, roles

    _imp.create_builtin = MethodType(guard_create_builtin, B)
    _imp.exec_builtin = MethodType(guard_exec_builtin, B)
    builtins.__import__ = guard
    sys.breakpointhook = _unavailable
    sys.modules["__main__"] = main_module
    # signal handlers receive frames and run at arbitrary points: none for the agent
    _signal.signal = _unavailable  # the signal module, if imported later, wraps this
    time.sleep = _sleep
    importlib.import_module = guard_import
    importlib.__import__ = guard

    # automatic collection stays off (see the top of this file); gc is not reachable
    # the interpreter's first compile() pays a one-off set-up (about 7 ms): pay it at boot,
    # so that a pre-started interpreter answers its first call at full speed
    compile("pass", "<warm-up>", "exec")
    gc.disable()
    gc.collect()
    gc.freeze()  # boot's objects live for good: later collections need not scan them
    # libraries that import gc (timeit, for one) get an inert stand-in; the real module is
    # reachable only from the hook
    gc_standin = ModuleType("gc")
    gd = module_dict(gc_standin)
    gd.update({"enable": _gc_nothing, "disable": _gc_nothing, "isenabled": _gc_false,
               "collect": _gc_collect, "get_count": _gc_counts, "get_threshold": _gc_counts,
               "set_threshold": _gc_nothing, "freeze": _gc_nothing, "unfreeze": _gc_nothing,
               "get_freeze_count": _gc_zero, "get_debug": _gc_zero, "set_debug": _gc_nothing,
               "get_stats": _gc_list, "is_tracked": _gc_false, "is_finalized": _gc_false,
               "get_objects": _unavailable, "get_referrers": _unavailable,
               "get_referents": _unavailable, "callbacks": [], "garbage": [],
               "DEBUG_STATS": 1, "DEBUG_COLLECTABLE": 2, "DEBUG_UNCOLLECTABLE": 4,
               "DEBUG_SAVEALL": 32, "DEBUG_LEAK": 38,
               "__doc__": "The sandbox's stand-in: the runner collects garbage itself."})
    sys.modules["gc"] = gc_standin
    # modules imported before now (the scientific snapshot's timeit, for one) may hold the
    # real gc or its functions: they get the stand-in's
    for mod in list(sys.modules.values()):
        if type(mod) is not ModuleType:
            continue
        md = module_dict(mod)
        for k, v in list(md.items()):
            # (type() and identity only: touching other attributes could set off a
            # Python 3.15 lazy import)
            if v is gc:
                md[k] = gc_standin
            elif type(v) is type(len) and v.__self__ is gc:
                md[k] = gd.get(v.__name__, _unavailable)

    # the compiled runner, for the host to start later interpreters without compiling it
    # again (sent with the ready message, before any agent code has run)
    g = sys._getframe(1).f_globals
    own_code = g.get("_wasm_exec_code")
    if type(own_code) is CodeType:
        runner_blob.append(binascii.b2a_base64(marshal.dumps(own_code), newline=False)
                           .decode("ascii"))
    # nothing of the runner stays in a namespace the agent could find
    g.clear()
    g["__builtins__"] = builtins
    if init.get("turns") is True:
        # a reactor runtime in per-turn mode: every later turn answers one request
        sys.modules["_reactor"].__dict__["_run_turn"] = turn_step
        return boot_reply
    return main


_wasm_exec_boot()()
