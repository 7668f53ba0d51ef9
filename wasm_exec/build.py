"""Build the default runtime: CPython for WASI as a pre-initialised reactor, from pinned sources.

What is built from what (every input is pinned in ``runtime/spec/pins.json``):

- CPython: the upstream tarball of Debian's ``python3.13`` source package, fetched by
  ``apt-get source --download-only`` with a private source list and state directory (the
  system's apt configuration is not touched), verified by SHA-256;
- zlib: the upstream tarball of Debian's ``zlib`` source package, the same way;
- the toolchain: PyPI's ``ziglang`` (``zig cc -target wasm32-wasi`` is clang with
  wasi-libc and compiler-rt bundled; no root, no apt packages);
- ``runtime/build/reactor.c``: the reactor's exports (``turn``, ``host_alloc``, ...).

Steps, each printed as it runs: fetch, zlib, a native CPython of the same source (the
cross build's build Python), configure for ``wasm32-wasi``, compile, link the reactor,
pack the standard library as bytecode in ``python313.zip``, pre-initialise (boot the
interpreter once and bake its memory into the module, so every agent starts booted and
shares those pages copy-on-write), then record a lock file (inputs and output hashes).

Work happens in ``<cache>/build/<key>`` and the result lands in ``<cache>/<subdir>``, both
keyed by a hash of every input, so a second run with the same inputs is a no-op. Nothing is
written to the checkout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import RuntimeBuildError

RECIPE_VERSION = "3"
LOCK_FILE = "build.lock.json"
ZIP_NAME = "python313.zip"
ZIP_PATH = "/usr/local/lib/python313.zip"
WASM_NAME = "python.wasm"
# the cross build's configure believes zig's multi-target headers; these say what WASI has
CONFIGURE_OVERRIDES = {
    "PKG_CONFIG": "false",
    "ac_cv_header_zlib_h": "yes",
    "ac_cv_header_libintl_h": "no",
    "ac_cv_func_textdomain": "no",
    "ac_cv_func_bind_textdomain_codeset": "no",
    "ac_cv_header_sys_epoll_h": "no",
    "ac_cv_func_epoll_create": "no",
    "ac_cv_func_epoll_create1": "no",
    "ac_cv_header_sys_timerfd_h": "no",
    "ac_cv_func_timerfd_create": "no",
    "ac_cv_func_setgroups": "no",
}
# (-DSOCK_RAW: the socket module's fallback getaddrinfo names it; WASI's headers do not)
CFLAGS = "-O2 -DSOCK_RAW=3"
# zig's linker front end refuses --stack-first; an 8 MiB C stack, 20 MiB initial memory
LDFLAGS_NODIST = "-Wl,-z,stack-size=8388608 -Wl,--initial-memory=20971520"
ZLIB_SOURCES = ("adler32", "crc32", "deflate", "infback", "inffast", "inflate", "inftrees",
                "trees", "zutil", "compress", "uncompr", "gzclose", "gzlib", "gzread",
                "gzwrite")
# parts of the standard library an agent cannot use here (GUI, tests, installers)
STDLIB_SKIP = frozenset({"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip",
                         "venv", "__phello__", "turtle.py", "site-packages", "pydoc_data",
                         "__pycache__"})
REACTOR_MK = """
wasm_exec_reactor.o: {src}
\t$(CC) -c $(PY_CORE_CFLAGS) -o $@ {src}
wasm_exec_reactor.wasm: wasm_exec_reactor.o $(LINK_PYTHON_DEPS)
\t$(LINKCC) $(PY_CORE_LDFLAGS) $(LINKFORSHARED) -mexec-model=reactor -o $@ \\
\t\twasm_exec_reactor.o $(LINK_PYTHON_OBJS) $(LIBS) $(MODLIBS) $(SYSLIBS)
"""

# what the interpreter runs once at build time, baked into every agent's start
PREINIT_SOURCE = "pass"
PREINIT_VERSION = "2"  # (the pre-initialisation's own recipe: its clock, its file system)

Log = Callable[[str], None]


@dataclass(frozen=True)
class Source:
    """One pinned source tarball of a Debian source package."""

    package: str
    suite: str
    file: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Recipe:
    profile: str
    cpython: Source
    zlib: Source
    ziglang: str  # the PyPI version of ziglang
    reactor_c: str  # the reactor's C source
    # the outputs' SHA-256 of a reference build of these inputs (the build is reproducible:
    # a rebuild anywhere should give the same bytes)
    expected: dict[str, str] | None = None

    def work_key(self) -> str:
        """What the compiled CPython depends on (its work folder is reused while only the
        reactor's own source or the stdlib packing change)."""
        text = json.dumps({"recipe": RECIPE_VERSION, "cpython": self.cpython.sha256,
                           "zlib": self.zlib.sha256, "ziglang": self.ziglang,
                           "cflags": CFLAGS, "ldflags": LDFLAGS_NODIST,
                           "overrides": CONFIGURE_OVERRIDES,
                           "machine": os.uname().machine}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def key(self) -> str:
        """Every input of the published runtime."""
        text = json.dumps({"work": self.work_key(),
                           "reactor": hashlib.sha256(self.reactor_c.encode()).hexdigest(),
                           "preinit": [PREINIT_SOURCE, PREINIT_VERSION],
                           "skip": sorted(STDLIB_SKIP)},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]



def spec_file(name: str) -> Any:
    """A file of the runtime spec (runner, pins, reactor source): the checkout's own
    ``runtime/spec`` when this package runs from a source tree (a git worktree on
    ``PYTHONPATH`` beside an editable install of another one reads its own), else the
    installed package data."""
    here = Path(__file__).resolve().parent.parent / "runtime" / "spec" / name
    if here.is_file():
        return here
    return resources.files("wasm_exec._spec").joinpath(name)

def recipe(profile: str, spec: dict[str, Any]) -> Recipe:
    b = spec["build"]
    reactor_c = spec_file("reactor.c").read_text("utf-8")
    return Recipe(profile, Source(**b["cpython"]), Source(**b["zlib"]), b["ziglang"],
                  reactor_c, b.get("expected_outputs"))


# ------------------------------------------------------------------ helpers

def _run(cmd: list[str], cwd: Path, log_file: Path, env: dict[str, str] | None = None,
         what: str = "") -> None:
    with open(log_file, "ab") as out:
        out.write(("\n$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.run(cmd, cwd=str(cwd), stdout=out, stderr=subprocess.STDOUT,
                              env=env)
    if proc.returncode != 0:
        tail = log_file.read_text("utf-8", "replace").splitlines()[-25:]
        raise RuntimeBuildError(
            f"{what or cmd[0]} failed (exit {proc.returncode}); the last lines of "
            f"{log_file}:\n" + "\n".join(tail))


def sha256_of(path: Path) -> str:
    """A file's SHA-256, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _need(tool: str, install: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeBuildError(f"building the runtime needs `{tool}`; install it with: "
                                f"{install}")
    return path


def _debian_uri() -> str:
    """The Debian archive URI of the system's own apt configuration."""
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            words = line.split()
            if line.startswith("URIs:"):
                for uri in words[1:]:
                    if "security" not in uri and uri.rstrip("/").endswith("/debian"):
                        return uri
            elif line.startswith("deb ") and not line.startswith("deb-src"):
                for w in words[1:]:
                    if "://" in w and "security" not in w and w.rstrip("/").endswith("/debian"):
                        return w
    raise RuntimeBuildError(
        "no Debian archive found in the system's apt configuration (/etc/apt/sources.list*); "
        "the runtime's sources come from Debian's source packages: add the Debian archive "
        "to apt, or put the pinned tarballs in the build's sources folder by hand")


def fetch_sources(sources: list[Source], dest: Path, log: Log) -> dict[str, Path]:
    """Download each pinned tarball with apt-get (private list and state), verify it."""
    dest.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    missing: list[Source] = []
    for s in sources:
        path = dest / s.file
        if path.is_file() and path.stat().st_size == s.size and sha256_of(path) == s.sha256:
            found[s.package] = path
        else:
            missing.append(s)
    if missing:
        apt = _need("apt-get", "this build needs Debian's apt (a Debian or Ubuntu machine)")
        uri = _debian_uri()
        with tempfile.TemporaryDirectory(prefix="wasm-exec-apt-") as tmp:
            t = Path(tmp)
            (t / "lists" / "partial").mkdir(parents=True)
            by_suite: dict[str, list[Source]] = {}
            for s in missing:
                by_suite.setdefault(s.suite, []).append(s)
            for suite, items in by_suite.items():
                keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
                (t / "sources.list").write_text(
                    f"deb-src [signed-by={keyring}] {uri} {suite} main\n")
                opts = [f"-oDir::Etc::sourcelist={t / 'sources.list'}",
                        "-oDir::Etc::sourceparts=-", f"-oDir::State::Lists={t / 'lists'}",
                        "-oAPT::Sandbox::User=root", "-qq"]
                log(f"fetch: the {suite} source index (apt-get update with a private list)")
                proc = subprocess.run([apt, *opts, "update"], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeBuildError("apt-get update for the source index failed:\n"
                                            + proc.stderr[-2000:])
                for s in items:
                    log(f"fetch: {s.file} ({s.size / 1e6:.1f} MB, Debian {suite} "
                        f"source package {s.package})")
                    # the .dsc and Debian's patches may be missing from a mirror: only the
                    # upstream tarball is used, and it is checked below
                    subprocess.run([apt, *opts, "source", "--download-only", s.package],
                                   cwd=str(dest), capture_output=True, text=True)
        for s in missing:
            path = dest / s.file
            if not path.is_file():
                raise RuntimeBuildError(
                    f"apt-get could not download {s.file} (Debian {s.suite} source package "
                    f"{s.package}); put the file in {dest} by hand and run the build again")
            digest = sha256_of(path)
            if digest != s.sha256 or path.stat().st_size != s.size:
                path.unlink()
                raise RuntimeBuildError(
                    f"{s.file} has SHA-256 {digest}, the pin says {s.sha256}: refused "
                    "(deleted); run the build again, or check the pin")
            found[s.package] = path
    for extra in dest.iterdir():  # the .dsc / Debian patches apt-get may have brought
        if extra.is_file() and extra.name not in {s.file for s in sources}:
            extra.unlink()
    return found


def _zig(version: str) -> Path:
    """The zig binary of PyPI's ziglang package (the pinned version)."""
    try:
        import importlib.metadata

        have = importlib.metadata.version("ziglang")
    except Exception:  # noqa: BLE001 - not installed
        have = None
    if have != version:
        raise RuntimeBuildError(
            f"building the runtime needs ziglang=={version} (PyPI; found "
            f"{have or 'none'}); install it with: {sys.executable} -m pip install "
            f"ziglang=={version}   (bash build_runtime.sh does this for you)")
    import ziglang  # type: ignore[import-not-found]

    path = Path(ziglang.__file__).parent / "zig"
    if not path.is_file():
        raise RuntimeBuildError(f"ziglang is installed but {path} is missing: reinstall it "
                                f"({sys.executable} -m pip install --force-reinstall "
                                f"ziglang=={version})")
    return path


def _toolchain(zig: Path, folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    tools = {"cc": f'exec "{zig}" cc -target wasm32-wasi -Wno-error=date-time "$@"',
             "ar": f'exec "{zig}" ar "$@"', "ranlib": f'exec "{zig}" ranlib "$@"'}
    paths = {}
    for name, body in tools.items():
        p = folder / name
        p.write_text("#!/bin/sh\n" + body + "\n")
        p.chmod(0o755)
        paths[name] = str(p)
    return paths


def _extract(tarball: Path, dest: Path) -> Path:
    """Unpack ``tarball`` into ``dest`` (fresh); the single top folder it holds."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(dest)], check=True)
    tops = [p for p in dest.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise RuntimeBuildError(f"{tarball.name} does not hold one top folder")
    return tops[0]


def pack_stdlib(native_python: Path, lib: Path, sysconfig_dir: Path, out: Path,
                work: Path) -> int:
    """The standard library as bytecode (``.pyc``, hash-based, unchecked) in a stored zip.

    The native build of the same CPython compiles (same magic number; it is built without
    its extension modules, so it only writes the ``.pyc`` files), this process zips them in
    a fixed order with fixed dates. Returns the number of modules."""
    script = """
import marshal, os, sys
from importlib.util import MAGIC_NUMBER
lib, sysconfig_dir, dest, prefix = sys.argv[1:5]
skip = set(sys.argv[5].split(","))
work = sys.argv[6].encode()
entries = []
for root, dirs, files in os.walk(lib):
    rel = os.path.relpath(root, lib)
    parts = [] if rel == "." else rel.split(os.sep)
    if any(p in skip for p in parts):
        dirs[:] = []
        continue
    for f in files:
        if f.endswith(".py") and not (not parts and f in skip):
            entries.append((os.path.join(root, f), "/".join(parts + [f])))
for f in os.listdir(sysconfig_dir):
    if f.startswith("_sysconfigdata") and f.endswith(".py"):
        entries.append((os.path.join(sysconfig_dir, f), f))
header = MAGIC_NUMBER + b"\\x01\\x00\\x00\\x00" + bytes(8)
for path, arc in entries:
    with open(path, "rb") as fh:
        # (the build's own paths, in the sysconfig data, read as /build)
        code = compile(fh.read().replace(work, b"/build"), prefix + "/" + arc, "exec",
                       dont_inherit=True)
    target = os.path.join(dest, arc[:-3] + ".pyc")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as fh:
        fh.write(header + marshal.dumps(code))
"""
    with tempfile.TemporaryDirectory(prefix="wasm-exec-stdlib-") as tmp:
        proc = subprocess.run([str(native_python), "-I", "-S", "-c", script, str(lib),
                               str(sysconfig_dir), tmp, ZIP_PATH,
                               ",".join(sorted(STDLIB_SKIP)), str(work)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeBuildError("compiling the standard library failed:\n"
                                    + proc.stderr[-3000:])
        files = sorted(p.relative_to(tmp).as_posix() for p in Path(tmp).rglob("*.pyc"))
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
            for name in files:
                info = zipfile.ZipInfo(name, date_time=(2025, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                z.writestr(info, (Path(tmp) / name).read_bytes())
    return len(files)


def preinitialise(wasm: Path, stdlib_zip: Path, out: Path) -> None:
    """Boot the interpreter once and bake the result into ``out`` (see ``preinit``)."""
    import wasmtime

    from . import preinit
    from .vfs import MemoryFS

    def instantiate(module: wasmtime.Module, engine: wasmtime.Engine
                    ) -> tuple[wasmtime.Store, wasmtime.Instance]:
        store = wasmtime.Store(engine)
        store.set_wasi(wasmtime.WasiConfig())
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        linker.allow_shadowing = True
        # the same file system the runtime gets, so the interpreter's view (the preopened
        # "/" on fd 3, the stdlib zip's path) is what it will be
        fs = MemoryFS(stdlib_zip.read_bytes(), zip_path=ZIP_PATH)
        memory: list[Any] = []
        fs.install(linker, lambda: memory[0])
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        linker.define_func("host", "call", wasmtime.FuncType([i32] * 4, [i32]),
                           lambda *args: -1)
        ticks = [0]

        def clock_time_get(caller: wasmtime.Caller, clock_id: int, precision: int,
                           out: int) -> int:
            # a clock that advances 1 us a reading from fixed origins: what start-up
            # records of the time is the same in every build (a reproducible module)
            ticks[0] += 1
            now = ticks[0] * 1000 + (1_735_689_600 * 10**9 if clock_id == 0 else 0)
            memory[0].write(caller, now.to_bytes(8, "little"), out)
            return 0

        linker.define_func("wasi_snapshot_preview1", "clock_time_get",
                           wasmtime.FuncType([i32, i64, i32], [i32]), clock_time_get,
                           access_caller=True)
        instance = linker.instantiate(store, module)
        memory.append(instance.exports(store)["memory"])
        state["fs"] = fs
        return store, instance

    state: dict[str, Any] = {}

    def start(store: wasmtime.Store, instance: wasmtime.Instance) -> None:
        ex = instance.exports(store)
        ex["_initialize"](store)  # type: ignore[operator]
        src = PREINIT_SOURCE.encode()
        ptr = ex["host_alloc"](store, len(src))  # type: ignore[operator]
        ex["memory"].write(store, src, ptr)  # type: ignore[union-attr]
        status = ex["turn"](store, ptr, len(src))  # type: ignore[operator]
        fs = state["fs"]
        if status != 0:
            err = bytes(fs.console[2]).decode("utf-8", "replace")
            raise RuntimeBuildError(f"the built interpreter did not start (turn -> {status})"
                                    f":\n{err[-3000:]}")
        if fs.open_fds() != [0, 1, 2, 3]:
            raise RuntimeBuildError("the interpreter left files open at start-up: "
                                    f"{fs.open_fds()}")

    data = preinit.snapshot(wasm.read_bytes(), instantiate=instantiate, start=start)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)


def licences(dest: Path, cpython_src: Path, zlib_src: Path, zig: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(cpython_src / "LICENSE", dest / "CPython-PSF-2.0.txt")
    shutil.copy(zlib_src / "LICENSE", dest / "zlib.txt")
    libc = zig.parent / "lib" / "libc" / "wasi"
    for name, target in (("LICENSE-MIT", "wasi-libc-MIT.txt"),
                         ("LICENSE-APACHE", "wasi-libc-Apache-2.0.txt"),
                         ("LICENSE-APACHE-LLVM", "wasi-libc-Apache-2.0-LLVM.txt")):
        if (libc / name).is_file():
            shutil.copy(libc / name, dest / target)
    if (zig.parent / "LICENSE").is_file():
        shutil.copy(zig.parent / "LICENSE", dest / "zig-compiler-rt-MIT.txt")


# ------------------------------------------------------------------ the build

def build(r: Recipe, out_dir: Path, work_root: Path, *, log: Log = print,
          jobs: int | None = None) -> Path:
    """Build the runtime of recipe ``r`` into ``out_dir`` (a no-op when its lock file says
    it was built from the same inputs). Returns the module's path."""
    key = r.key()
    lock_path = out_dir / LOCK_FILE
    if lock_path.is_file():
        try:
            lock = json.loads(lock_path.read_text())
            if lock.get("key") == key and all(
                    (out_dir / f["file"]).is_file()
                    and (out_dir / f["file"]).stat().st_size == f["size"]
                    for f in lock["outputs"]):
                log(f"build: up to date ({out_dir}, key {key})")
                return out_dir / WASM_NAME
        except (OSError, ValueError, KeyError, TypeError):
            pass
    jobs = jobs or os.cpu_count() or 2
    work = work_root / r.work_key()
    work.mkdir(parents=True, exist_ok=True)
    log_file = work / "build.log"
    started = time.monotonic()

    def step(msg: str) -> None:
        log(f"[{time.monotonic() - started:5.0f} s] {msg}")

    for tool, how in (("make", "apt-get install make"), ("tar", "apt-get install tar"),
                      ("xz", "apt-get install xz-utils"), ("cc", "apt-get install gcc")):
        _need(tool, how)
    zig = _zig(r.ziglang)
    env = dict(os.environ)
    # zig's caches (its wasi-libc build among them) stay with this build
    env["ZIG_GLOBAL_CACHE_DIR"] = str(work_root / "zig-cache")
    env["ZIG_LOCAL_CACHE_DIR"] = str(work_root / "zig-cache")
    env["SOURCE_DATE_EPOCH"] = "1735689600"
    step(f"fetch: sources into {work_root / 'sources'}")
    tarballs = fetch_sources([r.cpython, r.zlib], work_root / "sources", step)
    tc = _toolchain(zig, work / "toolchain")

    # zlib, as a static library for wasm32-wasi
    zlib_prefix = work / "zlib"
    if not (zlib_prefix / "lib" / "libz.a").is_file():
        step("zlib: compile")
        zsrc = _extract(tarballs[r.zlib.package], work / "zlib-src")
        objs = []
        for name in ZLIB_SOURCES:
            _run([tc["cc"], "-O2", "-D_LARGEFILE64_SOURCE=1", "-DHAVE_HIDDEN", "-c",
                  f"{name}.c", "-o", f"{name}.o"], zsrc, log_file, env, "zlib")
            objs.append(f"{name}.o")
        (zlib_prefix / "lib").mkdir(parents=True, exist_ok=True)
        (zlib_prefix / "include").mkdir(parents=True, exist_ok=True)
        _run([tc["ar"], "rcs", str(zlib_prefix / "lib" / "libz.a"), *objs], zsrc, log_file,
             env, "zlib")
        for h in ("zlib.h", "zconf.h"):
            shutil.copy(zsrc / h, zlib_prefix / "include" / h)
    zsrc = work / "zlib-src"
    zsrc_top = next(p for p in zsrc.iterdir() if p.is_dir())

    src_root = work / "cpython-src"
    if not (work / ".extracted").is_file():
        step("cpython: unpack the source")
        _extract(tarballs[r.cpython.package], src_root)
        (work / ".extracted").write_text("ok")
    src = next(p for p in src_root.iterdir() if p.is_dir())

    # a native CPython of the same source: the cross build's build Python
    native = work / "native"
    native_python = native / "python"
    if not native_python.is_file():
        native.mkdir(exist_ok=True)
        step("native: configure (the build Python, same source)")
        _run([str(src / "configure"), "-q"], native, log_file, env, "native configure")
        step(f"native: compile (make -j{jobs} python)")
        _run(["make", f"-j{jobs}", "-s", "python"], native, log_file, env, "native make")
    cross = work / "wasi"
    if not (cross / "Makefile").is_file():
        cross.mkdir(exist_ok=True)
        step("wasi: configure (wasm32-wasi, zig cc)")
        # (build paths are mapped to /build in what the compiler writes: a reproducible
        # module whatever the cache directory)
        cflags = f"{CFLAGS} -ffile-prefix-map={work}=/build"
        cenv = dict(env, CONFIG_SITE=str(src / "Tools" / "wasm" / "config.site-wasm32-wasi"),
                    CC=tc["cc"], AR=tc["ar"], RANLIB=tc["ranlib"], CFLAGS=cflags,
                    ZLIB_CFLAGS=f"-I{zlib_prefix / 'include'}",
                    ZLIB_LIBS=f"-L{zlib_prefix / 'lib'} -lz", **CONFIGURE_OVERRIDES)
        _run([str(src / "configure"), "-q", "--host=wasm32-unknown-wasi",
              "--build=x86_64-pc-linux-gnu", f"--with-build-python={native_python}",
              "--disable-ipv6", "--disable-test-modules"], cross, log_file, cenv,
             "wasi configure")
        makefile = cross / "Makefile"
        text = makefile.read_text()
        lines = [f"CONFIGURE_LDFLAGS_NODIST= {LDFLAGS_NODIST}"
                 if ln.startswith("CONFIGURE_LDFLAGS_NODIST=") else ln
                 for ln in text.splitlines()]
        makefile.write_text("\n".join(lines) + "\n")
    # getpath's compiled-in source folder (unused: the runtime's paths are configured) read
    # as /build, so the module does not depend on where the cache is
    makefile = cross / "Makefile"
    text = makefile.read_text()
    if "-DVPATH='\"$(VPATH)\"'" in text:
        makefile.write_text(text.replace("-DVPATH='\"$(VPATH)\"'", "-DVPATH='\"/build\"'"))
    step(f"wasi: compile (make -j{jobs})")
    # (not `all`: its command-line python.wasm would need the name-service stubs that only
    # the reactor carries; the reactor's link below builds every object it needs)
    _run(["make", f"-j{jobs}", "-s", "pybuilddir.txt"], cross, log_file, env, "wasi make")
    step("wasi: link the reactor")
    (cross / "wasm_exec_reactor.c").write_text(r.reactor_c)
    (cross / "reactor.mk").write_text(REACTOR_MK.format(src="wasm_exec_reactor.c"))
    for stale in ("wasm_exec_reactor.o", "wasm_exec_reactor.wasm"):
        (cross / stale).unlink(missing_ok=True)
    _run(["make", f"-j{jobs}", "-f", "Makefile", "-f", "reactor.mk", "wasm_exec_reactor.wasm"],
         cross,
         log_file, env, "reactor link")

    staging = out_dir.with_name(out_dir.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    step("stdlib: pack the standard library as bytecode")
    sysconfig_dir = next((cross / "build").glob("lib.wasi-wasm32-*"))
    count = pack_stdlib(native_python, src / "Lib", sysconfig_dir, staging / ZIP_NAME, work)
    step(f"stdlib: {count} modules, {(staging / ZIP_NAME).stat().st_size / 1e6:.1f} MB")
    step("pre-initialise: boot the interpreter once, bake its memory into the module")
    preinitialise(cross / "wasm_exec_reactor.wasm", staging / ZIP_NAME, staging / WASM_NAME)
    licences(staging / "licenses", src, zsrc_top, zig)
    outputs = [{"file": name, "size": (staging / name).stat().st_size,
                "sha256": sha256_of(staging / name)} for name in (WASM_NAME, ZIP_NAME)]
    lock = {"key": key, "recipe": RECIPE_VERSION, "profile": r.profile,
            "inputs": {"cpython": r.cpython.__dict__, "zlib": r.zlib.__dict__,
                       "ziglang": r.ziglang,
                       "reactor_c_sha256": hashlib.sha256(r.reactor_c.encode()).hexdigest(),
                       "cflags": CFLAGS, "ldflags": LDFLAGS_NODIST,
                       "configure_overrides": CONFIGURE_OVERRIDES},
            "outputs": outputs,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.monotonic() - started, 1)}
    if r.expected:
        got = {o["file"]: o["sha256"] for o in outputs}
        same = got == r.expected
        lock["reproduced"] = same
        step("reproducible: the outputs match the pinned reference build" if same else
             "note: the outputs differ from the pinned reference build (pins.json "
             "expected_outputs); the runtime works, but was not reproduced bit for bit "
             "(a different reactor.c or toolchain, or a bug in the build's determinism)")
    (staging / LOCK_FILE).write_text(json.dumps(lock, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    step(f"done: {out_dir / WASM_NAME} ({outputs[0]['size'] / 1e6:.1f} MB, SHA-256 "
         f"{outputs[0]['sha256'][:16]}...)")
    return out_dir / WASM_NAME


def read_lock(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / LOCK_FILE).read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None

