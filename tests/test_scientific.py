"""The scientific runtime: numpy, pandas, matplotlib in the sandbox (issue 6)."""

from __future__ import annotations

import struct
import time
import zlib

import pytest

from tests.scientific_support import needs_scientific
from wasm_exec import PythonExecExecutor

pytestmark = [pytest.mark.scientific, needs_scientific]

SEED = dict(whitelisted_imports=["numpy", "pandas", "matplotlib.pyplot"],
            default_imports={"np": "numpy", "pd": "pandas", "plt": "matplotlib.pyplot"})


@pytest.fixture(scope="module")
def sci():
    ex = PythonExecExecutor(runtime="scientific", timeout_seconds=60, **SEED)
    yield ex
    ex.close()


def test_seed_data_analysis_example(sci):
    data = {"a": [1, 2, 3, 4], "b": [2, 4, 6, 9]}
    r = sci.execute("df = pd.DataFrame(input_data)\noutput = {'summary': df.describe().to_dict(), "
                    "'correlation': df.corr().to_dict()}",
                    globals_dict={"input_data": data}, return_globals=["output"])
    assert r.success, r.error
    out = r.globals["output"]
    assert out["summary"]["a"]["mean"] == 2.5 and out["summary"]["b"]["max"] == 9.0
    assert out["summary"]["a"]["std"] == pytest.approx(1.2909944487358056)
    assert out["correlation"]["a"]["b"] == pytest.approx(0.9943767)  # native pandas gives this
    assert out["correlation"]["a"]["a"] == 1.0


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    zlib.decompress(idat)  # the image data decodes
    return width, height


def test_matplotlib_chart_comes_back_as_png(sci):
    r = sci.execute("fig, ax = plt.subplots()\nax.plot([1, 2, 3], [4, 1, 9])\nax.set_title('t')")
    assert r.success, r.error
    assert len(r.figures) == 1
    assert _png_size(r.figures[0]) == (640, 480)
    # figures are closed after they are returned
    assert sci.execute("n = len(plt.get_fignums())", return_globals=["n"]).globals == {"n": 0}


def test_dataframe_persists_across_calls(sci):
    sci.execute("df2 = pd.DataFrame({'x': np.arange(5)})")
    r = sci.execute("df2['y'] = df2.x * 2\ntotal = int(df2.y.sum())", return_globals=["total"])
    assert r.globals == {"total": 20}


def test_allow_list_holds_in_the_scientific_runtime(sci):
    r = sci.execute("import os")
    assert r.error_type == "ImportError" and "Import of 'os' is not allowed" in r.error
    r = sci.execute("import matplotlib")
    assert r.error_type == "ImportError"
    r = sci.execute("import scipy")
    assert r.error_type == "ImportError"


def test_files_stay_in_the_sandbox(sci):
    r = sci.execute("df = pd.DataFrame({'a': [1]})\ndf.to_csv('/tmp/work/x.csv')\n"
                    "back = pd.read_csv('/tmp/work/x.csv').to_dict()", return_globals=["back"])
    assert r.success and r.globals["back"] == {"Unnamed: 0": {"0": 0}, "a": {"0": 1}}
    import os
    assert not os.path.exists("/tmp/work/x.csv")


def test_limits_in_the_scientific_runtime():
    with PythonExecExecutor(runtime="scientific", timeout_seconds=1, fuel=2_000_000_000,
                            memory_bytes=256 * 1024 * 1024, max_output_bytes=10_000,
                            **SEED) as ex:
        ex.execute("keep = np.arange(3)")
        r = ex.execute("keep = None\nwhile True: pass")
        assert r.limit in ("fuel", "timeout")
        # rolled back: the state after the previous call is intact (see test_snapshots.py)
        assert r.rolled_back and not r.interpreter_lost and "rolled back" in r.error
        r = ex.execute("x = int(keep.sum())", return_globals=["x"])
        assert r.success and not r.state_reset and r.globals == {"x": 3}
        r = ex.execute("import time\nt = time.sleep", return_globals=[])
        assert r.error_type == "ImportError"  # time is not allowed here
        r = ex.execute("big = np.ones(100_000_000)")
        assert r.error_type in ("MemoryError", "_ArrayMemoryError") or "MemoryError" in r.error
        r = ex.execute("print('x' * 100_000)")
        assert r.stdout_truncated
        assert ex.execute("y = 2", return_globals=["y"]).globals == {"y": 2}


def test_sleep_ends_at_the_deadline():
    with PythonExecExecutor(runtime="scientific", timeout_seconds=0.5,
                            whitelisted_imports=["time"]) as ex:
        t = time.monotonic()
        r = ex.execute("import time\ntime.sleep(3600)")
        assert r.limit == "timeout" and time.monotonic() - t < 5


def test_minimal_runtime_says_where_numpy_is():
    with PythonExecExecutor(whitelisted_imports=["numpy"]) as ex:
        r = ex.execute("import numpy")
        assert not r.success
        assert "scientific runtime" in r.error


def test_libraries_hold_only_the_gc_stand_in(sci):
    # timeit was imported when the snapshot was made: its `gc` must be the stand-in too
    r = sci.execute(
        "sys = [c for c in ().__class__.__base__.__subclasses__() "
        "if c.__name__ == 'BuiltinImporter'][0].find_spec.__func__.__globals__['sys']\n"
        "real = [n for n, m in list(sys.modules.items()) if type(m).__name__ == 'module' "
        "and any(type(v).__name__ == 'module' and v.__name__ == 'gc' and "
        "'stand-in' not in (v.__doc__ or '') for v in list(vars(m).values()))]",
        return_globals=["real"])
    assert r.success, r.error
    assert r.globals == {"real": []}



def test_process_exits_cleanly_with_a_scientific_interpreter():
    import subprocess
    import sys

    script = ("from wasm_exec import PythonExecExecutor\n"
              "ex = PythonExecExecutor(runtime='scientific', whitelisted_imports=['numpy'])\n"
              "ex.execute('import numpy as np\\nx = int(np.arange(5).sum())')\n")
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_round6_attacks_fail_in_the_scientific_runtime():
    # CPython 3.15: frame.f_locals writes through, so this is where rewriting the
    # guard's variables would bite
    from tests.test_adversarial import run_round6_attacks
    with PythonExecExecutor(runtime="scientific", timeout_seconds=60,
                            whitelisted_imports=["json", "functools", "xml", "math"]) as ex:
        run_round6_attacks(ex)


def test_round7_attacks_fail_in_the_scientific_runtime():
    from tests.test_adversarial import run_round7_attacks
    made = []

    def make():
        made.append(PythonExecExecutor(runtime="scientific", timeout_seconds=60,
                                       whitelisted_imports=["json", "functools"]))
        return made[-1]
    try:
        run_round7_attacks(make)
    finally:
        for ex in made:
            ex.close()


def test_round8_attacks_fail_in_the_scientific_runtime():
    from tests.test_adversarial import run_round8_attacks
    with PythonExecExecutor(runtime="scientific", timeout_seconds=60,
                            whitelisted_imports=["json", "functools", "xml"]) as ex:
        run_round8_attacks(ex, with_tmp=True)


def test_round9_attacks_fail_in_the_scientific_runtime():
    from tests.test_adversarial import run_round9_attacks
    with PythonExecExecutor(runtime="scientific", timeout_seconds=60,
                            whitelisted_imports=["json", "functools", "xml"]) as ex:
        run_round9_attacks(ex)


def test_round10_attacks_fail_in_the_scientific_runtime():
    from tests.test_adversarial import run_round10_attacks
    with PythonExecExecutor(runtime="scientific", timeout_seconds=60,
                            whitelisted_imports=["json", "functools", "itertools", "warnings",
                                                 "xml"]) as ex:
        run_round10_attacks(ex)


def test_pandas_optional_dependency_imports_only_what_pandas_names():
    # round 10: pandas' import_optional_dependency, called by a C-callable chain planted as
    # pandas' module __getattr__, imported whatever name the chain handed it
    with PythonExecExecutor(runtime="scientific", timeout_seconds=60,
                            whitelisted_imports=["numpy", "pandas", "functools"]) as ex:
        r = ex.execute(
            "import pandas, functools\n"
            "sys = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == "
            "'BuiltinImporter'][0].find_spec.__func__.__globals__['sys']\n"
            "before = set(sys.modules)\n"
            "imp_opt = sys.modules['pandas.compat._optional'].import_optional_dependency\n"
            "pkg = sys.modules['pandas']\nsaved = pkg.__name__\n"
            "pkg.__getattr__ = functools.partial(set().union, map(imp_opt, ['subprocess', "
            "'socket']))\ndel pkg.__name__\n"
            "try:\n    import pandas\nexcept BaseException:\n    pass\n"
            "pkg.__name__ = saved\ndel pkg.__getattr__\n"
            "leaked = [m for m in ('subprocess', 'socket')\n"
            "          if m in sys.modules and m not in before]",
            return_globals=["leaked"])
        assert r.success and r.globals == {"leaked": []}, (r.error, r.globals)
        assert ex.execute("import pandas as pd\nn = int(pd.Series([1, 2]).sum())",
                          return_globals=["n"]).globals == {"n": 3}


def test_property_finder_chain_to_linecache_loads_nothing():
    # red-team round 11: a path-entry finder whose find_spec is a property calling
    # copyreg.__newobj__ -> functools.partial(linecache.getline) -> linecache's lazy source
    # loader -> importlib.import_module('subprocess'): every frame library code, the
    # requester's caller not an import-machinery frame
    with PythonExecExecutor(runtime="scientific", timeout_seconds=60,
                            whitelisted_imports=["json", "functools", "xml"]) as ex:
        r = ex.execute(
            "import json, functools\nsys = json.codecs.sys\nm = sys.modules\n"
            "before = set(m)\n"
            "copyreg = m['copyreg']; linecache = m['linecache']; types = m['types']\n"
            "class F(dict):\n    find_spec = property(copyreg.__newobj__)\n"
            "f = F(__name__='subprocess', __loader__=types.SimpleNamespace("
            "get_source=m['importlib'].import_module))\n"
            "f.__dict__['__new__'] = functools.partial(linecache.getline, '/none/x.py', 1)\n"
            "import xml\nsys.path_importer_cache[xml.__path__[0]] = f\n"
            "try:\n    import xml.dom\nexcept BaseException:\n    pass\n"
            "del sys.path_importer_cache[xml.__path__[0]]\n"
            "leaked = [n for n in ('subprocess', 'socket') if n in m and n not in before]",
            return_globals=["leaked"])
        assert r.success and r.globals == {"leaked": []}, (r.error, r.globals)
        assert ex.execute("from xml.dom import minidom\nok = minidom.__name__",
                          return_globals=["ok"]).globals == {"ok": "xml.dom.minidom"}


def test_lazy_imports_are_refused_in_agent_code():
    # red-team round 12 (Python 3.15, PEP 810): an agent's lazy object, planted in a
    # library's globals, took effect in library code during a granted import and loaded
    # subprocess; made eager instead, `lazy import os` would skip the guard
    with PythonExecExecutor(runtime="scientific", timeout_seconds=60,
                            whitelisted_imports=["json", "xml"]) as ex:
        for code in ("lazy import os", "lazy from os import path", "lazy import json"):
            r = ex.execute(code)
            assert r.error_type == "ImportError" and "lazy imports" in r.error, r.error
        r = ex.execute("import json\nsys = json.codecs.sys\n"
                       "ok = [sys.set_lazy_imports is not type(sys).__dict__.get('x'), 1]\n"
                       "try:\n    sys.set_lazy_imports_filter(None)\n    ok = 'filter removed'\n"
                       "except RuntimeError:\n    ok = 'refused'\n", return_globals=["ok"])
        assert r.globals == {"ok": "refused"}, (r.error, r.globals)
        # the libraries' own lazy imports still work
        r = ex.execute("import xml.dom.minidom\nok = xml.dom.minidom.parseString('<a/>')"
                       ".documentElement.tagName", return_globals=["ok"])
        assert r.globals == {"ok": "a"}, r.error


def test_round14_attacks_fail_in_the_scientific_runtime():
    from tests.test_adversarial import run_round14_attacks
    with PythonExecExecutor(runtime="scientific", timeout_seconds=60,
                            whitelisted_imports=["json", "functools", "xml"]) as ex:
        run_round14_attacks(ex)


def test_the_hooks_frames_are_not_reachable_in_the_scientific_runtime():
    from tests.test_adversarial import HOOK_TRACEBACK
    with PythonExecExecutor(runtime="scientific", timeout_seconds=60,
                            whitelisted_imports=["json"]) as ex:
        r = ex.execute(HOOK_TRACEBACK, return_globals=["got"])
        assert r.success, r.error
        for secret in ("'state'", "'serve'", "'check'", "'_header'", "'give'", "'hook'"):
            assert secret not in r.globals["got"], r.globals


def test_call_time_imports_load_library_code():
    # no default imports: numpy (frozen modules on 3.15), pandas (six adds a meta_path
    # finder) and matplotlib are loaded by the agent's own import statements
    with PythonExecExecutor(runtime="scientific", timeout_seconds=120,
                            whitelisted_imports=["numpy", "pandas", "matplotlib.pyplot"]) as ex:
        r = ex.execute("import numpy as np\nimport pandas as pd\nimport matplotlib.pyplot as plt\n"
                       "total = int(pd.Series(np.arange(5)).sum())", return_globals=["total"])
        assert r.success and r.globals == {"total": 10}, r.error
