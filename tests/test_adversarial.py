"""Adversarial suite (issue 3): each case asserts that the attack failed AND that the
executor still works afterwards.

Import bypass cases run with a small allow-list (json, math, pickle, importlib, time) and
must never hand the agent a module object for a refused module (``os``, ``posix``,
``sys``, ``subprocess``, ``socket``...). They set ``got`` to that object if they succeed.
"""

from __future__ import annotations

import os
import textwrap

import pytest

from wasm_exec import PythonExecExecutor
from wasm_exec.fsnodes import SCRATCH_ROOT, ZIP_PATH
from wasm_exec.vfs import GUEST_ENV

ALLOWED = ["json", "math", "pickle", "importlib", "time", "base64"]
FORBIDDEN = ("os", "posix", "sys", "subprocess", "socket", "_socket", "io", "_io", "gc",
             "builtins", "importlib._bootstrap", "_imp", "marshal", "ctypes", "signal")


@pytest.fixture(scope="module")
def shared():
    ex = PythonExecExecutor(whitelisted_imports=ALLOWED, timeout_seconds=10)
    yield ex
    ex.close()


# An attack that looks for what it strikes (a frame, a function, a field of the guard's
# tuple) takes it with `the_one(what, candidates)`: exactly one candidate, or LookupError.
# The targets taken are listed in `reached`, and the tests compare that list with the
# targets each attack must reach: an attack that lost its aim (a renamed variable, a
# field that moved) fails its test instead of passing for a refused attack.
AIM = """
reached = []
def the_one(what, candidates):
    found = list(candidates)
    if len(found) != 1:
        raise LookupError('the attack lost its aim: ' + what + ' (' + str(len(found))
                          + ' candidates)')
    reached.append(what)
    return found[0]
"""
# the guard's tuple (``__import__.__self__``) holds the guard function and the request
# slot: attacks find them by name, never by position
GUARD_IMPL = ("the_one('guard_impl', [x for x in __import__.__self__ "
              "if getattr(x, '__name__', None) == 'guard_impl'])")
REQUEST_SLOT = ("the_one('the request slot', [x for x in __import__.__self__ "
                "if getattr(x, '__name__', None) == '<lambda>'])")


def run_attack(ex, code: str):
    wrapped = (AIM + "got = None\nattack_error = None\ntry:\n"
               + textwrap.indent(textwrap.dedent(code).strip("\n"), "    ")
               + "\nexcept BaseException as e:\n    attack_error = type(e).__name__ + ': ' + str(e)\n"
               + "got_name = getattr(got, '__name__', None) if got is not None else None\n"
               + "got_repr = repr(got)[:200]\n"
               + "got_attrs = len([a for a in dir(got) if not a.startswith('__')]) "
               + "if got is not None else 0\n")
    return ex.execute(wrapped, return_globals=["got_name", "got_repr", "attack_error",
                                               "got_attrs", "reached"])


def assert_reached_and_refused(r, name: str, refusal: str | None, aims=()) -> None:
    """The attack took each target it aims at (`aims`, in order) and ran into `refusal`
    (how its error starts; None: it ran to its end without one). An attack whose own
    set-up failed (a KeyError for a module that is not loaded, say) would otherwise pass
    for a refused one."""
    assert r.success, (name, r.error)
    assert r.globals["reached"] == list(aims), (name, r.globals)
    error = r.globals["attack_error"]
    if refusal is None:
        assert error is None, (name, r.globals)
    else:
        assert error is not None and error.startswith(refusal), (name, refusal, r.globals)


# refusals the attacks below run into (how their errors start)
NOT_READABLE = "PermissionError: the sandbox runner's code is not accessible"
READ_ONLY = "PermissionError: the sandbox runner's functions are read-only"
NOT_ALLOWED = "PermissionError: not allowed"  # (the hook: a request not from a role)
OS_REFUSED = "ImportError: Import of 'os' is not allowed"
OS_PATH_REFUSED = "ImportError: Import of 'os.path' is not allowed"
SANDBOX_VIEW = "module 'importlib (sandbox view)' has no attribute '_bootstrap'"


def assert_still_works(ex):
    r = ex.execute("still = 21 * 2", return_globals=["still"])
    assert r.success and r.globals == {"still": 42}, r


IMPORT_BYPASSES = {
    "import_stmt": "import os as got",
    "import_dotted": "import os.path\ngot = os",
    "from_import": "from os import path as got",
    "from_star": "from os import *\ngot = getcwd",
    "import_posix": "import posix as got",
    "import_sys": "import sys as got",
    "dunder_import": "got = __import__('os')",
    "builtins_dict": "got = __builtins__['__import__']('os')",
    "print_self": "got = print.__self__.__import__('os')",
    "print_self_dict": "got = print.__self__.__dict__['__import__']('os')",
    "exec_stmt": "ns = {}\nexec('import os as got', ns)\ngot = ns['got']",
    "exec_fresh_globals_real_builtins": (
        "ns = {'__builtins__': print.__self__}\nexec('import os as got', ns)\ngot = ns['got']"),
    "eval_dunder": "got = eval(\"__import__('os')\")",
    "compile_exec": "ns = {}\nexec(compile('import os as got', '<x>', 'exec'), ns)\ngot = ns['got']",
    "exec_in_module_dict": "import json\nexec('import os as got', json.__dict__)\ngot = json.__dict__['got']",
    "compile_forged_filename": (
        "import json\nc = compile('import os as got', json.__file__, 'exec')\nns = {}\n"
        "exec(c, ns)\ngot = ns['got']"),
    "compile_frozen_filename": (
        "c = compile('import os as got', '<frozen os>', 'exec')\nns = {}\nexec(c, ns)\ngot = ns['got']"),
    "code_replace_filename": (
        "c = compile('import os as got', '<x>', 'exec').replace(co_filename='/usr/lib/x.py')\n"
        "ns = {}\nexec(c, ns)\ngot = ns['got']"),
    "importlib_import_module": "import importlib\ngot = importlib.import_module('os')",
    "importlib_dunder_import": "import importlib\ngot = importlib.__import__('os')",
    "importlib_relative": "import importlib\ngot = importlib.import_module('.path', 'os')",
    "relative_forged_package": "__package__ = 'os'\nfrom . import path as got",
    "relative_forged_name": "__package__ = None\n__name__ = 'os.x'\nfrom . import path as got",
    "dunder_import_level": "got = __import__('path', {'__package__': 'os'}, None, ['sep'], 1)",
    "builtins_loader": "got = __builtins__['__loader__'].load_module('posix')",
    "print_self_loader": "got = print.__self__.__loader__.load_module('posix')",
    "math_loader_create": (
        "import math\nL = math.__loader__\nspec = math.__spec__\nspec.name = 'posix'\n"
        "got = L.create_module(spec)"),
    "json_loader_load_module": "import json\ngot = json.__loader__.load_module('os')",
    "importlib_spec_loader": (
        "import json\nimport importlib.util\ns = importlib.util.find_spec('os')\n"
        "got = importlib.util.module_from_spec(s)\ns.loader.exec_module(got)"),
    "imp_create_builtin": (
        "import importlib\nimp = importlib._bootstrap._imp\n"
        "got = imp.create_builtin(importlib.machinery.ModuleSpec('posix', None))"),
    "pickle_find_class": (
        "import pickle\ngot = pickle.loads(b'cos\\nsystem\\n.')"),
    "pickle_reduce_import": (
        "import pickle\ngot = pickle.loads(b'cbuiltins\\n__import__\\n(Vos\\ntR.')"),
    "chr_built_name": "got = __import__(chr(111) + chr(115))",
    "fullwidth_identifier": "import ｏｓ as got",
    "coding_cookie": (
        "ns = {}\nexec(b'# -*- coding: rot13 -*-\\nvzcbeg bf nf tbg\\n', ns)\ngot = ns.get('got')"),
    "breakpoint": "breakpoint()\nimport os as got",
    "help_builtin": "help(print)\nimport os as got",
    "guard_tuple_items": (
        "for x in __import__.__self__:\n    try:\n        m = x('os')\n    except Exception:\n"
        "        continue\n    if getattr(m, '__name__', None) == 'os': got = m"),
    "guard_via_library_callback": (
        "import json\ngot = json.loads('{}', object_hook=lambda d: __import__('os'))"),
    "import_module_in_library_callback": (
        "import json, importlib\n"
        "got = json.loads('{}', object_hook=lambda d: importlib.import_module('os'))"),
    "str_subclass_name": (
        "class S(str):\n    def startswith(self, *a): return True\n"
        "    def __eq__(self, o): return True\n    __hash__ = str.__hash__\n"
        "got = __import__(S('os'))"),
    "facade_sibling_fallback": "from json import os as got",
}


# how each import bypass is refused (its error starts so; None: it ends without one)
IMPORT_REFUSALS = {
    "import_stmt": OS_REFUSED,
    "import_dotted": OS_PATH_REFUSED,
    "from_import": OS_PATH_REFUSED,
    "from_star": OS_REFUSED,
    "import_posix": "ImportError: Import of 'posix' is not allowed",
    "import_sys": "ImportError: Import of 'sys' is not allowed",
    "dunder_import": OS_REFUSED,
    "builtins_dict": OS_REFUSED,
    "print_self": OS_REFUSED,
    "print_self_dict": OS_REFUSED,
    "exec_stmt": OS_REFUSED,
    "exec_fresh_globals_real_builtins": OS_REFUSED,
    "eval_dunder": OS_REFUSED,
    "compile_exec": OS_REFUSED,
    "exec_in_module_dict": OS_REFUSED,
    "compile_forged_filename": "PermissionError: compile() with a file name that is not",
    "compile_frozen_filename": "PermissionError: compile() with a file name that is not",
    "code_replace_filename": "PermissionError: code.__new__ is not available in the sandbox",
    "importlib_import_module": OS_REFUSED,
    "importlib_dunder_import": OS_REFUSED,
    "importlib_relative": OS_PATH_REFUSED,
    "relative_forged_package": OS_PATH_REFUSED,
    "relative_forged_name": OS_PATH_REFUSED,
    "dunder_import_level": "ImportError: Import of 'os.path.sep' is not allowed",
    # (the agent's builtins have no __loader__; the real builtins' is print_self_loader)
    "builtins_loader": "KeyError: '__loader__'",
    "print_self_loader": "PermissionError: loading built-in modules outside an import",
    "math_loader_create": "PermissionError: a built-in module may be created only by the "
                          "import of its name",
    "json_loader_load_module": "PermissionError: marshal is not available in the sandbox",
    # (an empty module object: its code is refused; CPython reports the refused
    # unmarshalling of the frozen code so)
    "importlib_spec_loader": "ImportError: Frozen object named 'os' is invalid",
    "imp_create_builtin": "AttributeError: " + SANDBOX_VIEW,
    "pickle_find_class": "PermissionError: unpickling os.system is not allowed",
    "pickle_reduce_import": "PermissionError: unpickling builtins.__import__ is not allowed",
    "chr_built_name": OS_REFUSED,
    "fullwidth_identifier": OS_REFUSED,
    "coding_cookie": "SyntaxError: 'rot13' is not a text encoding",
    "breakpoint": "RuntimeError: this function is not available in the sandbox",
    "help_builtin": "NameError: name 'help' is not defined",
    "guard_tuple_items": None,  # (its `got` is a new, empty module named os)
    "guard_via_library_callback": OS_REFUSED,
    "import_module_in_library_callback": OS_REFUSED,
    "str_subclass_name": OS_REFUSED,
    "facade_sibling_fallback": "ImportError: cannot import name 'os' from 'json'",
}


def test_every_import_bypass_says_how_it_is_refused():
    assert set(IMPORT_REFUSALS) == set(IMPORT_BYPASSES)


@pytest.mark.parametrize("name", sorted(IMPORT_BYPASSES))
def test_import_bypass_fails(shared, name):
    # (a fresh interpreter for each: an earlier attack that changed the import machinery
    # made later imports refused for that reason, before this attack ran)
    shared.reset()
    r = run_attack(shared, IMPORT_BYPASSES[name])
    assert_reached_and_refused(r, name, IMPORT_REFUSALS[name])
    got = r.globals.get("got_name")
    # a refused module must not be obtained (an empty, never-executed module object that
    # importlib.util.module_from_spec makes is not a module the agent can use)
    assert not (got in FORBIDDEN and r.globals.get("got_attrs")), (name, r.globals)
    assert_still_works(shared)


# ---------------------------------------------------------------- tampering with the guard
TAMPERING = {
    "guard_setattr": "__import__.__func__ = None\ngot = __import__('os')",
    "guard_code_read": "got = __import__.__func__.__code__",
    "guard_impl_code_read": f"got = {GUARD_IMPL}.__code__",
    "guard_code_replace": "f = __import__.__func__\nf.__code__ = (lambda *a, **k: None).__code__\n"
                          "got = __import__('os')",
    "guard_defaults": "__import__.__func__.__defaults__ = (1, 2, 3, 4)\ngot = __import__('os')",
    "guard_impl_direct": (
        f"T = __import__.__self__\ngot = {GUARD_IMPL}(T, 'os', None, None, (), 0)"),
    "guard_impl_from_library_callback": (
        f"import json\nT = __import__.__self__\nG = {GUARD_IMPL}\n"
        "got = json.loads('{}', object_hook=lambda d: G(T, 'os', None, None, (), 0))"),
    "guard_globals_poison": (
        "g = __import__.__func__.__globals__\ng['isinstance'] = lambda *a: True\n"
        "g['len'] = lambda *a: 0\ngot = __import__('os')"),
    "guard_tuple_swap": (
        "import json\nT = list(__import__.__self__)\n"
        f"i = the_one('the allow-list', [i for i, x in enumerate(T) if x == {frozenset(ALLOWED)!r}])\n"
        "T[i] = frozenset({'os'})\ngot = __import__.__func__(tuple(T), 'os')"),
    "real_builtins_poison": (
        "b = print.__self__\nb.isinstance = lambda *a: True\nb.len = lambda *a: 0\n"
        "got = __import__('os')"),
    "gc_get_objects": "import gc as g\ngot = g",
    "gc_via_attribute": "import json\ngot = json.codecs.sys.modules['gc'].get_objects()",
    "settrace": "import json\njson.codecs.sys.settrace(lambda *a: None)\ngot = 1",
    "addaudithook": (
        "import json\ncalled = []\njson.codecs.sys.addaudithook(lambda *a: called.append(a))\n"
        "compile('1', '<x>', 'exec')\nif called: got = called\nelse: raise RuntimeError('not added')"),
    "frame_walk_to_runner_code": (
        "try:\n    1/0\nexcept Exception as e:\n    f = e.__traceback__.tb_frame\n"
        "codes = []\nwhile f is not None:\n    codes.append(f.f_code)\n    f = f.f_back\n"
        "got = codes"),
    "fake_reply_request": (
        f"REQ = {REQUEST_SLOT}\nREQ.__defaults__ = ('reply', [], b'{{}}')\ngot = 1"),
    "fake_read_request": (
        f"REQ = {REQUEST_SLOT}\nbox = []\nREQ.__defaults__ = ('read', box)\ngot = box[0]"),
    "fake_grant_request": (
        f"T = __import__.__self__\nREQ = {REQUEST_SLOT}\nbox = []\n"
        "REQ.__defaults__ = ('grant', box, T, 'os', 'os', (), ())\ngot = box[0]('os')"),
    # (each event is raised, whether the hook refuses the one before or not: `reached`
    # lists them with the hook's answer)
    "forged_audit_event_hash": (
        "import json\nsys = json.codecs.sys\nseen = []\nclass K:\n"
        "    def __hash__(self):\n        seen.append(sys._getframe(1).f_code.co_name)\n        return 0\n"
        "    def __eq__(self, o): return False\n"
        "class E(str):\n    def __hash__(self):\n        seen.append(sys._getframe(1).f_code.co_name)\n        return 0\n"
        "for event, *args in [('object.__getattr__', 0, K()), ('open', K()),\n"
        "                     ('pickle.find_class', K(), K()), ('compile', K(), K()),\n"
        "                     (E('object.__getattr__'), 0, '__code__')]:\n"
        "    try:\n        sys.audit(event, *args)\n        reached.append(event + ' passed')\n"
        "    except PermissionError:\n        reached.append(event + ' refused')\n"
        "if seen: got = seen"),
    "frame_locals_bomb": (
        "import json\nsys = json.codecs.sys\nloot = []\nclass Bomb:\n    def __del__(self):\n"
        "        f = sys._getframe(1)\n        while f is not None:\n"
        "            if '_header' in f.f_locals or 'serve' in f.f_locals: loot.append(1)\n"
        "            f = f.f_back\n"
        "frames = []\nf = sys._getframe()\nwhile f is not None:\n    frames.append(f)\n    f = f.f_back\n"
        "f = the_one('run_call', [f for f in frames if 'cell_no' in f.f_locals])\n"
        "del frames\nf.f_locals['cell_no'] = Bomb()\ndel f\n"
        "__import__('json')\nif loot: got = loot"),
    "monitoring_callback": (
        "import json\nm = json.codecs.sys.monitoring\nm.use_tool_id(3, 'x')\n"
        "m.register_callback(3, m.events.PY_START, lambda *a: None)\ngot = 1"),
    # (the runner imports _signal at boot; the signal module, loaded or not, wraps it)
    "signal_handler_frames": (
        "import json\ns = json.codecs.sys.modules['_signal']\ns.signal(2, lambda *a: None)\ngot = 1"),
    "marshal_code": (
        "import json\nm = json.codecs.sys.modules['marshal']\n"
        "got = m.loads(m.dumps(compile('1', '<x>', 'exec')))"),
}


# how each tampering attack is refused (its error starts so; None: it ends without one)
TAMPERING_REFUSALS = {
    "guard_setattr": "AttributeError: readonly attribute",
    "guard_code_read": NOT_READABLE,
    "guard_impl_code_read": NOT_READABLE,
    "guard_code_replace": READ_ONLY,
    "guard_defaults": READ_ONLY,
    "guard_impl_direct": NOT_ALLOWED,
    "guard_impl_from_library_callback": NOT_ALLOWED,
    "guard_globals_poison": OS_REFUSED,
    "guard_tuple_swap": NOT_ALLOWED,
    "real_builtins_poison": OS_REFUSED,
    "gc_get_objects": "ImportError: Import of 'gc' is not allowed",
    "gc_via_attribute": "RuntimeError: this function is not available in the sandbox",
    "settrace": "PermissionError: sys.settrace is not available in the sandbox",
    "addaudithook": "RuntimeError: not added",
    "frame_walk_to_runner_code": NOT_READABLE,
    "fake_reply_request": NOT_ALLOWED,
    "fake_read_request": NOT_ALLOWED,
    "fake_grant_request": NOT_ALLOWED,
    "forged_audit_event_hash": None,
    "frame_locals_bomb": None,
    "monitoring_callback": "PermissionError: sys.monitoring.register_callback is not available",
    "signal_handler_frames": "RuntimeError: this function is not available in the sandbox",
    "marshal_code": "PermissionError: marshal is not available in the sandbox",
}
# what the attacks that look for their target must have taken
TAMPERING_AIMS = {
    "guard_impl_code_read": ["guard_impl"],
    "guard_impl_direct": ["guard_impl"],
    "guard_impl_from_library_callback": ["guard_impl"],
    "guard_tuple_swap": ["the allow-list"],
    "fake_reply_request": ["the request slot"],
    "fake_read_request": ["the request slot"],
    "fake_grant_request": ["the request slot"],
    "forged_audit_event_hash": ["object.__getattr__ passed", "open passed",
                                "pickle.find_class refused", "compile refused",
                                "object.__getattr__ passed"],
    "frame_locals_bomb": ["run_call"],
}


def test_every_tampering_attack_says_how_it_is_refused():
    assert set(TAMPERING_REFUSALS) == set(TAMPERING)
    assert set(TAMPERING_AIMS) <= set(TAMPERING)


@pytest.mark.parametrize("name", sorted(TAMPERING))
def test_tampering_fails(shared, name):
    shared.reset()  # (a fresh interpreter: no earlier attack's traces stand in its way)
    r = run_attack(shared, TAMPERING[name])
    assert_reached_and_refused(r, name, TAMPERING_REFUSALS[name], TAMPERING_AIMS.get(name, ()))
    assert r.globals.get("got_repr") == "None", (name, r.globals)
    assert_still_works(shared)
    # attacks that plant something for later (finalizers) must find nothing either
    late = shared.execute("late = [x for x in globals().get('loot', [])]", return_globals=["late"])
    assert late.globals.get("late", []) == [], (name, late.globals)
    # the guard still refuses
    r = shared.execute("import os")
    assert not r.success and r.error_type == "ImportError"


# ------------------------------------------------------- filesystem, network, processes
# These run where the agent may import os (the minimal runtime does not load os for
# itself, so without it these attacks found nothing to strike); the same functions are
# reached through posix, which the interpreter always has.
GUEST_ROOT = {ZIP_PATH.split("/")[1], "dev", SCRATCH_ROOT.strip("/")}
POSIX = "import json\nposix = json.codecs.sys.modules['posix']\n"
HOST_ACCESS = {
    "read_etc_passwd": "got = open('/etc/passwd').read()",
    "read_proc_environ": "got = open('/proc/self/environ', 'rb').read()",
    # (the guest's own root holds the standard library, /dev and its scratch /tmp only)
    "list_root": f"import os\ngot = sorted(set(os.listdir('/')) - {GUEST_ROOT!r}) or None",
    "list_root_posix": POSIX + f"got = sorted(set(posix.listdir('/')) - {GUEST_ROOT!r}) or None",
    "list_work": "import os\ngot = os.listdir('/work')",
    # (the guest's own fixed places are all it sees: nothing of the host's)
    "environ": "import os\ne = dict(os.environ)\n"
               f"got = {{k: v for k, v in e.items() if (k, v) not in {set(GUEST_ENV.items())!r}}}"
               " or None",
    "environ_posix": POSIX + "e = {k.decode(): v.decode() for k, v in posix.environ.items()}\n"
                     f"got = {{k: v for k, v in e.items() if (k, v) not in {set(GUEST_ENV.items())!r}}}"
                     " or None",
    # (/tmp is the guest's own scratch area in host memory: see test_guest_tmp_is_not_the_hosts)
    "write_file": "open('/etc/wasm_exec_pwned', 'w').write('x')\ngot = 1",
    "open_fd0": "got = open(0).read()",
    "os_system": "import os\ngot = os.system('id')",
    "subprocess": "import json\nsp = json.codecs.sys.modules['importlib'].import_module('subprocess')\n"
                  "got = sp.run(['id'])",
    "socket_connect": "import json\nimport importlib\ns = importlib.import_module('socket')\ngot = s",
    "raw_socket_via_attribute": "import os\ngot = os.open('/etc/passwd', os.O_RDONLY)",
    "subclasses_wrap_close": (
        "import os\nc = the_one('os._wrap_close', [k for k in ().__class__.__base__.__subclasses__() "
        "if k.__name__ == '_wrap_close'])\n"
        "got = c.__init__.__globals__['popen']('id').read()"),
}
NO_SUCH_FILE = "FileNotFoundError: [Errno 44] No such file or directory"
HOST_ACCESS_REFUSALS = {
    "read_etc_passwd": NO_SUCH_FILE,
    "read_proc_environ": NO_SUCH_FILE,
    "list_root": None,
    "list_root_posix": None,
    "list_work": NO_SUCH_FILE,
    "environ": None,
    "environ_posix": None,
    "write_file": NO_SUCH_FILE,
    "open_fd0": "PermissionError: opening file descriptors is not allowed in the sandbox",
    "os_system": "AttributeError: module 'os' has no attribute 'system'",
    "subprocess": "ImportError: Import of 'subprocess' is not allowed",
    "socket_connect": "ImportError: Import of 'socket' is not allowed",
    "raw_socket_via_attribute": NO_SUCH_FILE,
    "subclasses_wrap_close": "OSError: [Errno 58] wasi does not support processes",
}
HOST_ACCESS_AIMS = {"subclasses_wrap_close": ["os._wrap_close"]}


@pytest.fixture(scope="module")
def os_ex():
    ex = PythonExecExecutor(whitelisted_imports=ALLOWED + ["os"], timeout_seconds=10)
    yield ex
    ex.close()


def test_guest_tmp_is_not_the_hosts(shared, tmp_path):
    marker = f"/tmp/wasm_exec_pwned_{os.getpid()}"
    r = shared.execute(f"open({marker!r}, 'w').write('x')\ngot = open({marker!r}).read()",
                       return_globals=["got"])
    assert r.globals == {"got": "x"}, r.error
    assert not os.path.exists(marker)


def test_every_host_access_attack_says_how_it_is_refused():
    assert set(HOST_ACCESS_REFUSALS) == set(HOST_ACCESS)


@pytest.mark.parametrize("name", sorted(HOST_ACCESS))
def test_host_access_fails(os_ex, name):
    os_ex.reset()
    r = run_attack(os_ex, HOST_ACCESS[name])
    assert_reached_and_refused(r, name, HOST_ACCESS_REFUSALS[name],
                               HOST_ACCESS_AIMS.get(name, ()))
    assert r.globals.get("got_repr") == "None", (name, r.globals)
    assert_still_works(os_ex)


def test_no_file_written_on_host(shared):
    import os
    run_attack(shared, "open('/tmp/wasm_exec_pwned2', 'w').write('x')")
    assert not os.path.exists("/tmp/wasm_exec_pwned2")


# ----------------------------------------------------------------- runner tampering
# (the descriptor functions through posix, which the interpreter always has: the minimal
# runtime does not load os, and through sys.modules['os'] these attacks ran into a
# KeyError before they touched anything). `ends`: None when the tampering runs to the
# code's end (which then sets `ran`), else the error it stops at.
POSIX_BY_WALK = "import json\nposix = json.codecs.sys.modules['posix']\n"


@pytest.mark.parametrize("code,ends", [
    ("print('WXR1' + 'A' * 16 + 'xxxx{}')", None),
    (POSIX_BY_WALK + "posix.write(1, b'WXR1' + b'A' * 16 + b'\\x02\\x00\\x00\\x00{}')", None),
    ("import json\njson.codecs.sys.stdout = None\nprint('x')", None),
    (POSIX_BY_WALK + "posix.close(1)", None),
    (POSIX_BY_WALK + "posix.close(0)", None),
    ("import json\njson.dumps = None\njson.loads = None", None),
    ("print.__self__.len = None\nprint.__self__.str = None\nprint.__self__.isinstance = None", None),
    ("__builtins__.clear()", None),
    ("print.__self__.__dict__.clear()", None),
    ("import json\njson.codecs.sys.exit(3)", "SystemExit"),
    (POSIX_BY_WALK + "posix._exit(0)", "SandboxError"),  # (the interpreter exited)
    (POSIX_BY_WALK + "posix.read(0, 100)", None),
    (POSIX_BY_WALK + "posix.dup2(2, 1)", "AttributeError"),  # (WASI has no dup2)
    ("import json\njson.codecs.sys.setrecursionlimit(10**6)\ndef f(): f()\nf()", "RecursionError"),
])
def test_runner_tampering_does_not_break_the_host(make_executor, code, ends):
    ex = make_executor(whitelisted_imports=["json"], timeout_seconds=5)
    ex.execute("keep = 1")
    r = ex.execute(code + "\nran = 1", return_globals=["keep", "ran"])
    if ends is None:
        assert r.success and r.globals == {"keep": 1, "ran": 1}, (r.error, r.globals)
    else:
        assert r.error_type == ends and "ran" not in r.globals, (r.error, r.globals)
    assert r.globals in ({}, {"keep": 1}, {"keep": 1, "ran": 1})
    r = ex.execute("after = 2", return_globals=["after"])
    assert r.success and r.globals == {"after": 2}


def test_fake_reply_printed_is_plain_stdout(make_executor):
    ex = make_executor(whitelisted_imports=["json"])
    r = ex.execute("import json\nprint('WXR1' + json.dumps({'id': 1, 'ok': True}))\nreal = 1",
                   return_globals=["real"])
    assert r.success and r.globals == {"real": 1} and r.stdout.startswith("WXR1")


# ------------------------------------------------------------------ isolation
def test_two_agents_cannot_see_each_other(make_executor):
    a = make_executor(whitelisted_imports=["json"])
    b = make_executor(whitelisted_imports=["json"])
    a.execute("import json\nsecret = 'A'\njson.shared = 'A'\nprint.__self__.leak = 'A'")
    r = b.execute("import json\nv1 = getattr(json, 'shared', None)\n"
                  "v2 = getattr(print.__self__, 'leak', None)", return_globals=["v1", "v2", "secret"])
    assert r.globals == {"v1": None, "v2": None} and "secret" in r.globals_errors


# --------------------------------------------------------------- resource abuse
@pytest.mark.parametrize("code,limit", [
    ("while True:\n    try:\n        while True: pass\n    except BaseException: pass", ("fuel", "timeout")),
    ("sum(iter(int, 1))", ("fuel", "timeout")),
    ("x = 10**10**8", ("fuel", "timeout")),
    ("import time\nwhile True:\n    try: time.sleep(3600)\n    except BaseException: pass", ("timeout",)),
    ("while True:\n    print('x' * 100000)", ("fuel", "timeout")),
])
def test_resource_exhaustion_is_stopped(make_executor, code, limit):
    ex = make_executor(whitelisted_imports=["time"], timeout_seconds=1, fuel=3_000_000_000,
                       max_output_bytes=100_000)
    r = ex.execute(code)
    assert not r.success and r.limit in limit, r
    assert len(r.stdout) < 101_000
    r = ex.execute("x = 1", return_globals=["x"])
    assert r.success and not r.state_reset and (r.globals == {"x": 1})


def test_memory_bomb_is_a_memoryerror(make_executor):
    ex = make_executor(memory_bytes=64 * 1024 * 1024)
    r = ex.execute("x = 'a' * (2**30)")
    assert r.error_type == "MemoryError"
    assert_still_works(ex)


# ----------------------------------------------- findings of the first red-team review
REVIEW_BYPASSES = {
    # library functions that call a callable the agent passes in ("trampolines")
    "json_scanner_trampoline": (
        "import json.scanner\nclass S(str):\n    def __getitem__(self, i): return '\"'\n"
        "class Ctx:\n    strict=True; object_hook=None; object_pairs_hook=None; parse_float=float\n"
        "    parse_int=int; parse_constant=None; memo={}; parse_object=None; parse_array=None\n"
        "    parse_string=__import__\n"
        "got = json.scanner.py_make_scanner(Ctx())(S('os'), 0)"),
    "functools_singledispatch_trampoline": (
        "import functools\ngot = functools.singledispatch(__import__)('os')"),
    "copy_reconstruct_trampoline": "import copy\ngot = copy._reconstruct(None, None, __import__, ('os',))",
    "pickle_main_alias": "import pickle\nimp = __import__\ngot = pickle._loads(b'c__main__\\nimp\\n(Vos\\ntR.')",
    "importlib_bootstrap_gcd": "import importlib\ngot = importlib._bootstrap._gcd_import('os')",
    "from_importlib_bootstrap": "from importlib import _bootstrap\ngot = _bootstrap._gcd_import('os')",
    "runner_frame_locals": (
        "try:\n    raise Exception\nexcept Exception as e:\n    f = e.__traceback__.tb_frame.f_back\n"
        "seen = {}\nwhile f is not None:\n    if 'cell_no' in f.f_locals: reached.append('run_call')\n"
        "    seen.update(f.f_locals)\n    f = f.f_back\n"
        "for v in seen.values():\n    if type(v).__name__ == 'module' and v.__name__ in ('sys', 'os', 'posix'):\n"
        "        got = v\n    if type(v).__name__ == 'builtin_function_or_method' and "
        "getattr(v, '__self__', None) is not None and getattr(v.__self__, '__name__', '') in ('sys', 'posix'):\n"
        "        got = v.__self__"),
    "guard_tuple_builtin_self": (
        "for x in __import__.__self__:\n    m = getattr(x, '__self__', None)\n"
        "    if getattr(m, '__name__', None) == 'builtins' and 'builtins' not in reached:\n"
        "        reached.append('builtins')  # (len, isinstance... are its functions)\n"
        "    if getattr(m, '__name__', None) in ('sys', 'posix', 'os'): got = m"),
}
REVIEW_REFUSALS = {
    "json_scanner_trampoline": OS_REFUSED,
    "functools_singledispatch_trampoline": OS_REFUSED,
    "copy_reconstruct_trampoline": OS_REFUSED,
    "pickle_main_alias": OS_REFUSED,
    "importlib_bootstrap_gcd": "AttributeError: " + SANDBOX_VIEW,
    "from_importlib_bootstrap": "ImportError: cannot import name '_bootstrap' from "
                                "'importlib (sandbox view)'",
    "runner_frame_locals": None,
    "guard_tuple_builtin_self": None,
}
REVIEW_AIMS = {"runner_frame_locals": ["run_call"], "guard_tuple_builtin_self": ["builtins"]}


@pytest.fixture(scope="module")
def review_ex():
    ex = PythonExecExecutor(whitelisted_imports=["json", "functools", "copy", "pickle",
                                                 "importlib"], timeout_seconds=10)
    yield ex
    ex.close()


def test_every_review_bypass_says_how_it_is_refused():
    assert set(REVIEW_REFUSALS) == set(REVIEW_BYPASSES)


@pytest.mark.parametrize("name", sorted(REVIEW_BYPASSES))
def test_review_bypasses_fail(review_ex, name):
    review_ex.reset()
    r = run_attack(review_ex, REVIEW_BYPASSES[name])
    assert_reached_and_refused(r, name, REVIEW_REFUSALS[name], REVIEW_AIMS.get(name, ()))
    got = r.globals.get("got_name")
    assert not (got in FORBIDDEN and r.globals.get("got_attrs")), (name, r.globals)
    assert_still_works(review_ex)


def test_finalizer_cannot_observe_the_hook(make_executor):
    # a __del__ run by the garbage collector must not find the audit hook's frame. (No
    # collection runs inside the call: the runner collects after the call's answer is
    # made, so what the finalizers saw is read in the next call, with how many ran.)
    ex = make_executor(timeout_seconds=20)
    code = (
        "found = []\n"
        "ran = []\n"
        "class Spy:\n"
        "    def __init__(self): self.me = self\n"
        "    def __del__(self):\n"
        "        ran.append(1)\n"
        "        try: raise Exception\n"
        "        except Exception as e: f = e.__traceback__.tb_frame.f_back\n"
        "        while f is not None:\n"
        "            names = set(f.f_locals)\n"
        "            if names & {'_state', 'state', 'send', 'serve', 'check', '_header', 'token'}:\n"
        "                found.append(sorted(names)); return\n"
        "            f = f.f_back\n"
        "def g(): pass\n"
        "for i in range(100000):\n"
        "    Spy(); g.__code__\n"
        "    if found: break\n")
    r = ex.execute(code, return_globals=["found"])
    assert r.success, r.error
    assert r.globals["found"] == []
    r = ex.execute("n = len(ran)\nseen = found", return_globals=["n", "seen"])
    assert r.globals == {"n": 100000, "seen": []}, (r.error, r.globals)


def test_many_iovecs_do_not_exhaust_the_host(make_executor):
    import resource
    import time as _time
    ex = make_executor(whitelisted_imports=["json"], timeout_seconds=5)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = _time.monotonic()
    r = ex.execute("import json\nposix = json.codecs.sys.modules['posix']\n"
                   "try:\n    posix.writev(1, [b'A'] * 3_000_000)\nexcept OSError as e:\n    err = str(e)\n",
                   return_globals=["err"])
    assert _time.monotonic() - t < 10
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert (after - before) < 300_000  # KiB: the host did not copy millions of iovecs
    assert "Invalid argument" in r.globals.get("err", "") or not r.success
    assert_still_works(ex)


def test_guest_clocks_reveal_nothing_of_the_host(make_executor):
    a = make_executor(whitelisted_imports=["time"], fuel=None)
    b = make_executor(whitelisted_imports=["time"])
    b.execute("import time\nt0 = time.process_time()\nm0 = time.monotonic()")
    a.execute("x = 0\nfor i in range(2_000_000): x += i")
    r = b.execute("d = time.process_time() - t0\nm = time.monotonic()", return_globals=["d", "m"])
    assert r.globals["m"] < 3600  # not the host's uptime


def test_gc_is_not_reachable(make_executor):
    # sys.modules["gc"] is the runner's inert stand-in (libraries such as timeit import gc)
    ex = make_executor(whitelisted_imports=["json"])
    r = ex.execute("import json\nmods = json.codecs.sys.modules\ng = mods['gc']\ng.enable()\n"
                   "enabled = g.isenabled()\n"
                   "try:\n    g.get_objects()\n    walked = True\nexcept RuntimeError:\n    walked = False\n"
                   "try:\n    import gc\n    imported = True\nexcept ImportError:\n    imported = False\n"
                   "try:\n    __import__('gc')\n    dunder = True\nexcept ImportError:\n    dunder = False\n",
                   return_globals=["enabled", "walked", "imported", "dunder"])
    assert r.globals == {"enabled": False, "walked": False, "imported": False, "dunder": False}
    # a library's own `import gc` gets the stand-in, and nothing can make the real one
    r = ex.execute("import json\nsys = json.codecs.sys\ndel sys.modules['gc']\n"
                   "imp = sys.modules['_imp']\n"
                   "try:\n    imp.create_builtin(type(sys.implementation)(name='gc'))\n    made = True\n"
                   "except PermissionError:\n    made = False\n", return_globals=["made"])
    assert r.globals == {"made": False}


def test_gc_cannot_be_allowed():
    from wasm_exec import ConfigurationError
    with pytest.raises(ConfigurationError, match="garbage collector"):
        PythonExecExecutor(whitelisted_imports=["gc"])


def test_cyclic_garbage_is_collected_between_calls(make_executor):
    ex = make_executor(memory_bytes=64 * 1024 * 1024)
    code = ("class Node:\n    def __init__(self): self.me = self; self.pad = bytearray(100_000)\n"
            "for _ in range(100):\n    Node()\n")
    sizes = []
    for _ in range(30):  # 30 calls x 10 MB of cyclic garbage, under a 64 MB cap
        r = ex.execute(code)
        assert r.success, r.error
        sizes.append(r.memory_bytes)
    assert sizes[-1] <= sizes[5] + 16 * 1024 * 1024


def test_finalizers_still_run(ex):
    r = ex.execute("log = []\nclass D:\n    def __init__(self): self.me = self\n"
                   "    def __del__(self): log.append('finalized')\nD()\n")
    assert r.success
    assert ex.execute("n = len(log)", return_globals=["n"]).globals["n"] >= 1


def test_meta_path_finder_gets_no_import_privileges(make_executor):
    # agent code that runs during an import (here a sys.meta_path finder) must not inherit
    # the import machinery's privileges
    ex = make_executor(whitelisted_imports=["json"])
    r = ex.execute(
        "import json\nsys = json.codecs.sys\ngot = []\nasked = []\n"
        "class Finder:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        asked.append(name)\n"
        "        for mod in ('posix', 'socket', 'os'):\n"
        "            try:\n                got.append(__import__(mod).__name__)\n"
        "            except ImportError:\n                pass\n"
        "        return None\n"
        "sys.meta_path.insert(0, Finder())\n"
        "try:\n    import json.nonexistent_xyz\nexcept ImportError:\n    pass\n"
        "try:\n    'x'.encode('cp1252')\nexcept LookupError:\n    pass\n"
        # (refused by the guard before any finder is asked)
        "try:\n    __import__('encodings.nonexistent_xyz')\nexcept ImportError:\n    pass\n"
        "try:\n    import base64_nonexistent\nexcept ImportError:\n    pass\n"
        "sys.meta_path.pop(0)\n", return_globals=["got", "asked"])
    # the finder ran inside both imports: the agent's own (of an allowed name) and one the
    # interpreter made for it (the codec). It ran nothing more than the agent may.
    assert r.globals.get("asked") == ["json.nonexistent_xyz", "encodings.cp1252"], r
    assert r.globals.get("got") == [], r


SLEEPER = ("import json, time\nsys = json.codecs.sys\n"
           "class Sleeper:\n    def __del__(self): time.sleep(10**6)\n")


@pytest.mark.parametrize("where", ["in_the_collection", "after_the_answer"])
def test_sleeping_between_calls_cannot_stall_the_host(make_executor, where):
    import time as _time
    ex = make_executor(whitelisted_imports=["json", "time"], timeout_seconds=3)
    if where == "in_the_collection":
        # cyclic garbage: its finalizer runs where the runner collects, before the answer,
        # so inside the call and its time limit (`pad`: enough new objects for a collection)
        r = ex.execute(SLEEPER + "s = Sleeper()\ns.me = s\ndel s\npad = [[] for _ in range(500)]\n")
        assert r.limit == "timeout", r
    else:
        # planted in the turn's own frame (Python 3.13+ writes frame variables through):
        # dropped, and its finalizer run, when the turn ends after the answer
        r = ex.execute(SLEEPER + AIM + FRAMES
                       + "turn = the_one('the turn', [f for f in frames if 'source' in "
                       "f.f_locals and 'number' in f.f_locals])\n"
                       "turn.f_locals['source'] = Sleeper()\ndel frames, turn\n",
                       return_globals=["reached"])
        assert r.success and r.globals == {"reached": ["the turn"]}, (r.error, r.globals)
    t = _time.monotonic()
    r = ex.execute("y = 1", return_globals=["y"])
    assert _time.monotonic() - t < 10
    assert r.success and r.globals == {"y": 1}, r
    r = ex.execute("z = 1", return_globals=["z"])
    assert r.success and r.globals == {"z": 1}


SYS_BY_WALK = ("g = [c for c in ().__class__.__base__.__subclasses__() "
               "if c.__name__ == 'BuiltinImporter'][0].find_spec.__func__.__globals__\n"
               "sys = g['sys']\n")


@pytest.mark.parametrize("name,code,refusal", [
    # red-team round 3: a library function planted as a module's __getattr__ ran under a
    # granted import (through the import machinery's fromlist handling). (The package is
    # one the agent may import: the import with the fromlist is granted, and runs.)
    ("getattr_builtin_from_name_gc",
     "import json\npkg = sys.modules['json']\npkg.__getattr__ = g['_builtin_from_name']\n"
     "try:\n    __import__('json', fromlist=['gc'])\nfinally:\n    del pkg.__getattr__\n"
     "g = sys.modules.get('gc')\n"
     "got = g if g is not None and 'stand-in' not in (g.__doc__ or '') else None", None),
    ("getattr_gcd_import_socket",
     "import json\npkg = sys.modules['json']\npkg.__getattr__ = g['_gcd_import']\n"
     "try:\n    __import__('json', fromlist=['socket'])\nfinally:\n    del pkg.__getattr__\n"
     "got = sys.modules.get('socket')", None),
    ("create_builtin_gc_directly",
     "imp = sys.modules['_imp']\ngot = imp.create_builtin(type(sys.implementation)(name='gc'))",
     "PermissionError: loading that built-in module is not allowed"),
    ("create_builtin_spec_name_swap",
     "imp = sys.modules['_imp']\nclass S:\n    n = 0\n    @property\n    def name(self):\n"
     "        S.n += 1\n        return 'math' if S.n == 1 else 'gc'\n"
     "got = imp.create_builtin(S())\nif got.__name__ != 'gc': got = None",
     "PermissionError: a built-in module may be created only by the import of its name"),
])
def test_import_machinery_gadgets_fail(make_executor, name, code, refusal):
    ex = make_executor(timeout_seconds=10, whitelisted_imports=["json"])
    r = run_attack(ex, SYS_BY_WALK + code)
    assert_reached_and_refused(r, name, refusal)
    assert r.globals.get("got_repr") == "None", (name, r.globals)
    r = ex.execute(SYS_BY_WALK + "g = sys.modules.get('gc')\n"
                   "real = g is not None and getattr(g, '__doc__', '').find('stand-in') < 0",
                   return_globals=["real"])
    assert r.globals == {"real": False}
    assert_still_works(ex)


# ------------------------------------------------- red-team round 4 (runner parts)
def test_sys_modules_replaced_by_a_dict_subclass_runs_nothing_in_the_hook(make_executor):
    ex = make_executor(whitelisted_imports=["json"])
    code = (SYS_BY_WALK + "loot = []\nclass Evil(dict):\n"
            "    def items(self):\n        loot.append(1)\n        return dict.items(self)\n"
            "    def __iter__(self):\n        loot.append(1)\n        return dict.__iter__(self)\n"
            "sys.modules = Evil(sys.modules)\n")
    r = run_attack(ex, code)
    assert r.success, r.error
    ex.execute("import json\nx = json.dumps([1])")  # the hook walks the module table here
    r = ex.execute("found = list(loot)", return_globals=["found"])
    assert r.globals == {"found": []}
    assert_still_works(ex)


def test_replaced_stdout_with_finalizer_is_dropped_outside_the_hook(make_executor):
    ex = make_executor(whitelisted_imports=["json"])
    code = (SYS_BY_WALK + "seen = []\nran = []\nclass Out:\n"
            "    def write(self, s): return len(s)\n    def flush(self): pass\n"
            "    def __del__(self):\n        ran.append(1)\n        f = sys._getframe(1)\n"
            "        while f is not None:\n"
            "            if 'check' in f.f_locals or 'serve' in f.f_locals: seen.append(1)\n"
            "            f = f.f_back\n"
            "sys.stdout = Out()\n")
    run_attack(ex, code)
    r = ex.execute("print('visible')\nfound = list(seen)\nn = len(ran)",
                   return_globals=["found", "n"])
    # (it was dropped, and its finalizer ran, when the runner put its own stdout back)
    assert r.globals == {"found": [], "n": 1} and r.stdout == "visible\n"


def test_planted_str_subclass_key_in_sys_dict(make_executor):
    ex = make_executor()
    code = (SYS_BY_WALK + "hits = []\nclass K(str):\n"
            "    def __hash__(self): return hash('stdout')\n"
            "    def __eq__(self, o):\n        f = sys._getframe(1)\n"
            "        while f is not None:\n"
            "            if 'check' in f.f_locals or 'serve' in f.f_locals: hits.append(1)\n"
            "            f = f.f_back\n        return False\n"
            "sys.__dict__[K('x')] = 1\n")
    run_attack(ex, code)
    r = ex.execute("print('still printed')\nn = len(hits)", return_globals=["n"])
    assert r.stdout == "still printed\n" and r.globals == {"n": 0}


def test_closing_the_preopen_fd_is_refused():
    pytest.importorskip("wasm_exec.vfs")
    from wasm_exec.vfs import ENOTSUP, PREOPEN_FD, MemoryFS
    fs = MemoryFS(b"PK\x05\x06" + b"\x00" * 18, scratch_bytes=1 << 20)
    assert fs.fd_close(None, PREOPEN_FD) == ENOTSUP


def test_c_callback_chain_cannot_pass_for_the_runner(make_executor):
    # red-team round 5: a weakref callback made only of C callables, set off while the
    # runner's main loop drops or collects the agent's objects, adds no Python frame of
    # its own; the hook must not take its request for the runner's
    # (the chain takes its request from an iterator: once the callback has fired, the
    # iterator is empty)
    ex = make_executor(whitelisted_imports=["json", "functools"])
    r = ex.execute(
        SYS_BY_WALK + AIM
        + f"import functools\nREQUEST = {REQUEST_SLOT}\nloot = []\n"
        "asks = iter([('collect', loot, True)])\n"
        "cb = sys.modules['functools'].partial(dict.fromkeys, map(setattr, [REQUEST], "
        "['__defaults__'], asks))\n"
        "class Cyc:\n    def __init__(self): self.me = self\n"
        "wr = sys.modules['_weakref'].ref(Cyc(), cb)\npad = [[] for _ in range(500)]\n",
        return_globals=["reached"])
    assert r.success and r.globals == {"reached": ["the request slot"]}, (r.error, r.globals)
    r = ex.execute("got = len(loot)\nfired = list(asks) == []", return_globals=["got", "fired"])
    assert r.globals == {"got": 0, "fired": True}, (r.error, r.globals)
    r = ex.execute(
        SYS_BY_WALK + AIM
        + f"REQUEST = {REQUEST_SLOT}\nimport json\n"
        "payload = json.dumps({'id': 999, 'ok': True, 'globals': {}, 'globals_errors': {}}).encode()\n"
        "asks = iter([('reply', [], payload)])\n"
        "cb2 = sys.modules['functools'].partial(dict.fromkeys, map(setattr, [REQUEST], "
        "['__defaults__'], asks))\n"
        "class Cyc2:\n    def __init__(self): self.me = self\n"
        "wr2 = sys.modules['_weakref'].ref(Cyc2(), cb2)\npad = [[] for _ in range(500)]\n"
        "marker = 'ran'", return_globals=["marker", "reached"])
    assert r.globals == {"marker": "ran", "reached": ["the request slot"]}, (r.error, r.globals)
    r = ex.execute("fired = list(asks) == []", return_globals=["fired"])
    assert r.globals == {"fired": True}, (r.error, r.globals)
    assert_still_works(ex)


# red-team round 6: rebinding _imp.create_builtin over a tool tuple of the agent's
FORGED_B = SYS_BY_WALK + '''
imp = sys.modules['_imp']
orig = imp.create_builtin
B = orig.__self__
NS = type(sys.implementation)
loot = []
def evil_clear(R):
    R.__defaults__ = None
    loot.append(list(sys._getframe(1).f_locals.get('box') or ()))
def spec(name):
    return NS(name='gc' if name == TARGET else name)
outcomes = []
for tools in [tuple(B[:5]) + (evil_clear,), (B[0], spec) + tuple(B[2:])]:
    imp.create_builtin = type(orig)(orig.__func__, tools)
    sys.modules.pop(TARGET, None)
    sys.modules.pop(TOP, None)
    try:
        __import__(TOP)
        outcomes.append('imported')
    except BaseException as e:
        outcomes.append(type(e).__name__ + ': ' + str(e))
    finally:
        imp.create_builtin = orig
got_gc = [(k, repr(getattr(m, 'get_referrers'))) for k, m in list(sys.modules.items()) if hasattr(m, 'get_referrers')]
leaked = [repr(x) for x in loot if x]
'''
# f_locals write-through (Python 3.13+): a sys.meta_path finder that runs during a
# granted import rewrites the guard's variables, hoping a later request answers into a
# list it holds
FLOCALS = SYS_BY_WALK + '''
mine = []
seen = []
class Finder:
    def find_spec(self, name, path=None, target=None):
        f = sys._getframe(1)
        while f is not None:
            loc = f.f_locals
            if 'verdicts' in loc and 'box' in loc:
                seen.append(name)
                try:
                    loc['box'] = mine
                    loc['clear'] = lambda R: mine.append(list(sys._getframe(1).f_locals.get('box') or ()))
                except Exception as e:
                    seen.append(repr(e))
            f = f.f_back
        return None
sys.meta_path.insert(0, Finder())
try:
    from PKG import SUB
except BaseException as e:
    seen.append(repr(e))
finally:
    sys.meta_path.pop(0)
leaked = [repr(x) for x in mine if x]
'''


MACHINERY_CHANGED = "PermissionError: the import machinery was modified"


def run_round6_attacks(ex, pkg="xml", sub="dom"):
    """The round-6 attacks, asserting the real loader, gc and answer lists stay out of reach.
    `ex` allows math, a built-in module its interpreter has not loaded: its import creates
    it through _imp.create_builtin and nothing else, so the forged tuple reaches the
    hook. Through a library module (functools importing _functools) the import stops
    earlier: rebinding create_builtin changes the import machinery, and functools' code
    is refused before the tuple is used."""
    for target, top, refusal in (("math", "math", NOT_ALLOWED),
                                 ("_functools", "functools", MACHINERY_CHANGED)):
        r = ex.execute(f"TARGET = {target!r}\nTOP = {top!r}\n" + FORGED_B,
                       return_globals=["outcomes", "got_gc", "leaked"])
        assert r.success, r.error
        # (NOT_ALLOWED: refused by the hook, the tool tuple is not the runner's)
        outcomes = r.globals["outcomes"]
        assert len(outcomes) == 2 and all(o.startswith(refusal) for o in outcomes), r.globals
        assert r.globals["leaked"] == []
        # only the runner's inert gc stand-in, never the real module under any name
        assert all("built-in" not in shown for _name, shown in r.globals["got_gc"]), r.globals
    r = ex.execute(FLOCALS.replace("PKG", pkg).replace("SUB", sub),
                   return_globals=["seen", "leaked"])
    assert r.success, r.error
    assert r.globals["leaked"] == []
    # the finder ran inside the import, and found the guard's frame there
    assert f"{pkg}.{sub}" in r.globals["seen"], r.globals
    assert_still_works(ex)


def test_forged_loader_tools_and_rewritten_guard_locals_fail(make_executor):
    # red-team round 6: the built-in loader method rebound over a tool tuple of the
    # agent's (a `clear` that reads the answer, a spec factory that names gc); and, for
    # Python 3.13+ where f_locals writes through, a finder rewriting the guard's variables
    run_round6_attacks(make_executor(whitelisted_imports=["json", "functools", "xml", "math"]))


# red-team round 7 (Python 3.13+, where f_locals writes through, cells included): the
# runner's main loop is made to run the agent's code between building a request and
# reading the answer (a rewritten `reserve` cell), or to assign the request to an object
# of the agent's whose __setattr__ is a chain of C callables that forges a request from
# main's own request site (a rewritten `REQUEST` cell; the union then fails on the
# answer list, but the agent's code has already run at the request site).
# The main loop is `step` now (one request per turn, below `turn_step`): it reads the
# reserve through release_reserve (whose closure holds it) and its memory flag
# `pressed`, and its request sites name the slot by a constant of its code. The attacks
# plant their stand-ins there; each stand-in, whenever the runner uses it, takes any
# answer list live in the runner's frames above it.
FRAMES = """
frames = []
f = sys._getframe()
while f is not None:
    frames.append(f)
    f = f.f_back
del f
"""
MAIN_RESERVE = SYS_BY_WALK + AIM + FRAMES + '''
stash = []
loot = []
ran = []  # where the runner used the stand-ins
def peek(where):
    ran.append(where)
    f = sys._getframe(2)  # (0: peek, 1: the stand-in's method, 2: the runner's function)
    while f is not None:
        loc = f.f_locals
        if 'box' in loc and type(loc['box']) is list:
            stash.append(loc['box'])
            loc['box'] = []
        f = f.f_back
class StandIn(list):
    def __getitem__(self, i):
        peek(self.name)
        return list.__getitem__(self, i)
    def __setitem__(self, i, v):
        peek(self.name)
        list.__setitem__(self, i, v)
main = the_one('the main loop', [f for f in frames if 'box' in f.f_locals and 'req' in f.f_locals])
release = the_one('release_reserve', [v for v in main.f_locals.values()
                                      if getattr(v, '__name__', None) == 'release_reserve'])
cell = the_one('the reserve', [c for c in release.__closure__ if type(c.cell_contents) is list])
stand = StandIn(cell.cell_contents)
stand.name = 'reserve'
cell.cell_contents = stand
pressed = the_one('pressed', [main.f_locals[k] for k in ('pressed',) if k in main.f_locals])
stand = StandIn(pressed)
stand.name = 'pressed'
main.f_locals['pressed'] = stand  # (a cell: every function of the runner sharing it sees it)
del frames, main, release, cell, pressed, stand
'''
MAIN_FAKE_SLOT = SYS_BY_WALK + AIM + FRAMES + f'''
import functools
stash = []
REAL = {REQUEST_SLOT}
loot = []
main = the_one('the main loop', [f for f in frames if 'box' in f.f_locals and 'req' in f.f_locals])
turn = the_one('the turn', [f for f in frames if 'source' in f.f_locals and 'number' in f.f_locals])
# every variable of the runner's live frames (cells included) that names the slot
slot_names = []
for frame in frames[1:]:  # (the first is this cell's own)
    loc = frame.f_locals
    for name in [k for k, v in loc.items() if v is REAL]:
        slot_names.append(name)
        # forge a collect request from the runner's own request site, then put the real
        # slot back so that the runner carries on as if nothing happened
        forge = map(setattr, [REAL], ['__defaults__'], [('collect', loot, True)])
        undo = map(loc.__setitem__, [name], [REAL])
        class Fake(list):
            __setattr__ = functools.partial(set().union, forge, undo)
        loc[name] = Fake()
# where the main loop's requests name the slot: a constant of its code
step = the_one('step', [v for v in turn.f_locals.values() if getattr(v, '__name__', None) == 'step'])
refused = []
try:
    step.__code__
except PermissionError:
    refused.append('read')
try:
    step.__code__ = (lambda: None).__code__
except PermissionError:
    refused.append('replace')
del frames, main, turn, step, frame, loc
'''
MAIN_REWRITE_CHECK = ("got = [repr(x) for x in stash if x] + [repr(x) for x in loot]\n"
                      "where = sorted(set(globals().get('ran', ())))")


def run_round7_attacks(make):
    """Rewriting the main loop's variables: the answer lists stay out of reach."""
    ex = make()
    r = ex.execute(MAIN_RESERVE, return_globals=["reached"])
    assert r.success, r.error
    assert r.globals["reached"] == ["the main loop", "release_reserve", "the reserve",
                                    "pressed"], r.globals
    r = ex.execute(MAIN_REWRITE_CHECK, return_globals=["got", "where"])
    # the runner ran the stand-ins (at the end of the call and the start of the next),
    # and no answer list was live in its frames whenever it did
    assert r.success and r.globals == {"got": [], "where": ["pressed", "reserve"]}, (
        r.error, r.globals)
    assert_still_works(ex)
    ex = make()
    r = ex.execute(MAIN_FAKE_SLOT, return_globals=["reached", "slot_names", "refused"])
    assert r.success, r.error
    # no variable of the runner names the slot, and the code that does is out of reach
    assert r.globals == {"reached": ["the request slot", "the main loop", "the turn", "step"],
                         "slot_names": [], "refused": ["read", "replace"]}, r.globals
    r = ex.execute(MAIN_REWRITE_CHECK, return_globals=["got"])
    assert r.success and r.globals == {"got": []}, (r.error, r.globals)
    assert_still_works(ex)


def test_rewritten_main_loop_variables_leak_nothing(make_executor):
    # red-team round 7 (bites on Python 3.13+; the minimal runtime must hold as well)
    run_round7_attacks(lambda: make_executor(whitelisted_imports=["json", "functools"]))


# red-team round 8: a finder made only of C callables (no agent frame on the stack) planted
# in sys.path_importer_cache, compiling and then running code under a library-looking file
# name inside a granted import; and (scientific runtime, which has a writable /tmp) a
# finder that hands importlib's own loader a file the agent wrote
C_FINDER = SYS_BY_WALK + """
import functools
import xml
src = 'def grab():\\n    import subprocess\\n    return subprocess\\n'
ns = {'__builtins__': __builtins__, '__name__': 'evil'}
codes = []
errors = []
class Fnd:
    pass
fnd = Fnd()
def run_in_import(find_spec):
    fnd.find_spec = find_spec
    target = [m for m in ('xml.sax', 'xml.sax.saxutils', 'xml.dom.pulldom', 'xml.dom.expatbuilder',
                          'xml.sax.handler', 'xml.etree.cElementTree') if m not in sys.modules][0]
    entry = list(sys.modules[target.rpartition('.')[0]].__path__)[0]
    saved = sys.path_importer_cache.get(entry)
    sys.path_importer_cache[entry] = fnd
    try:
        __import__(target)
    except BaseException as e:
        errors.append(type(e).__name__)
    finally:
        if saved is None:
            sys.path_importer_cache.pop(entry, None)
        else:
            sys.path_importer_cache[entry] = saved
run_in_import(functools.partial(set().union, map(codes.append,
              map(compile, [src], ['/usr/lib/evil/x.py'], ['exec']))))
run_in_import(functools.partial(set().union, map(exec, codes, [ns])))
try:
    got = repr(ns['grab']())
except BaseException as e:
    got = type(e).__name__
"""

TMP_FILE_LOADER = SYS_BY_WALK + """
ext = sys.modules['importlib._bootstrap_external']
boot = sys.modules['importlib._bootstrap']
with open('/tmp/evil_mod.py', 'w') as fh:
    fh.write('import subprocess\\nloaded = subprocess.__name__\\n')
class Finder:
    def find_spec(self, name, path=None, target=None):
        if name == 'xml.dom.minidom':
            loader = ext.SourceFileLoader(name, '/tmp/evil_mod.py')
            return boot.spec_from_loader(name, loader, origin='/tmp/evil_mod.py')
        return None
sys.meta_path.insert(0, Finder())
try:
    import xml.dom.minidom as m
    got = m.loaded
except BaseException as e:
    got = type(e).__name__
finally:
    sys.meta_path.pop(0)
"""


def run_round8_attacks(ex, with_tmp=False):
    r = ex.execute(C_FINDER, return_globals=["got", "codes", "errors"])
    assert r.success, r.error
    # the finder ran in the first import (its compile refused), and made nothing to run
    assert r.globals["errors"][:1] == ["PermissionError"], r.globals
    assert r.globals["got"] == "KeyError" and r.globals["codes"] == [], r.globals
    if with_tmp:
        r = ex.execute(TMP_FILE_LOADER, return_globals=["got"])
        assert r.success, r.error
        assert r.globals["got"] == "PermissionError", r.globals
    assert_still_works(ex)
    r = ex.execute("from xml.dom import minidom\nok = minidom.__name__", return_globals=["ok"])
    assert r.globals == {"ok": "xml.dom.minidom"}, r.error


def test_c_callable_finder_gets_no_import_privileges(make_executor):
    run_round8_attacks(make_executor(whitelisted_imports=["json", "functools", "xml"]))


def test_package_path_pointed_elsewhere_loads_nothing(make_executor):
    # a package's __path__ pointed at the stdlib's root would load, say, subprocess under
    # an allowed name (xml.dom.subprocess)
    ex = make_executor(whitelisted_imports=["xml"])
    r = ex.execute(
        "import xml.dom\nroot = xml.dom.__path__[0].rsplit('/xml/', 1)[0]\n"
        "xml.dom.__path__.append(root)\n"
        "try:\n    import xml.dom.subprocess as sp\n    got = repr(sp)\n"
        "except BaseException as e:\n    got = type(e).__name__\n"
        "xml.dom.__path__.pop()\n", return_globals=["got"])
    assert r.success and r.globals == {"got": "PermissionError"}, (r.error, r.globals)
    r = ex.execute("from xml.dom import minidom\nok = minidom.__name__", return_globals=["ok"])
    assert r.globals == {"ok": "xml.dom.minidom"}, r.error


# Round 9: what the import machinery loads must be the genuine code of the module it was
# asked for. Each attack below got a module that is not allowed (or code of the agent's
# own, run as "library" code) before the runner bound every load to the requested name
# and to the runtime's own .pyc files (by SHA-256).
ROUND9_PRELUDE = SYS_BY_WALK + """
before = set(sys.modules)
boot = sys.modules['importlib._bootstrap']
zmod = sys.modules['zipimport']
root = [e for e in sys.path if e.endswith('.zip')][0]
zi = zmod.zipimporter(root)
ModuleSpec = boot.ModuleSpec
def attempt(fn):
    try:
        return repr(fn())
    except BaseException as e:
        return type(e).__name__ + ': ' + str(e)
"""

ROUND9_ATTACKS = {
    # a finder answers an allowed name with the stdlib root's zipimporter: its prefix makes
    # it read <root>/subprocess.pyc for "json.subprocess"
    "zip_root_loader_under_allowed_name": """
class F:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == 'json.subprocess':
            return ModuleSpec(name, zi, origin='x')
sys.meta_path.insert(0, F)
def go():
    import json.subprocess as sp
    return sp.Popen
got = attempt(go)
sys.meta_path.remove(F)
""",
    # a finder answers with a spec of ANOTHER name (frozen os, stdlib subprocess, a
    # built-in module): the machinery loads that module and binds it as json.x
    "spec_of_another_name_frozen": """
class F:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == 'json.x':
            return ModuleSpec('os', boot.FrozenImporter, origin='frozen')
sys.meta_path.insert(0, F)
def go():
    import json.x as m
    return m.system
got = attempt(go)
sys.meta_path.remove(F)
""",
    "spec_of_another_name_zip": """
class F:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == 'json.y':
            return ModuleSpec('subprocess', zi, origin='x')
sys.meta_path.insert(0, F)
def go():
    import json.y as m
    return m.Popen
got = attempt(go)
sys.meta_path.remove(F)
""",
    "spec_of_another_name_builtin": """
class F:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == 'json.z':
            return ModuleSpec('_posixsubprocess' if '_posixsubprocess' in
                              sys.builtin_module_names else 'posix',
                              boot.BuiltinImporter, origin='built-in')
sys.meta_path.insert(0, F)
def go():
    import json.z as m
    return m
got = attempt(go)
sys.meta_path.remove(F)
""",
    # a fromlist made of C callables, iterated by the import guard itself (no frame of the
    # agent's on the stack) loading subprocess through importlib's own _gcd_import
    "fromlist_of_c_callables": """
def go():
    __import__('json', fromlist=map(boot._gcd_import, ['subprocess']))
got = attempt(go)
""",
    # importlib's loaders called by a C-callable finder during a granted import
    "c_callable_finder_loads_by_name": """
import functools
class Fnd:
    pass
fnd = Fnd()
fnd.find_spec = functools.partial(set().union, map(boot._gcd_import, ['subprocess']))
import xml
entry = list(sys.modules['xml'].__path__)[0]
saved = sys.path_importer_cache.get(entry)
sys.path_importer_cache[entry] = fnd
def go():
    import xml.sax.saxutils
    return sys.modules.get('subprocess')
got = attempt(go)
if saved is None:
    sys.path_importer_cache.pop(entry, None)
else:
    sys.path_importer_cache[entry] = saved
""",
    # a self-restoring stand-in for _io.open_code hands zipimport a .pyc of the agent's
    # own making (code compiled by the agent, relabelled as a library file): its import
    # statements would pass as the library's own
    "crafted_pyc_through_open_code": """
import json
marshal = sys.modules['marshal']
zlib = sys.modules.get('zlib')  # (loaded only where the library zip is compressed)
io_mod = sys.modules['_io']
ext = sys.modules['importlib._bootstrap_external']
toc = zmod._zip_directory_cache[root]['json/tool.pyc']
compress, data_size, file_offset = toc[1], toc[2], toc[4]
real_name = root + '/json/tool.py'
fake_name = '<' + 'x' * (len(real_name) - 2) + '>'
code = compile('import subprocess\\nstolen = subprocess.Popen\\n', fake_name, 'exec')
pyc = ext.MAGIC_NUMBER + bytes(12) + marshal.dumps(code).replace(fake_name.encode(),
                                                                   real_name.encode())
if compress:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    pyc = c.compress(pyc) + c.flush()
payload = pyc + bytes(data_size - len(pyc))
header = b'PK\\x03\\x04' + bytes(26)
class Fake:
    pos = 0
    def seek(self, pos, whence=0):
        self.pos = pos
    def read(self, n=-1):
        data = header if self.pos == file_offset else payload
        return data[:n]
    def __enter__(self):
        return self
    def __exit__(self, *a):
        return False
real_open = io_mod.open_code
opened = []
def fake_open(path):
    # (zipimport reads the module once to find it, once to load it)
    opened.append(path)
    if len(opened) == 1:
        return real_open(path)
    io_mod.open_code = real_open  # gone again before zipimport unmarshals the bytes
    return Fake()
io_mod.open_code = fake_open
def go():
    import json.tool as t
    return sorted(t.__dict__)
got = attempt(go)
io_mod.open_code = real_open
""",
}


def run_loading_attack(ex, name, attack, watched):
    """Run one attack (after ROUND9_PRELUDE) on a fresh interpreter (an earlier attack's
    change to the import machinery would refuse this one's imports before it bit): it
    must end normally, load none of the `watched` modules that were not loaded before
    it, and leave the executor working. Returns the attack's `got`."""
    ex.reset()
    r = ex.execute(ROUND9_PRELUDE + attack + f"\nleaked = [m for m in {tuple(watched)!r} "
                   "if m in sys.modules and m not in before]\n",
                   return_globals=["got", "leaked"])
    assert r.success, (name, r.error)
    assert r.globals["leaked"] == [], (name, r.globals)
    assert_still_works(ex)
    return r.globals["got"]


# how each loading attack is refused: the error its `got` shows (the attack ran to there)
LOADS_OWN_CODE_ONLY = ("PermissionError: the import machinery may load only the library's "
                       "own compiled code of the module being imported")
NOT_ALLOWED_HERE = "ModuleNotFoundError: Import of 'subprocess' is not allowed here"
ROUND9_REFUSALS = {
    "zip_root_loader_under_allowed_name": LOADS_OWN_CODE_ONLY,
    "spec_of_another_name_frozen": "PermissionError: an import may run only the code of the "
                                   "module it loads",
    "spec_of_another_name_zip": LOADS_OWN_CODE_ONLY,
    "spec_of_another_name_builtin": "PermissionError: a built-in module may be created only "
                                    "by the import of its name",
    # (the guard reads the fromlist before any import is granted: the chain's load of
    # subprocess gets no further than its code)
    "fromlist_of_c_callables": "PermissionError: marshal is not available in the sandbox",
    "c_callable_finder_loads_by_name": NOT_ALLOWED_HERE,
    "crafted_pyc_through_open_code": LOADS_OWN_CODE_ONLY,
}


def run_round9_attacks(ex, only=None):
    assert set(ROUND9_REFUSALS) == set(ROUND9_ATTACKS)
    for name, attack in ROUND9_ATTACKS.items():
        if only is not None and name not in only:
            continue
        got = run_loading_attack(ex, name, attack, ("subprocess", "os", "_posixsubprocess"))
        assert got.startswith(ROUND9_REFUSALS[name]), (name, got)
        r = ex.execute("import json.tool, xml.dom.minidom\nok = json.tool.__name__",
                       return_globals=["ok"])
        assert r.globals == {"ok": "json.tool"}, (name, r.error)


@pytest.mark.parametrize("attack", sorted(ROUND9_ATTACKS))
def test_loads_are_bound_to_the_requested_module_and_genuine_code(make_executor, attack):
    ex = make_executor(whitelisted_imports=["json", "functools", "xml"])
    run_round9_attacks(ex, only={attack})


# Round 10 (red team): a chain of C callables planted where the machinery calls it during a
# granted import (a package's module __getattr__, reached through the guard's own fromlist
# when __name__ is deleted; a self-removing sys.meta_path finder) calls LIBRARY code that
# imports a name it is handed (xml.sax's _create_parser, warnings' _getcategory, pandas'
# import_optional_dependency). The hook used to grant any such import.
ROUND10_ATTACKS = {
    "module_getattr_chain_to_create_parser": """
import json, functools, xml.sax
pkg = sys.modules['xml']
pkg.__getattr__ = functools.partial(set().union, map(xml.sax._create_parser, ['subprocess']))
saved = pkg.__name__
del pkg.__name__
def go():
    import xml
got = attempt(go)
pkg.__name__ = saved
del pkg.__getattr__
""",
    "finder_chain_to_warnings_getcategory": """
import functools, itertools, warnings
getcat = getattr(warnings, '_getcategory', None)
if getcat is None:  # 3.14+: it lives in _py_warnings
    getcat = sys.modules['_py_warnings']._getcategory
class Fnd:
    pass
fnd = Fnd()
steps = itertools.chain(map(sys.meta_path.remove, [fnd]), map(getcat, ['subprocess.X']))
fnd.find_spec = functools.partial(set().union, steps)
sys.meta_path.insert(0, fnd)
def go():
    __import__('json.no_such_module')
got = attempt(go)
if fnd in sys.meta_path:
    sys.meta_path.remove(fnd)
""",
}


# (the chain ran: the library code it reached asked for subprocess, and was refused)
ROUND10_REFUSALS = {
    "module_getattr_chain_to_create_parser": "ImportError: Import of 'subprocess.create_parser' "
                                             "is not allowed",
    "finder_chain_to_warnings_getcategory": "_OptionError: invalid module name: 'subprocess'",
}


def run_round10_attacks(ex):
    assert set(ROUND10_REFUSALS) == set(ROUND10_ATTACKS)
    for name, attack in ROUND10_ATTACKS.items():
        got = run_loading_attack(ex, name, attack, ("subprocess", "_posixsubprocess", "socket"))
        assert got.startswith(ROUND10_REFUSALS[name]), (name, got)


def test_library_code_imports_no_name_a_c_callable_chain_hands_it(make_executor):
    run_round10_attacks(make_executor(
        whitelisted_imports=["json", "functools", "itertools", "warnings", "xml"]))


# Round 14 (red team): (a) the hook read `__dict__` of an object of exact type
# _NamespacePath, whose class the agent can change: an agent __getattribute__ ran INSIDE
# the hook (its own events unchecked) and read the hook's frames (token, real __import__,
# gc, the hook's state); (b) library code reached from C inside the guard's call
# (`import json` of a loaded json reads __spec__._initializing: a property calling
# json.dumps, whose encoder was a C-callable chain) called the runner's _find_and_load
# with any name, and the load role trusted a library caller.
ROUND14_ATTACKS = {
    "namespace_path_getattribute_in_the_hook": """
import json, xml
ext = sys.modules['importlib._bootstrap_external']
NP = ext._NamespacePath
ran = []
def spy(self, name):
    ran.append(name)
    return object.__getattribute__(self, name)
old_path = xml.__path__
xml.__path__ = NP.__new__(NP)
NP.__getattribute__ = spy
try:
    import xml.dom
except BaseException:
    pass
del NP.__getattribute__
xml.__path__ = old_path
got = repr(ran)
""",
    "spec_initializing_property_calls_find_and_load": """
import json, functools
load = boot._find_and_load
class Enc:
    pass
enc = Enc()
enc.encode = functools.partial(next, map(load, ['subprocess'], [None]))
old_enc = json._default_encoder
json._default_encoder = enc
class Spec:
    _initializing = property(json.dumps)
old_spec = json.__spec__
json.__spec__ = Spec()
def go():
    import json as j2
got = attempt(go)
json.__spec__ = old_spec
json._default_encoder = old_enc
""",
}


def run_round14_attacks(ex):
    for name, attack in ROUND14_ATTACKS.items():
        got = run_loading_attack(ex, name, attack, ("subprocess", "socket", "select"))
        if name == "namespace_path_getattribute_in_the_hook":
            # the agent's __getattribute__ ran (for the import machinery), never for the hook
            assert got.startswith("['") and "__dict__" not in got, (name, got)
        else:
            # the property ran json.dumps, whose encoder's chain asked for subprocess
            assert got.startswith(NOT_ALLOWED_HERE), (name, got)


def test_no_agent_code_runs_in_the_hook_and_load_trusts_no_library_caller(make_executor):
    run_round14_attacks(make_executor(whitelisted_imports=["json", "functools", "xml"]))


# Round 16 (red team): an exception the hook raises carries the hook's own frames in its
# traceback; their f_locals (with free variables on 3.12) held the hook's closures: the
# token, the real __import__, the hook's state. Frames of the hook are now as unreachable
# as the runner's own (tb_frame and f_code are refused to agent code).
HOOK_TRACEBACK = SYS_BY_WALK + """
seen = []
try:
    sys.settrace(None)
except PermissionError as e:
    tb = e.__traceback__
while tb is not None:
    try:
        f = tb.tb_frame
        seen.append(sorted(f.f_locals))
        seen.append(f.f_code.co_name)
    except PermissionError:
        seen.append('refused')
    tb = tb.tb_next
got = repr(seen)
"""


def test_the_hooks_own_frames_are_not_reachable_from_its_exceptions(make_executor):
    ex = make_executor(whitelisted_imports=["json"])
    r = ex.execute(HOOK_TRACEBACK, return_globals=["got"])
    assert r.success, r.error
    for secret in ("'state'", "'serve'", "'check'", "'_header'", "'give'", "'hook'"):
        assert secret not in r.globals["got"], r.globals
    assert "refused" in r.globals["got"]
    assert_still_works(ex)


# Round 17 (red team): with C recursion used up to just enough to enter the hook, the
# hook's own handling of a refused event raised a second RecursionError whose context was
# the first exception, traceback (hook and check frames, with their closures) and all.
# The depth of that edge belongs to the interpreter (about 500 on Python 3.12, about
# 5,000 on the 3.13 runtime): the attack finds it first, then tries every depth of the
# band below it, from where the hook refuses as usual to where it runs out itself.
RECURSION_EDGE = SYS_BY_WALK + """
out = []
class P:
    def __repr__(self):
        try:
            sys.settrace(None)
        except BaseException as e:
            out.append(e)
        return 'p'
def nested(n):
    x = P()
    for i in range(n):
        x = [x]
    return x
def runs_out(n):
    out.clear()
    try:
        repr(nested(n))
        return False
    except RecursionError:
        return True
# the least depth whose repr runs out of C recursion before it reaches P
low, high = 1, 64
while not runs_out(high):
    low, high = high, high * 2
while high - low > 1:
    mid = (low + high) // 2
    if runs_out(mid):
        high = mid
    else:
        low = mid
leaks = []
caught = set()  # what P caught over the band: the hook's refusal, or running out in it
for n in range(high - 1, max(high - 100, 0), -1):
    out.clear()
    try:
        repr(nested(n))
    except RecursionError:
        continue
    for exc in out:
        caught.add(type(exc).__name__)
        c = exc
        while c is not None:
            tb = c.__traceback__
            while tb is not None:
                try:
                    names = sorted(tb.tb_frame.f_locals)
                except BaseException:
                    names = []
                leaks += [v for v in ('state', 'serve', 'check', 'st') if v in names]
                tb = tb.tb_next
            c = c.__context__
got = sorted(set(leaks))
caught = sorted(caught)
"""


def test_the_hook_leaks_nothing_at_the_recursion_limit(make_executor):
    ex = make_executor(whitelisted_imports=["json"])
    r = ex.execute(RECURSION_EDGE, return_globals=["got", "caught"])
    # the band reached the edge: at its shallower depths the hook refused as usual, at
    # the deepest ones the event's handling ran out of recursion
    assert r.globals.get("caught") == ["PermissionError", "RecursionError"], (r.error, r.globals)
    assert r.globals.get("got") == [], (r.error, r.globals)
    assert_still_works(ex)


# The runner's closure cells are writable (cell_contents; and a live frame's f_locals on
# Python 3.13+). time.sleep is the runner's wrapper: its closure holds flush_streams,
# whose cells (_BaseException, stdout, stderr) step, run_call and the reply's helpers
# share. Rewriting them harms only the agent's own session: the runner's handlers stop
# catching (a call then ends its turn without an answer: the interpreter is replaced) or
# call the agent's own objects, in frames where no answer list is live. The reply is the
# runner's or none, the next call gets a correct one, and a limit stop still rolls back.
FLUSH_CELLS = AIM + """
import time
flush = the_one('flush_streams', [c.cell_contents for c in time.sleep.__closure__
                                  if getattr(c.cell_contents, '__name__', None) == 'flush_streams'])
exc_cell = the_one('_BaseException', [c for c in flush.__closure__
                                      if c.cell_contents is BaseException])
out_cell = the_one('stdout', [c for c in flush.__closure__
                              if getattr(c.cell_contents, 'name', None) == '<stdout>'])
err_cell = the_one('stderr', [c for c in flush.__closure__
                              if getattr(c.cell_contents, 'name', None) == '<stderr>'])
"""
CELL_TARGETS = ["flush_streams", "_BaseException", "stdout", "stderr"]
THE_CELLS_AT_BOOT = ("import time\nf = [c.cell_contents for c in time.sleep.__closure__ "
                     "if getattr(c.cell_contents, '__name__', None) == 'flush_streams'][0]\n"
                     "at_boot = sorted(getattr(c.cell_contents, 'name', None) or "
                     "c.cell_contents.__name__ for c in f.__closure__)")


@pytest.mark.parametrize("rewrite,then", [
    # no exception is caught any more: the call whose code raises loses its interpreter
    ("class Never(BaseException): pass\nexc_cell.cell_contents = Never", "raise ValueError('x')"),
    ("exc_cell.cell_contents = Exception", "raise SystemExit(3)"),
    ("exc_cell.cell_contents = 0", "raise ValueError('x')"),
])
def test_rewritten_runner_cells_lose_only_the_agents_own_interpreter(make_executor, rewrite, then):
    ex = make_executor(whitelisted_imports=["time"], timeout_seconds=5)
    assert ex.execute("keep = 1").success
    r = ex.execute(FLUSH_CELLS + rewrite, return_globals=["reached", "keep"])
    assert r.success and r.globals == {"reached": CELL_TARGETS, "keep": 1}, (r.error, r.globals)
    r = ex.execute(then, return_globals=["keep"])
    # no answer, so none forged: the host says the interpreter was lost
    assert not r.success and r.interpreter_lost and r.limit == "protocol", r
    assert r.globals == {} and "ended its turn without answering" in r.error, r
    r = ex.execute("fresh = 2" + "\n" + THE_CELLS_AT_BOOT, return_globals=["fresh", "keep", "at_boot"])
    assert r.success and r.state_reset and r.globals == {
        "fresh": 2, "at_boot": ["<stderr>", "<stdout>", "BaseException"]}, r
    r = ex.execute("raise ValueError('y')")
    assert r.error_type == "ValueError" and not r.interpreter_lost, r


def test_rewritten_stream_cells_run_only_the_agents_own_objects(make_executor):
    ex = make_executor(whitelisted_imports=["time"], timeout_seconds=5)
    r = ex.execute(FLUSH_CELLS + "log = []\nclass Mine:\n"
                   "    def write(self, s):\n        log.append(('write', s))\n        return len(s)\n"
                   "    def flush(self):\n        log.append(('flush',))\n"
                   "out_cell.cell_contents = Mine()\nerr_cell.cell_contents = Mine()\n"
                   "print('to the real stdout')", return_globals=["reached"])
    assert r.success and r.globals == {"reached": CELL_TARGETS}, (r.error, r.globals)
    assert r.stdout == "to the real stdout\n"
    # the runner flushes the agent's objects after each call, writes a SystemExit's text
    # to its "stderr": the replies stay the runner's, and correct
    r = ex.execute("print('still printed')\nraise SystemExit('bye')", return_globals=["log"])
    assert r.error_type == "SystemExit" and r.exit_code == 1 and not r.interpreter_lost, r
    assert r.stdout == "still printed\n"
    r = ex.execute("seen = list(log)", return_globals=["seen"])
    assert r.success and not r.state_reset, r
    assert ["write", "bye\n"] in r.globals["seen"] and ["flush"] in r.globals["seen"], r.globals
    assert_still_works(ex)


def test_a_limit_stop_rolls_back_rewritten_runner_cells(make_executor):
    ex = make_executor(whitelisted_imports=["time"], timeout_seconds=1)
    assert ex.execute("keep = 1").success
    # (the loop is reached only once every cell was found: else a LookupError ends it)
    r = ex.execute(FLUSH_CELLS + "class Never(BaseException): pass\n"
                   "exc_cell.cell_contents = Never\nout_cell.cell_contents = None\n"
                   "while True: pass")
    assert r.limit == "timeout" and r.rolled_back, r
    # the call is gone with what it rewrote: the runner catches again, in the same
    # interpreter (the state before the call is kept)
    r = ex.execute(THE_CELLS_AT_BOOT + "\nraise ValueError('y')", return_globals=["keep"])
    assert r.error_type == "ValueError" and not r.interpreter_lost and not r.state_reset, r
    r = ex.execute(THE_CELLS_AT_BOOT, return_globals=["keep", "at_boot"])
    assert r.globals == {"keep": 1, "at_boot": ["<stderr>", "<stdout>", "BaseException"]}, r


# The same writable cells let the agent word its reply: run_call's `stream_info` (the
# addresses of the runner's stdout, stderr and layout probes, sent when the host asks)
# can name objects of the agent's. The host asks after a restore when it knows no
# layout for the runtime build (an image loaded, or a stored agent resumed, in a process
# where no interpreter of that build booted), calibrates on the addresses the reply
# names, and from then on writes a flag byte at them (1 after each reply, 0 on a burst
# of printing), without looking at them again: a write, inside the guest's memory, at an
# address the agent chose. Here the byte is a line_buffering flag of the agent's own
# TextIOWrapper (and, for "stdout", a byte inside an immutable bytes object laid out to
# pass the checks); freed and reused, it could be a byte of the runner's own objects.
class HostWroteAtTheAgentsAddress(Exception):
    """The host wrote into guest memory at an address the agent's reply named."""


FORGED_STREAM_INFO = SYS_BY_WALK + AIM + FRAMES + """
import io
TW = type(sys.stdout)
probes = [io.TextIOWrapper(io.BytesIO(), encoding='utf-8', line_buffering=bool(lb),
                           write_through=bool(wt))
          for lb, wt in ((1, 0), (0, 1), (1, 1), (0, 0), (1, 0))]
mine = io.TextIOWrapper(io.BytesIO(), encoding='utf-8', line_buffering=True)
# a "stream" inside an immutable bytes object: its type word at +4, a flag of 1 at +48
body = bytearray(200)
body[4:8] = id(TW).to_bytes(4, 'little')
body[48] = 1
fake = bytes(body)
ids = [id(fake) + 16, id(mine)] + [id(p) for p in probes]  # (+16: a bytes object's data)
call = the_one('run_call', [f for f in frames if 'cell_no' in f.f_locals])
the_one('stream_info', [k for k in call.f_locals if k == 'stream_info'])
call.f_locals['stream_info'] = (ids, probes)
del frames, call
"""
RESUMED_ELSEWHERE = """
import json, sys
from wasm_exec import PythonExecExecutor
ex = PythonExecExecutor.load(sys.argv[1])
layout_known = ex._session._stream_layout is not None
first = ex.execute("x = 1")  # (the host asks where the streams are)
second = ex.execute("mine.reconfigure(line_buffering=False)")
third = ex.execute("flag = mine.line_buffering", return_globals=["flag"])
print(json.dumps({"known": layout_known, "ok": [first.success, second.success, third.success],
                  "flag": third.globals.get("flag")}))
ex.close()
"""


def test_the_host_writes_no_flag_where_an_agents_reply_points(make_executor, tmp_path):
    import json
    import subprocess
    import sys

    ex = make_executor(whitelisted_imports=["io", "sys"])
    r = ex.execute(FORGED_STREAM_INFO, return_globals=["reached"])
    assert r.success and r.globals == {"reached": ["run_call", "stream_info"]}, r
    ex.save(tmp_path / "agent.img")
    # a process that never booted this runtime: the host asks the restored interpreter
    proc = subprocess.run([sys.executable, "-c", RESUMED_ELSEWHERE, str(tmp_path / "agent.img")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # (the layout comes with the image, from the saving interpreter's boot)
    assert out["known"] is True and out["ok"] == [True, True, True], out
    if out["flag"] is not False:  # the agent set it to False; the host put it back
        raise HostWroteAtTheAgentsAddress(out)


def test_a_restore_without_a_known_layout_never_asks_the_agent(make_executor):
    # (an image file of an older version carries no layout: the host goes without buffer
    # switching rather than take addresses from a reply the agent can word)
    import dataclasses

    from wasm_exec import PythonExecExecutor

    ex = make_executor(whitelisted_imports=["io", "sys"])
    r = ex.execute(FORGED_STREAM_INFO, return_globals=["reached"])
    assert r.success and r.globals == {"reached": ["run_call", "stream_info"]}, r
    snapshot = dataclasses.replace(ex._session.wait_snapshot(current=True), streams=None)
    with PythonExecExecutor(whitelisted_imports=["io", "sys"], _restore=snapshot) as other:
        assert other._session._stream_layout is None
        for code in ("x = 1", "mine.reconfigure(line_buffering=False)", "print('a' * 10)"):
            assert other.execute(code).success
        assert other._session._stream_layout is None  # (no reply was believed)
        r = other.execute("flag = mine.line_buffering", return_globals=["flag"])
        if r.globals.get("flag") is not False:
            raise HostWroteAtTheAgentsAddress(r.globals)


# The per-write check (a stream's type word at +4, a flag of 0 or 1) is all that stands
# between the boot-time layout and a freed stream: were the runner's stdout freed, its
# 120-byte block could come back as an int of 27 digits (not tracked by the collector: it
# starts 8 bytes earlier), whose first digit sits at the stream's +4 and whose twelfth at
# its flag, both the agent's to choose; the host would then flip a byte of an immutable
# int. So the agent must not be able to free it: here it drops every reference it can
# reach (sys.stdout, sys.__stdout__, the runner's cell, stream_parts, frame locals) and the
# stream lives on, held where only the runner's hook reaches, at the layout's address.
DROP_THE_STREAM = SYS_BY_WALK + AIM + FRAMES + """
import io, time, weakref
real = sys.stdout
held = weakref.ref(real)
flush = the_one('flush_streams', [c.cell_contents for c in time.sleep.__closure__
                                  if getattr(c.cell_contents, '__name__', None) == 'flush_streams'])
cell = the_one('stdout', [c for c in flush.__closure__ if c.cell_contents is real])
step = the_one('step', [f.f_locals['step'] for f in frames if 'step' in f.f_locals])
parts = the_one('stream_parts', [c2 for c in step.__closure__
                                 if type(c.cell_contents) is type(flush) and c.cell_contents.__closure__
                                 for c2 in c.cell_contents.__closure__
                                 if type(c2.cell_contents) is tuple and c2.cell_contents
                                 and type(c2.cell_contents[0]) is tuple
                                 and c2.cell_contents[0][:1] == (real,)])
mine = io.TextIOWrapper(io.BytesIO(), encoding='utf-8', line_buffering=True)
parts.cell_contents = ((mine,) + parts.cell_contents[0][1:],) + parts.cell_contents[1:]
cell.cell_contents = mine
sys.stdout = sys.__stdout__ = mine
for f in frames:
    for k in list(f.f_locals):
        if k != 'real' and f.f_locals[k] is real:
            f.f_locals[k] = mine
del real, frames, f, flush, cell, step, parts
left = sys.getrefcount(held()) - 1  # (not counting getrefcount's argument)
where = id(held())
"""


def test_the_agent_cannot_free_the_stream_the_host_writes_a_flag_in(make_executor):
    ex = make_executor(whitelisted_imports=["io", "sys", "time", "weakref"])
    layout = ex._session._stream_layout
    assert layout is not None
    r = ex.execute(DROP_THE_STREAM, return_globals=["reached", "left", "where"])
    assert r.success and r.globals["reached"] == ["flush_streams", "stdout", "step",
                                                  "stream_parts"], r
    # still held (by the hook's tuple and its list of stream attributes), where boot saw it
    assert r.globals["left"] >= 1 and r.globals["where"] == layout.stdout, r.globals
    r = ex.execute("print('hi')\nalive = held() is not None and held() is sys.stdout",
                   return_globals=["alive"])
    assert r.success and r.globals == {"alive": True} and r.stdout == "hi\n", r
    assert_still_works(ex)
