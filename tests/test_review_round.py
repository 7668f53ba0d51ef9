"""Findings of an adversarial review round of the sandbox (issue 13: review in rounds).

Each test fails on the code before its fix (or is a strict xfail naming what is still
open). The attacks are written as an agent would: with an allow-list of ``sys`` only (to
list ``sys.modules`` before and after), reaching everything else by object walks.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.scientific_support import needs_scientific
from wasm_exec import PythonExecExecutor


def _new_modules(ex: PythonExecExecutor, code: str) -> tuple[set[str], dict]:
    """The modules that running ``code`` (errors caught) loaded, and its globals."""
    assert ex.execute("import sys\nboot = set(sys.modules)").success
    r = ex.execute("try:\n" + textwrap.indent(textwrap.dedent(code).strip("\n"), "    ")
                   + "\nexcept BaseException as e:\n    caught = type(e).__name__\n"
                   "new = sorted(set(sys.modules) - boot)", return_globals=["new", "caught"])
    assert "new" in r.globals, r.error
    return set(r.globals["new"]), r.globals


# ------------------------------------------------------------------------------------
# 1. Import statements in the interpreter's own modules, reached by an object walk.
# The runner grants a library's own import statement (json importing re). A module the
# interpreter loaded for itself (importlib's machinery, site's help, os on the scientific
# runtime) is reachable by an object walk whatever the allow-list says, so its statements
# imported, for an agent allowed nothing: PathFinder.find_distributions() loaded
# importlib.metadata and 90 modules with it (os, shutil, tempfile, zipfile, threading);
# on the scientific runtime help() loaded pydoc and subprocess, os.popen() subprocess.

PATHFINDER = "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'PathFinder'][0]"

MINIMAL_STATEMENT_ATTACKS = {
    "find_distributions": f"list({PATHFINDER}.find_distributions())",
    "invalidate_caches": f"{PATHFINDER}.invalidate_caches()",
    "decode_source": "sys.modules['importlib._bootstrap_external'].decode_source(b'x = 1')",
    "trampoline_json_hook": (
        "import json\n"
        f"json.loads('{{}}', object_hook=lambda d: list({PATHFINDER}.find_distributions()))"),
}


@pytest.mark.parametrize("name", sorted(MINIMAL_STATEMENT_ATTACKS))
def test_interpreter_modules_import_nothing_new_for_the_agent(make_executor, name):
    ex = make_executor(whitelisted_imports=["sys", "json"])
    ex.execute("import json")  # (its own imports are the agent's, allowed)
    new, _ = _new_modules(ex, MINIMAL_STATEMENT_ATTACKS[name])
    assert new == set(), sorted(new)


@pytest.mark.xfail(strict=True, reason=(
    "open: a module an allowed import loaded (json loads re, enum and types) keeps its own "
    "import statements at run time, and the agent reaches its functions by object walks: "
    "types.__getattr__('CapsuleType') imports _socket for an agent allowed only json. "
    "Telling such a call from the library's own use of the function (json calling it) "
    "needs the stack to name who asked, which C trampolines hide"))
def test_dependencies_of_allowed_modules_import_nothing_new_for_the_agent(make_executor):
    ex = make_executor(whitelisted_imports=["sys", "json"])
    ex.execute("import json")
    new, _ = _new_modules(ex, "sys.modules['types'].CapsuleType")
    assert new == set(), sorted(new)


def test_allowed_importlib_still_imports_what_its_machinery_needs(make_executor):
    ex = make_executor(whitelisted_imports=["importlib", "sys"])
    r = ex.execute("import importlib, sys\nimportlib.invalidate_caches()\n"
                   "loaded = 'importlib.metadata' in sys.modules", return_globals=["loaded"])
    assert r.success and r.globals == {"loaded": True}, r.error


SCIENTIFIC_STATEMENT_ATTACKS = {
    "builtins_help": "print.__self__.help('json')",
    "os_popen": "sys.modules['os'].popen('id')",
    "help_through_json_hook": "sys.modules['json'].loads('{}', object_hook=print.__self__.help)",
}


@pytest.mark.scientific
@needs_scientific
@pytest.mark.parametrize("name", sorted(SCIENTIFIC_STATEMENT_ATTACKS))
def test_scientific_interpreter_modules_import_nothing_new(make_executor, name):
    ex = make_executor(runtime="scientific", whitelisted_imports=["sys"], timeout_seconds=60)
    new, _ = _new_modules(ex, SCIENTIFIC_STATEMENT_ATTACKS[name])
    assert not new & {"pydoc", "subprocess", "signal", "threading", "inspect"}, sorted(new)


@pytest.mark.scientific
@needs_scientific
def test_scientific_library_run_time_imports_still_work(make_executor):
    ex = make_executor(runtime="scientific", whitelisted_imports=["importlib", "pandas"],
                       timeout_seconds=60)
    r = ex.execute(
        "import importlib.metadata as md, pandas as pd\n"
        "v = md.version('numpy')\n"
        # (re's parser, loaded by the interpreter, imports unicodedata for \\N{...})
        "m = pd.Series(['a1', 'b']).str.contains('\\\\N{DIGIT ONE}').tolist()",
        return_globals=["v", "m"])
    assert r.success and r.globals["m"] == [True, False] and r.globals["v"], r.error
