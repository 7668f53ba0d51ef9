"""Import allow-list semantics and default imports (issue 3)."""

from __future__ import annotations

import pytest

from wasm_exec import ConfigurationError, PythonExecExecutor


def refused(r, name):
    return (not r.success and r.error_type == "ImportError"
            and f"Import of '{name}' is not allowed" in r.error_message)


def test_no_list_means_no_imports(ex):
    r = ex.execute("import json")
    assert refused(r, "json")
    assert "Allowed imports: []" in r.error_message


def test_entry_allows_module_and_submodules(make_executor):
    ex = make_executor(whitelisted_imports=["json"])
    r = ex.execute("import json\nimport json.decoder\nfrom json import decoder\n"
                   "from json.decoder import JSONDecoder\nv = json.loads('[1]')",
                   return_globals=["v"])
    assert r.success and r.globals == {"v": [1]}


def test_allowed_module_imports_its_own_dependencies(make_executor):
    # json imports re, codecs, ... for itself: not policed
    ex = make_executor(whitelisted_imports=["json", "base64"])
    r = ex.execute("import json, base64\nv = base64.b64encode(json.dumps({'a': 1}).encode())"
                   ".decode()", return_globals=["v"])
    assert r.success and r.globals["v"] == "eyJhIjogMX0="
    assert refused(ex.execute("import re"), "re")


def test_dotted_entry_does_not_open_parent_or_siblings(make_executor):
    ex = make_executor(whitelisted_imports=["xml.etree.ElementTree"])
    r = ex.execute("import xml.etree.ElementTree as ET\n"
                   "t = ET.fromstring('<a><b/></a>')[0].tag", return_globals=["t"])
    assert r.success and r.globals == {"t": "b"}
    assert ex.execute("from xml.etree import ElementTree\nx = ElementTree.Element('q').tag",
                      return_globals=["x"]).globals == {"x": "q"}
    assert ex.execute("from xml.etree.ElementTree import Element").success
    assert refused(ex.execute("import xml"), "xml")
    assert refused(ex.execute("import xml.dom"), "xml.dom")
    assert refused(ex.execute("from xml import dom"), "xml.dom")
    assert refused(ex.execute("from xml.etree import ElementInclude"), "xml.etree.ElementInclude")


def test_import_dotted_binds_restricted_parent(make_executor):
    ex = make_executor(whitelisted_imports=["xml.etree.ElementTree"])
    r = ex.execute("import xml.etree.ElementTree\nok = xml.etree.ElementTree.Element('a').tag\n"
                   "has_dom = hasattr(xml, 'dom')\nhas_sax = hasattr(xml, 'sax')",
                   return_globals=["ok", "has_dom", "has_sax"])
    assert r.globals == {"ok": "a", "has_dom": False, "has_sax": False}


def test_refused_import_is_catchable_importerror(ex):
    r = ex.execute("try:\n    import os\n    got = 'os'\nexcept ImportError as e:\n"
                   "    got = 'fallback'\n    msg = str(e)", return_globals=["got", "msg"])
    assert r.globals["got"] == "fallback"
    assert r.globals["msg"].startswith("Import of 'os' is not allowed. Allowed imports: [")


def test_error_message_lists_allowed(make_executor):
    ex = make_executor(whitelisted_imports=["math", "json"])
    r = ex.execute("import os")
    assert r.error_message == "Import of 'os' is not allowed. Allowed imports: ['json', 'math']"


def test_list_set_and_tuple_accepted(make_executor):
    for value in (["math"], {"math"}, ("math",), frozenset({"math"})):
        ex = make_executor(whitelisted_imports=value)
        assert ex.execute("import math").success


@pytest.mark.parametrize("bad", ["math", ["not a module"], ["os..path"], [""]])
def test_bad_whitelist_is_a_configuration_error(bad):
    with pytest.raises(ConfigurationError):
        PythonExecExecutor(whitelisted_imports=bad)


def test_default_imports_bound_before_first_call(make_executor):
    ex = make_executor(default_imports={"js": "json", "ET": "xml.etree.ElementTree",
                                        "m": "math"})
    r = ex.execute("a = js.dumps([1])\nb = ET.Element('x').tag\nc = m.floor(2.5)\n"
                   "d = type(ET).__name__", return_globals=["a", "b", "c", "d"])
    assert r.globals == {"a": "[1]", "b": "x", "c": 2, "d": "module"}


def test_default_import_is_a_permission(make_executor):
    ex = make_executor(default_imports={"js": "json"})
    assert ex.execute("import json\nfrom json import dumps").success


def test_unknown_default_import_fails_at_creation():
    with pytest.raises(ConfigurationError) as info:
        PythonExecExecutor(default_imports={"np": "numpy"})
    assert "np" in str(info.value) and "numpy" in str(info.value)


@pytest.mark.parametrize("alias", ["__builtins__", "not-ident", "1x"])
def test_bad_default_alias(alias):
    with pytest.raises(ConfigurationError):
        PythonExecExecutor(default_imports={alias: "json"})


def test_relative_import_without_package(ex):
    r = ex.execute("from . import x")
    assert not r.success and r.error_type == "ImportError"


def test_agent_module_changes_stay_in_its_interpreter(make_executor):
    a = make_executor(whitelisted_imports=["json"])
    b = make_executor(whitelisted_imports=["json"])
    a.execute("import json, builtins\njson.dumps = None") if False else None
    a.execute("import json\njson.dumps = lambda *x, **k: 'A'\n__builtins__['len'] = lambda x: -1")
    r = b.execute("import json\nv = json.dumps(1)\nn = len([1, 2])", return_globals=["v", "n"])
    assert r.globals == {"v": "1", "n": 2}


def test_codecs_and_unicode_identifiers_work_without_allowlist(ex):
    r = ex.execute("a = 'x'.encode('utf-7').decode('utf-7')\nb = 'é'.encode('latin-1')[0]\n"
                   "ｖａｌ = 3\nc = val", return_globals=["a", "b", "c"])
    assert r.success and r.globals == {"a": "x", "b": 233, "c": 3}


def test_importlib_allowed_is_still_policed(make_executor):
    ex = make_executor(whitelisted_imports=["importlib", "json"])
    r = ex.execute("import importlib\nj = importlib.import_module('json').dumps([2])",
                   return_globals=["j"])
    assert r.globals == {"j": "[2]"}
    r = ex.execute("import importlib\nimportlib.import_module('os')")
    assert refused(r, "os")
