"""Results (issue 14): the value of the last expression, exit codes and stdin, JSON-safe
results. Each runs on both runtimes."""

from __future__ import annotations

import base64
import json

import pytest

from tests.scientific_support import needs_scientific
from wasm_exec import ExecutionResult, PythonExecExecutor


@pytest.fixture(params=["minimal", pytest.param("scientific", marks=[pytest.mark.scientific,
                                                                      needs_scientific])])
def rt(request):
    """The runtime a test runs on."""
    return request.param


@pytest.fixture
def make(rt):
    made: list[PythonExecExecutor] = []

    def factory(**kw) -> PythonExecExecutor:
        ex = PythonExecExecutor(**{"runtime": rt, "timeout_seconds": 30,
                                   "whitelisted_imports": ["sys", "time"], **kw})
        made.append(ex)
        return ex

    yield factory
    for ex in made:
        ex.close()


# ------------------------------------------------------------ 2. the last expression's value
@pytest.mark.parametrize("code,text,data", [
    ("x = 5\nx * 2", "10", 10),
    ("2 + 2", "4", 4),
    ("'hé'", "'hé'", "hé"),
    ("[1, (2, 3), {'k': None}]", "[1, (2, 3), {'k': None}]", [1, [2, 3], {"k": None}]),
    ("a = 1; a + 1", "2", 2),
    ("f = max\nf(1,\n  3)", "3", 3),
    ("y = 7\ny  # the last line\n\n# a comment", "7", 7),
    ("s = 'a;b'; s", "'a;b'", "a;b"),
    ("x = 3\nx == 3", "True", True),
])
def test_the_last_expression_is_the_results_value(make, code, text, data):
    r = make().execute(code)
    assert r.success, r.error
    assert r.value.text == text and r.value.is_json and r.value.json_value == data
    assert r.value.mime_bundle() == {"text/plain": text, "application/json": data}


@pytest.mark.parametrize("code", [
    "x = 5", "print(1)", "None", "for i in range(3): i", "if True:\n    7",
    "s = '''\n1 + 1\n'''", "d = {}\nd['k'] = 3", "x: int = 3", "x = 1\nx += 2",
    "import sys", "def f():\n    return 1", "x = 1 + \\\n2", "# only a comment",
])
def test_a_cell_that_ends_with_a_statement_has_no_value(make, code):
    r = make().execute(code)
    assert r.success, r.error
    assert r.value is None


def test_objects_show_their_repr_and_errors_keep_their_lines(make):
    ex = make()
    r = ex.execute("class P:\n    def __repr__(self):\n        return 'P!'\nP()")
    assert r.value.text == "P!" and not r.value.is_json and r.value.json_value is None
    r = ex.execute("class Q:\n    def __repr__(self):\n        raise ValueError\nQ()")
    assert r.success and r.value.text == "<Q object (its repr() failed)>"
    r = ex.execute("list(range(100_000))")
    assert r.value.text.endswith("...") and len(r.value.text) == 100_000
    assert r.value.json_value == list(range(100_000))
    r = ex.execute("x = 1\n1 / 0")
    assert not r.success and r.value is None and r.error_type == "ZeroDivisionError"
    assert 'line 2' in r.traceback and "1 / 0" in r.traceback


def test_the_value_is_never_bound_to_underscore(make):
    ex = make(whitelisted_imports=["builtins"])
    assert ex.execute("6 * 7").value.text == "42"
    r = ex.execute("import builtins\nprobe = [hasattr(builtins, '_'), '_' in globals()]",
                   return_globals=["probe"])
    assert r.globals == {"probe": [False, False]}


def test_display_also_prints_the_value(make):
    r = make().execute("x = 2\nx ** 10", display=True)
    assert r.stdout == "1024\n" and r.value.text == "1024"


@pytest.mark.scientific
@needs_scientific
def test_a_dataframe_shows_as_html_and_text_an_image_as_png():
    with PythonExecExecutor(runtime="scientific", whitelisted_imports=["pandas", "PIL"],
                            default_imports={"pd": "pandas"}, timeout_seconds=60) as ex:
        r = ex.execute("pd.DataFrame({'col_a': [1, 2], 'col_b': [3.5, 4.5]})")
        assert r.success, r.error
        assert "col_a" in r.value.text and "<table" in r.value.html
        assert not r.value.is_json
        r = ex.execute("from PIL import Image\nImage.new('RGB', (4, 4))")
        assert r.value.png.startswith(b"\x89PNG")
        assert r.value.mime_bundle()["image/png"] == base64.b64encode(r.value.png).decode()


# ------------------------------------------------------------------ 5. exit codes and stdin
@pytest.mark.parametrize("code,success,exit_code,stderr", [
    ("import sys\nsys.exit()", True, 0, ""),
    ("import sys\nsys.exit(0)", True, 0, ""),
    ("exit(3)", False, 3, ""),
    ("raise SystemExit(True)", False, 1, ""),
    ("import sys\nsys.exit('bye')", False, 1, "bye\n"),
    ("quit(2 ** 40)", False, 1, ""),
])
def test_system_exit_gives_its_status_and_keeps_the_state(make, code, success, exit_code,
                                                          stderr):
    ex = make()
    r = ex.execute("kept = 'yes'\nprint('before')\n" + code + "\nnot_reached = 1")
    assert r.success is success and r.exit_code == exit_code
    assert r.stdout == "before\n" and r.stderr == stderr and not r.interpreter_lost
    assert r.error_type == (None if success else "SystemExit")
    r = ex.execute("", return_globals=["kept", "not_reached"])
    assert r.globals == {"kept": "yes"} and not r.state_reset
    assert ex.execute("x = 1").exit_code is None


def test_input_says_there_is_no_stdin_and_what_to_use(make):
    ex = make()
    r = ex.execute("kept = 1\nanswer = input('name? ')")
    assert not r.success and r.error_type == "EOFError"
    assert "no stdin" in r.error and "globals_dict" in r.error
    assert ex.execute("", return_globals=["kept"]).globals == {"kept": 1}


# ------------------------------------------------------------------------ 6. JSON results
def test_every_result_dumps_to_json(make):
    ex = make()
    r = ex.execute("n = float('nan')\nbig = 10 ** 4000\ns = '\\ud800x'\n"
                   "deep = []\nc = deep\nfor _ in range(399):\n    c.append([])\n    c = c[0]\n"
                   "'\\udcff'", return_globals=["n", "big", "s", "deep"])
    assert r.success and r.globals["s"] == "\ud800x"
    data = json.loads(r.model_dump_json())
    assert data["globals"]["n"] is None and data["globals"]["big"] == 10 ** 4000
    assert data["globals"]["s"] == "\ud800x" and data["value"]["json_value"] == "\udcff"
    depth, c = 0, data["globals"]["deep"]
    while c:
        depth, c = depth + 1, c[0]
    assert depth == 399
    # a stopped call, a failed one
    for code in ("while True: pass", "1 / 0"):
        json.loads(ex.execute(code, limits={"fuel": 10_000_000}).model_dump_json())


@pytest.mark.scientific
@needs_scientific
def test_figures_dump_as_base64_and_read_back():
    with PythonExecExecutor(runtime="scientific", whitelisted_imports=["matplotlib.pyplot"],
                            default_imports={"plt": "matplotlib.pyplot"},
                            timeout_seconds=60) as ex:
        r = ex.execute("fig, ax = plt.subplots()\nax.plot([1, 2, 3])")
    assert r.success and r.figures
    text = r.model_dump_json()
    assert base64.b64decode(json.loads(text)["figures"][0]) == r.figures[0]
    assert ExecutionResult.model_validate_json(text) == r
