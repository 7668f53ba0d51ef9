# wasm-exec guest runner: runs INSIDE the WebAssembly sandbox (CPython 3.12 on WASI).
#
# It is passed to the guest as `python -S -c <this file>` and serves framed requests read
# from fd 0 until the host stops it.  Replies (on fd 1, one write each, behind the session
# token) leave through an audit hook that alone holds
# the host's session token, so code the agent runs can print anything, write to any fd and
# walk any frame without being able to forge a reply.
#
# Security notes (see README "Threat model"):
# - The WebAssembly boundary is the real wall: no preopened directory, no sockets, no
#   processes, no host environment.  Everything here is policy on top of it.
# - The audit hook below is installed before any agent code runs and cannot be removed.
#   It keeps its state in a closure that no object reachable from agent code refers to.
# - The import guard is a tuple-based callable: its state is immutable and its code uses
#   no global or builtin names, so it cannot be re-pointed by editing dicts or cells.
# - This file must not define names at module level that matter: the module dict is
#   emptied before the first request.


def _wasm_exec_boot():
    import builtins
    import os
    import sys
    import types
    import _json
    import functools

    _getframe = sys._getframe
    _audit = sys.audit
    _os_read = os.read
    _os_write = os.write
    _str = str
    _bytes = bytes
    _int = int
    _len = len
    _type = type
    _isinstance = isinstance
    _dict = dict
    _tuple = tuple
    _list = list
    _frozenset = frozenset
    _BaseException = BaseException
    _Exception = Exception
    _exec = exec
    _compile = compile
    _FunctionType = types.FunctionType
    _FrameType = types.FrameType
    _CodeType = types.CodeType
    _ModuleType = types.ModuleType
    _str_copy = str.__str__
    _join = "".join
    _tb_of = BaseException.__dict__["__traceback__"].__get__
    _type_qualname = type.__dict__["__qualname__"].__get__
    _type_module = type.__dict__["__module__"].__get__
    _module_dict = _ModuleType.__dict__["__dict__"].__get__

    RUNNER_FILE = "<wasm-exec-runner>"

    # ---------------------------------------------------------------- channel
    def read_exact(n):
        chunks = []
        got = 0
        while got < n:
            b = _os_read(0, n - got)
            if not b:
                raise EOFError("channel closed")
            chunks.append(b)
            got += _len(b)
        return b"".join(chunks)

    def read_request():
        header = read_exact(8)
        if header[:4] != b"WXQ1":
            raise EOFError("bad request frame")
        size = _int.from_bytes(header[4:8], "little")
        return read_exact(size)

    class _Ctx:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = {"NaN": float("nan"), "Infinity": float("inf"),
                          "-Infinity": float("-inf")}.__getitem__
        memo = {}

    _scan = _json.make_scanner(_Ctx())

    def json_loads(text):
        obj, end = _scan(text, 0)
        if end != _len(text):
            raise ValueError("trailing data in request")
        return obj

    def _no_default(o):
        raise TypeError("Object of type " + _type_qualname(_type(o)) + " is not JSON serializable")

    _enc = _json.make_encoder(None, _no_default, _json.encode_basestring, None, ":", ",",
                              False, False, True)
    _enc_strict_markers = _json.make_encoder({}, _no_default, _json.encode_basestring, None,
                                             ":", ",", False, False, True)

    def json_dumps(obj):
        return _join(_enc(obj, 0))

    def json_dumps_checked(obj):
        # with cycle detection (markers dict): used for agent values
        return _join(_json.make_encoder({}, _no_default, _json.encode_basestring, None, ":",
                                        ",", False, False, True)(obj, 0))

    # first frame: init, carries the session token and the policy
    init = json_loads(read_request().decode("utf-8"))
    token = bytes.fromhex(init["token"])
    allowed = _frozenset(init["allowed"])
    # modules the interpreter itself imports on the agent's behalf from C code
    # (e.g. the parser's `unicodedata` for non-ASCII identifiers, `time.strptime`)
    implicit = _frozenset(init.get("implicit", ()))
    allowed_prefixes = _tuple(a + "." for a in allowed)

    def is_allowed(name):
        if name in allowed:
            return True
        for p in allowed_prefixes:
            if name.startswith(p):
                return True
        return False

    # ------------------------------------------------------------- audit hook
    trusted_codes = set()
    state = {"booting": True, "importing": 0, "busy": False}
    MAIN = []  # the code object of main(), filled in below

    def install_hook(token):
        _trusted = trusted_codes
        _state = state
        _main = MAIN
        _gf = _getframe
        _write = _os_write
        _header = b"WXR1" + token
        _PermissionError = PermissionError
        _memoryview = memoryview
        _is_allowed = is_allowed
        _import = _real_import
        _builtin_ops = {"create": _imp_create_builtin, "exec": _imp_exec_builtin}
        _impl_code = impl_code
        _builtins_dict = builtins.__dict__
        _T = T
        _entry_codes = entry_codes
        deny_getattr = {"__code__", "f_code", "gi_code", "cr_code", "ag_code"}
        always_deny = {"sys.addaudithook", "sys.settrace", "sys.setprofile",
                       "sys._current_frames", "gc.get_objects", "gc.get_referrers",
                       "gc.get_referents", "code.__new__", "sys.monitoring.register_callback",
                       "cpython._PySys_ClearAuditHooks", "sys._setprofileallthreads",
                       "sys._settraceallthreads"}

        def caller_code():
            f = _gf(2)
            return f.f_code

        def send(payload):
            n = _len(payload)
            data = _header + n.to_bytes(4, "little") + payload
            # one write: the host recognises a reply as a single fd_write on fd 1 that
            # starts with the magic and the session token
            _write(1, data)

        def hook(event, args):
            if _state["busy"]:
                return
            booting = _state["booting"]
            if event == "wasm_exec.boot_done":
                _state["booting"] = False
                return
            if booting and not event.startswith("wasm_exec."):
                return
            _state["busy"] = True
            try:
                if event == "wasm_exec.reply":
                    if caller_code() is not _main[0]:
                        raise _PermissionError("not allowed")
                    send(args[0])
                    return
                if event == "wasm_exec.import":
                    # the real import, for the guard only; the result goes into a box
                    f = _gf(1)
                    if (f.f_code is not _impl_code or f.f_back.f_code not in _entry_codes
                            or args[0] is not _T):
                        raise _PermissionError("not allowed")
                    args = args[1:]
                    box = args[0]
                    _state["busy"] = False
                    _state["importing"] += 1
                    try:
                        box.append(_import(*args[1:]))
                    finally:
                        _state["importing"] -= 1
                    return
                if event == "wasm_exec.builtin":
                    # creating/executing built-in modules: only inside an import
                    if _state["importing"] <= 0 and not booting:
                        raise _PermissionError(
                            "loading built-in modules outside an import is not allowed")
                    box = args[0]
                    _state["busy"] = False
                    box.append(_builtin_ops[args[1]](args[2]))
                    return
                if event in always_deny:
                    raise _PermissionError(event + " is not available in the sandbox")
                if event == "object.__getattr__":
                    name = args[1]
                    if name in deny_getattr:
                        obj = args[0]
                        t = _type(obj)
                        code = None
                        if t is _FunctionType:
                            code = obj.__code__
                        elif t is _FrameType:
                            code = obj.f_code
                        if code is not None and code in _trusted and caller_code() not in _trusted:
                            raise _PermissionError("the sandbox runner's code is not accessible")
                    return
                if event == "object.__setattr__" or event == "object.__delattr__":
                    obj = args[0]
                    t = _type(obj)
                    if t is _FunctionType and obj.__code__ in _trusted:
                        raise _PermissionError("the sandbox runner's functions are read-only")
                    return
                importing = _state["importing"] > 0
                if event == "compile":
                    fn = args[1]
                    if not importing and _type(fn) is _str:
                        if not fn.startswith("<") or fn.startswith("<frozen") or fn == RUNNER_FILE:
                            raise _PermissionError(
                                "compile() with a file name that is not '<...>' is not allowed")
                    elif not importing and fn is not None and _type(fn) is not _str:
                        raise _PermissionError("compile() file name must be a str")
                    return
                if event == "exec":
                    code = args[0]
                    if not importing and _type(code) is _CodeType:
                        fn = code.co_filename
                        if not fn.startswith("<") or fn.startswith("<frozen"):
                            raise _PermissionError("running library module code outside an import is not allowed")
                    return
                if event == "marshal.loads" or event == "marshal.load":
                    if not importing:
                        raise _PermissionError("marshal is not available in the sandbox")
                    return
                if event == "open":
                    path = args[0]
                    if _type(path) is _int:
                        raise _PermissionError("opening file descriptors is not allowed in the sandbox")
                    return
                if event == "pickle.find_class":
                    mod, attr = args
                    if _type(mod) is not _str or _type(attr) is not _str:
                        raise _PermissionError("unpickling: bad global")
                    if mod == "builtins":
                        # classes only: never __import__, eval, getattr and friends
                        ok = _type(_builtins_dict.get(attr)) is _type
                    elif mod == "copyreg":
                        ok = attr in ("_reconstructor", "__newobj__", "__newobj_ex__")
                    else:
                        ok = mod == "__main__" or _is_allowed(mod)
                    if not ok:
                        raise _PermissionError("unpickling " + mod + "." + attr
                                               + " is not allowed in the sandbox")
                    return
            finally:
                _state["busy"] = False

        sys.addaudithook(hook)

    # ---------------------------------------------------------- import guard
    #
    # The guard is `MethodType(guard_call, T)`: a bound method (an immutable C object) of
    # a plain function over an immutable tuple T. None of the guard functions looks up a
    # global or builtin name or an attribute of a mutable class, so editing dicts, cells,
    # classes or builtins cannot change what they decide. Their code objects are hidden by
    # the audit hook, and the real import happens inside the hook, which checks that it is
    # asked by guard_impl called from a guard entry point.
    _real_import = builtins.__import__

    def guard_impl(T, name, globals, locals, fromlist, level):
        (getframe, audit, str_copy, allowed_set, prefixes, implicit_set, ModuleType,
         module_dict, type_, str_, int_, tuple_, list_, dict_, len_, isinstance_, getattr_,
         sorted_, repr_, ImportError_, TypeError_, ValueError_, range_, impl) = T
        if type_(name) is not str_:
            if not isinstance_(name, str_):
                raise TypeError_("module name must be str")
            name = str_copy(name)
        if type_(level) is not int_:
            if not isinstance_(level, int_):
                raise TypeError_("level must be an int")
            level = int_.__index__(level)
        items = list_()
        if fromlist is not None:
            for item in fromlist:
                if type_(item) is not str_:
                    if not isinstance_(item, str_):
                        raise TypeError_("fromlist items must be str")
                    item = str_copy(item)
                items.append(item)
        fl = tuple_(items)
        caller = getframe(2)  # 0: guard_impl, 1: guard entry point, 2: who asked
        filename = caller.f_code.co_filename
        box = list_()
        if type_(filename) is str_ and (not filename.startswith("<")
                                        or filename.startswith("<frozen")):
            # library code importing for itself (json importing re): not policed
            audit("wasm_exec.import", T, box, name, globals, locals, fl, level)
            return box[0]
        absname = name
        if level > 0:
            package = None
            if type_(globals) is dict_:
                pkg = dict_.get(globals, "__package__")
                modname = dict_.get(globals, "__name__")
                if type_(pkg) is str_ and pkg:
                    package = pkg
                elif pkg is None and type_(modname) is str_:
                    package = modname if "__path__" in globals else modname.rpartition(".")[0]
            if not package:
                raise ImportError_("attempted relative import with no known parent package")
            bits = package.rsplit(".", level - 1)
            if len_(bits) < level:
                raise ImportError_("attempted relative import beyond top-level package")
            absname = bits[0] + "." + name if name else bits[0]
        if not absname:
            raise ValueError_("Empty module name")

        def refuse(modname):
            return ImportError_("Import of '" + modname + "' is not allowed. Allowed imports: "
                                + repr_(sorted_(allowed_set)), name=modname)

        lasti = caller.f_lasti
        statement = lasti >= 0 and caller.f_code.co_code[lasti] == 108  # IMPORT_NAME
        names = [absname]
        if fl:
            for item in fl:
                if item != "*" and item[:2] != "__":
                    names.append(absname + "." + item)
        verdicts = list_()
        for n in names:
            ok = n in allowed_set
            if not ok:
                for p in prefixes:
                    if n.startswith(p):
                        ok = True
                        break
            verdicts.append(ok)
        whole = verdicts[0] or (not statement and absname in implicit_set)
        children = list_()
        if not whole:
            if len_(names) == 1 or len_(names) != len_(fl) + 1:
                raise refuse(absname)
            for i in range_(1, len_(names)):
                if not verdicts[i]:
                    raise refuse(names[i])
                children.append(fl[i - 1])
        audit("wasm_exec.import", T, box, absname, None, None, fl, 0)
        top = box[0]
        for item in children:
            if not isinstance_(getattr_(top, item, None), ModuleType):
                try:
                    audit("wasm_exec.import", T, box, absname + "." + item, None, None,
                          ("__name__",), 0)
                except ImportError_:
                    pass
        if type_(top) is not ModuleType:
            raise ImportError_("import of '" + absname + "' did not produce a module")
        if fl:
            if whole:
                return top
            view = ModuleType("<restricted " + absname + ">")
            d = module_dict(view)
            for item in children:
                d[item] = getattr_(top, item)
            return view
        first = absname.partition(".")[0]
        ok_first = first in allowed_set or (not statement and first in implicit_set)
        if ok_first:
            return top
        # `import a.b.c` binds `a`: a stand-in holding only the allowed path
        view = ModuleType("<restricted " + first + ">")
        cur = view
        obj = top
        parts = absname.split(".")
        prefix = first
        for i in range_(1, len_(parts)):
            obj = getattr_(obj, parts[i])
            prefix = prefix + "." + parts[i]
            ok = prefix in allowed_set
            if not ok:
                for p in prefixes:
                    if prefix.startswith(p):
                        ok = True
                        break
            if ok:
                module_dict(cur)[parts[i]] = obj
                break
            nxt = ModuleType("<restricted " + prefix + ">")
            module_dict(cur)[parts[i]] = nxt
            cur = nxt
        return view

    def guard_call(T, name, globals=None, locals=None, fromlist=(), level=0):
        """The sandbox's __import__: applies the import allow-list to agent code."""
        return T[23](T, name, globals, locals, fromlist, level)

    def guard_import_module(T, name, package=None):
        """importlib.import_module, routed through the sandbox's import guard."""
        type_, str_, TypeError_ = T[8], T[9], T[20]
        level = 0
        if type_(name) is str_ and name.startswith("."):
            if not package:
                raise TypeError_("the 'package' argument is required to perform a "
                                 "relative import for " + name)
            for character in name:
                if character != ".":
                    break
                level += 1
            return T[23](T, name[level:], {"__package__": package, "__name__": package},
                         None, ("__name__",), level)
        return T[23](T, name, None, None, ("__name__",), 0)

    def guard_builtin(T, what, arg):
        box = T[12]()
        T[1]("wasm_exec.builtin", box, what, arg)
        return box[0]

    T = (_getframe, _audit, _str_copy, allowed, allowed_prefixes, implicit, _ModuleType,
         _module_dict, _type, _str, _int, _tuple, _list, _dict, _len, _isinstance, getattr,
         sorted, repr, ImportError, TypeError, ValueError, range, guard_impl)
    guard = types.MethodType(guard_call, T)
    guard_import = types.MethodType(guard_import_module, T)
    guard_create_builtin = types.MethodType(guard_builtin, T)
    impl_code = guard_impl.__code__
    entry_codes = {guard_call.__code__, guard_import_module.__code__}
    for fn in (guard_impl, guard_call, guard_import_module, guard_builtin):
        trusted_codes.add(fn.__code__)
    for fn in (read_exact, read_request, json_loads, json_dumps, json_dumps_checked,
               is_allowed, _no_default):
        trusted_codes.add(fn.__code__)
    import _imp
    _imp_create_builtin = _imp.create_builtin
    _imp_exec_builtin = _imp.exec_builtin
    install_hook(token)
    del token, init["token"]
    _imp.create_builtin = functools.partial(guard_create_builtin, "create")
    _imp.exec_builtin = functools.partial(guard_create_builtin, "exec")
    for fn in (read_exact, read_request, json_loads, json_dumps, json_dumps_checked,
               is_allowed, _no_default):
        trusted_codes.add(fn.__code__)

    # ----------------------------------------------------- agent environment
    def _exit(code=None):
        raise SystemExit(code)

    def _unavailable(*args, **kwargs):
        raise RuntimeError("this function is not available in the sandbox")

    agent_builtins = _dict(builtins.__dict__)
    for k in ("__loader__", "__spec__", "breakpoint", "help", "copyright", "credits",
              "license"):
        agent_builtins.pop(k, None)
    agent_builtins["__import__"] = guard
    agent_builtins["exit"] = _exit
    agent_builtins["quit"] = _exit
    agent_builtins["breakpoint"] = _unavailable
    trusted_codes.add(_exit.__code__)
    trusted_codes.add(_unavailable.__code__)

    def new_namespace():
        ns = {"__name__": "__main__", "__doc__": None, "__package__": None,
              "__builtins__": agent_builtins}
        mod = _ModuleType("__main__")
        d = _module_dict(mod)
        d.clear()
        d.update(ns)
        return mod, d

    main_module, ns = new_namespace()
    sys.modules["__main__"] = main_module

    # signal handlers receive frames and run at arbitrary points: none for the agent
    try:
        import _signal
        import signal
        signal.signal = _unavailable
        _signal.signal = _unavailable
    except ImportError:
        pass
    builtins.__import__ = guard
    sys.breakpointhook = _unavailable
    sys.stdin = None
    try:
        import importlib
        importlib.import_module = guard_import
        importlib.__import__ = guard
    except ImportError:
        pass

    # ------------------------------------------------------------ execution
    stdout = sys.stdout
    stderr = sys.stderr
    # line buffered: what was printed before a limit stopped the call is kept
    for stream in (stdout, stderr):
        stream.reconfigure(line_buffering=True, errors="backslashreplace")
    sources = {}
    source_order = []
    MAX_SOURCES = 32

    def format_tb(exc):
        """Traceback lines of the agent's own frames (the runner's frames are skipped)."""
        lines = []
        try:
            tb = _tb_of(exc)
        except _BaseException:
            return ""
        count = 0
        while tb is not None and count < 200:
            f = tb.tb_frame
            code = f.f_code
            fn = _join((code.co_filename,))
            if fn != RUNNER_FILE:
                qn = _join((code.co_name,))
                lineno = tb.tb_lineno
                lines.append('  File "' + fn + '", line ' + _str(lineno) + ", in " + qn + "\n")
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
            tname = _join((_type_qualname(cls),))
        except _BaseException:
            tname = "Exception"
        try:
            mod = _type_module(cls)
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
        if _isinstance(exc, SyntaxError):
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

    def flush_streams():
        for s in (stdout, stderr):
            try:
                s.flush()
            except _BaseException:
                pass

    # headroom for reporting a MemoryError and for the next call's compile: freed when the
    # agent's code runs out of memory, taken back once memory is available again
    reserve = [bytearray(4 << 20)]

    def run_call(req, cell_no):
        code_text = req["code"]
        filename = "<cell-" + _str(cell_no) + ">"
        lines = code_text.splitlines()
        sources[filename] = lines
        source_order.append(filename)
        if _len(source_order) > MAX_SOURCES:
            sources.pop(source_order.pop(0), None)
        values = req.get("globals")
        if values:
            for k, v in values.items():
                ns[k] = v
        reply = {"id": req["id"], "ok": True}
        sys.stdout = stdout
        sys.stderr = stderr
        try:
            compiled = _compile(code_text, filename, "exec", dont_inherit=True)
            _exec(compiled, ns)
        except _BaseException as exc:
            if _isinstance(exc, MemoryError):
                reserve[0] = None
            reply["ok"] = False
            try:
                tname, msg, text = describe(exc)
            except _BaseException:
                tname, msg, text = "Exception", "<unprintable>", ""
            reply["error_type"] = tname
            reply["error_message"] = msg
            reply["traceback"] = text
            del exc
        sys.stdout = stdout
        sys.stderr = stderr
        flush_streams()
        out = {}
        errs = {}
        max_bytes = req.get("max_globals_bytes", 10_000_000)
        used = 0
        for name in req.get("return", ()):
            if name not in ns:
                errs[name] = "name '" + name + "' is not defined"
                continue
            try:
                text = json_dumps_checked(ns[name])
                text = _join((text,))
            except RecursionError:
                errs[name] = "value is nested too deeply to convert to JSON"
                continue
            except ValueError as e:
                m = _join((_str(e),)) if _type(e) is ValueError else "value cannot be converted"
                if "Circular reference" in m:
                    errs[name] = "value contains a reference cycle and cannot be converted to JSON"
                elif "digits" in m:
                    errs[name] = "integer too large to convert to JSON (over 4300 digits)"
                else:
                    errs[name] = "value cannot be converted to JSON: " + m
                continue
            except _BaseException as e:
                if _type(e) is TypeError:
                    errs[name] = _join((_str(e),)) + " (return JSON values: dict, list, str, int, float, bool, None)"
                else:
                    errs[name] = "value cannot be converted to JSON"
                continue
            if used + _len(text) > max_bytes:
                errs[name] = ("value too large to return (returned globals are capped at "
                              + _str(max_bytes) + " bytes in all)")
                continue
            used += _len(text)
            out[name] = text
        reply["globals"] = out
        reply["globals_errors"] = errs
        if reserve[0] is None and reply["ok"]:
            try:
                reserve[0] = bytearray(4 << 20)
            except MemoryError:
                pass
        reply["healthy"] = reserve[0] is not None
        return reply

    # default imports are bound before the hook goes live (they are permissions)
    default_errors = {}
    for alias, modname in init.get("default_imports", {}).items():
        try:
            mod = _real_import(modname)
            for part in modname.split(".")[1:]:
                mod = getattr(mod, part)
            ns[alias] = mod
        except _BaseException as e:
            default_errors[alias] = _type_qualname(_type(e)) + ": " + _str(e)

    def main():
        cell_no = 0
        _audit("wasm_exec.boot_done")
        ready = {"id": 0, "ready": True, "errors": default_errors}
        _audit("wasm_exec.reply", json_dumps(ready).encode("utf-8"))
        del ready
        while True:
            try:
                raw = read_request()
            except EOFError:
                return
            req = json_loads(raw.decode("utf-8"))
            op = req.get("op")
            if op == "exit":
                return
            cell_no += 1
            try:
                reply = run_call(req, cell_no)
            except _BaseException as e:
                reply = {"id": req["id"], "ok": False, "error_type": "RunnerError",
                         "error_message": "the sandbox runner failed: " + _type_qualname(_type(e)),
                         "traceback": "", "globals": {}, "globals_errors": {}}
            _audit("wasm_exec.reply", json_dumps(reply).encode("utf-8"))

    MAIN.append(main.__code__)
    trusted_codes.add(main.__code__)
    for fn in (run_call, describe, format_tb, flush_streams, new_namespace, install_hook):
        trusted_codes.add(fn.__code__)
    # nothing of the runner stays in the module namespace the agent could find
    g = _getframe(1).f_globals
    g.clear()
    g["__builtins__"] = builtins
    return main


_wasm_exec_boot()()
