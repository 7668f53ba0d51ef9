"""Which pure-stdlib modules an agent might use import in the minimal runtime (whitelisted)."""
from __future__ import annotations

WORKS = """json csv re datetime decimal fractions statistics collections collections.abc
itertools functools heapq bisect textwrap string difflib html html.parser html.entities
xml.etree.ElementTree xml.dom.minidom xml.sax urllib.parse email email.utils email.message
base64 hashlib hmac zlib gzip zipfile tarfile io struct uuid random math cmath typing
dataclasses enum copy pprint unicodedata calendar secrets operator numbers array contextlib
abc time shlex fnmatch glob pathlib tempfile shutil logging argparse inspect ast tokenize
keyword traceback warnings weakref types graphlib pickle copyreg codecs locale gettext
mimetypes ipaddress select concurrent.futures threading queue sched socket xml.sax.saxutils
urllib.request http.client""".split()

# known gaps: asyncio makes a code object at import (the guard refuses code.__new__);
# zoneinfo's import of sysconfig asks for _sysconfigdata_*, which the guard refuses; _bz2,
# _lzma, _sqlite3 and _ssl are not built
MISSING = {"asyncio": "code.__new__", "zoneinfo": "_sysconfigdata",
           "bz2": "_bz2", "lzma": "_lzma", "sqlite3": "_sqlite3", "ssl": "_ssl"}

PROBE = """
res = {}
for m in MODS:
    try:
        __import__(m)
        res[m] = 'ok'
    except BaseException as e:
        res[m] = type(e).__name__ + ': ' + str(e)[:300]
"""


def _import_all(make_executor, mods):
    ex = make_executor(whitelisted_imports=mods, timeout_seconds=60)
    r = ex.execute(PROBE.replace("MODS", repr(mods)), return_globals=["res"])
    assert r.success, r.error
    return r.globals["res"]


def test_common_stdlib_modules_import(make_executor):
    res = _import_all(make_executor, WORKS)
    assert {m: v for m, v in res.items() if v != "ok"} == {}


def test_known_missing_stdlib_modules_fail_as_recorded(make_executor):
    # (when one of these starts to import, move it to WORKS)
    res = _import_all(make_executor, sorted(MISSING))
    for mod, why in MISSING.items():
        assert res[mod] != "ok" and why in res[mod], (mod, res[mod])


def test_socket_imports_but_reaches_nothing(make_executor):
    # the socket module is built (the standard library's users of it import), but WASI
    # gives it no resolver and this sandbox no socket to use
    ex = make_executor(whitelisted_imports=["socket"])
    r = ex.execute("import socket\n"
                   "try:\n    socket.gethostbyname('example.org')\nexcept OSError as e:\n"
                   "    lookup = type(e).__name__\n"
                   "try:\n    socket.socket().connect(('10.0.0.1', 80))\nexcept OSError as e:\n"
                   "    connect = type(e).__name__\n", return_globals=["lookup", "connect"])
    assert r.globals == {"lookup": "gaierror", "connect": "OSError"}, r.error
