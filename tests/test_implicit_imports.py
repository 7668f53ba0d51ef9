"""Imports CPython makes on the agent's behalf (issue 13, class 10).

The runner grants the imports that C code makes for the agent's code (codecs through
``encodings``, ``unicodedata``, ``_strptime``: IMPLICIT_IMPORTS in wasm_exec/session.py).
Such a grant must load only what that mechanism needs: no module outside the allow-list
(and outside what the interpreter had loaded before the attack) may become reachable.
Each attack runs in a fresh executor whose allow-list holds only ``sys`` (to list
``sys.modules`` before and after).
"""

from __future__ import annotations

import pytest

from wasm_exec import PythonExecExecutor

# what the codec mechanism itself may load (an encoding module and what it imports)
CODEC_MODULES = {"encodings.utf_7", "encodings.rot_13"}

# attacks through the codec machinery with attacker-chosen names: nothing outside
# encodings' own codec modules may load
CODEC_ATTACKS = {
    "encode_as_subprocess": "'x'.encode('subprocess')",
    "encode_dotted_name": "'x'.encode('encodings.os')",
    "encode_parent_path": "'x'.encode('../os')",
    # (codecs by the module table: the agent may not import it, and the refused import
    # of it stopped this attack before its lookup)
    "lookup_dotted_module": "import sys\nsys.modules['codecs'].lookup('os.path')",
    "search_function_crafted": "import sys\nsys.modules['encodings'].search_function('..os')",
    "search_function_dunder": "import sys\nsys.modules['encodings'].search_function('__init__')",
    "utf7_then_walk": "'x'.encode('utf-7')",
}


# how each attack ends: refused by the codec machinery, or run to its end ("ran")
CODEC_OUTCOMES = {
    "encode_as_subprocess": "LookupError: unknown encoding: subprocess",
    "encode_dotted_name": "LookupError: unknown encoding: encodings.os",
    "encode_parent_path": "LookupError: unknown encoding: ../os",
    "lookup_dotted_module": "LookupError: unknown encoding: os.path",
    "search_function_crafted": "ran",
    "search_function_dunder": "ran",
    "utf7_then_walk": "ran",
}


def _new_modules(code: str) -> tuple[set[str], str]:
    """The modules that running ``code`` loaded, and how it ended: "ran", or the refusal
    it ran into (an attack that fails in its own set-up must not pass for refused)."""
    with PythonExecExecutor(whitelisted_imports=["sys"], timeout_seconds=20) as ex:
        assert ex.execute("import sys\nboot = set(sys.modules)").success
        r = ex.execute("try:\n" + "".join("    " + line + "\n" for line in code.splitlines())
                       + "    outcome = 'ran'\n"
                       + "except (LookupError, ImportError, TypeError, ValueError) as e:\n"
                       "    outcome = type(e).__name__ + ': ' + str(e)\n"
                       "new = sorted(set(sys.modules) - boot)",
                       return_globals=["new", "outcome"])
        assert "new" in r.globals, r.error
        return set(r.globals["new"]), r.globals["outcome"]


@pytest.mark.parametrize("name", sorted(CODEC_ATTACKS))
def test_codec_lookups_load_only_codec_modules(name):
    assert set(CODEC_OUTCOMES) == set(CODEC_ATTACKS)
    new, outcome = _new_modules(CODEC_ATTACKS[name])
    assert outcome.startswith(CODEC_OUTCOMES[name]), (name, outcome)
    assert new <= CODEC_MODULES, sorted(new - CODEC_MODULES)


@pytest.mark.parametrize("code", [
    "m = __import__('_strptime')\nm.os.listdir('/')",
    "import builtins\nm = list(map(__import__, ['_strptime']))",
])
def test_strptime_is_not_granted_without_time_or_datetime(code):
    # (_strptime is imported by C code only behind time.strptime / datetime.strptime)
    with PythonExecExecutor(timeout_seconds=20) as ex:
        r = ex.execute(code)
        assert not r.success and r.error_type == "ImportError", r.error


def test_strptime_still_works_where_time_is_allowed():
    with PythonExecExecutor(whitelisted_imports=["time", "datetime"], timeout_seconds=20) as ex:
        r = ex.execute("import time, datetime\n"
                       "y = time.strptime('2026-12-06', '%Y-%m-%d').tm_year\n"
                       "d = datetime.datetime.strptime('06/12/26', '%d/%m/%y').month",
                       return_globals=["y", "d"])
        assert r.globals == {"y": 2026, "d": 12}, r.error


@pytest.mark.parametrize("code", [
    "m = __import__('_strptime')\nr = sorted(vars(m))",
    "import importlib\nm = importlib.__import__('_strptime')\nr = sorted(vars(m))",
    "m = __import__('_strptime', globals(), globals(), [], 0)\nr = sorted(vars(m))",
    "m = __import__('_strptime', fromlist=['os'])\nr = sorted(vars(m))",
])
def test_the_agents_own_import_of_strptime_gets_no_module(code):
    # where time is allowed, C code (time.strptime) imports _strptime by calling
    # __import__ from the agent's frame and then reads sys.modules: the call looks the
    # same as the agent's own, so the grant loads the module but answers with an empty
    # stand-in; the agent never holds _strptime (nor its os, locale, calendar)
    with PythonExecExecutor(whitelisted_imports=["time", "importlib"],
                            timeout_seconds=20) as ex:
        r = ex.execute(code + "\nname = m.__name__", return_globals=["r", "name"])
        assert r.success, r.error
        assert r.globals["r"] == ["__doc__", "__loader__", "__name__", "__package__",
                                  "__spec__"], r.globals
        assert "not importable" in r.globals["name"]
        attack = ex.execute("m = __import__('_strptime')\nm.os.listdir('/')")
        assert not attack.success and attack.error_type == "AttributeError", attack.error
        # ... and time.strptime itself still works in the same interpreter
        ok = ex.execute("import time\ny = time.strptime('2026', '%Y').tm_year",
                        return_globals=["y"])
        assert ok.globals == {"y": 2026}, ok.error


@pytest.mark.parametrize("code", [
    "m = __import__('encodings.idna')",
    "m = __import__('encodings')",
    "m = __import__('encodings', fromlist=['sys'])",
    "from encodings import sys",
    "import encodings.aliases",
])
def test_the_agent_cannot_import_the_codec_package(code):
    # the codec machinery imports its codec modules from encodings' own code, which the
    # library rules grant; the agent's own import of the package (whose namespace holds
    # the real sys and codecs) is refused, and nothing new loads
    with PythonExecExecutor(whitelisted_imports=[], timeout_seconds=20) as ex:
        r = ex.execute(code)
        assert not r.success and r.error_type == "ImportError", r.error
    new, outcome = _new_modules(code)
    assert not new and outcome.startswith("ImportError"), (sorted(new), outcome)


@pytest.mark.parametrize("code", [
    "r = 'x'.encode('idna').decode('ascii')",
    "r = b'\\xff'.decode('cp1252')",
    "r = 'caf\u00e9'.encode('utf-7').decode('utf-7')",
    "r = '\\N{BULLET}'",
    "r = eval(r'\"\\N{GREEK SMALL LETTER ALPHA}\"')",
    "import codecs\nr = codecs.lookup('rot13').name",
    "import unicodedata\nr = unicodedata.name('a')",
    "r = open('/tmp/f', 'w', encoding='latin-1').write('x') and 'ok'",
])
def test_what_the_implicit_imports_serve_still_works(code):
    with PythonExecExecutor(whitelisted_imports=["codecs", "unicodedata"],
                            timeout_seconds=20) as ex:
        r = ex.execute(code, return_globals=["r"])
        assert r.success and isinstance(r.globals.get("r"), str), r.error
