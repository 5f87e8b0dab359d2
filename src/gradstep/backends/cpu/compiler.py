"""Compile generated C into a shared object, cache it on disk, and load it with ctypes.

The cache is code that gets loaded into the process, so it is kept safe:

- it lives in a per-user directory (``$GRADSTEP_CACHE_DIR``, else ``$XDG_CACHE_HOME/gradstep``,
  else ``~/.cache/gradstep``), created with mode 0700; a directory that is not ours or is
  writable by others is not used (we then compile into a private temporary directory);
- an entry's key is the sha256 of its source, the compiler's identity, the flags and the CPU
  (``-march=native`` code is only valid on the CPU that built it);
- a compiled library is named by the sha256 of its own bytes (``<key>-<digest>.so``) and found
  through a small index file ``<key>.ref``; both are written to a temporary name and renamed into
  place, so concurrent compilers never expose a half-written file;
- before loading, the library's bytes are hashed again and the source stored beside it is
  re-hashed to the key: a tampered or corrupt entry is never loaded, it is rebuilt.

Within a process, loaded kernels are memoised by key, so the hot path never touches the disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..cache_files import atomic_write

FLAGS = (
    "-O3",
    "-march=native",
    "-ffp-contract=off",  # one rounding per op, as torch's kernels (fma only where written)
    "-fno-math-errno",  # lets sqrt vectorise; results are unchanged
    "-fno-trapping-math",  # lets conditionals vectorise; results are unchanged
    "-fopenmp",
    "-fPIC",
    "-shared",
)
_ARGTYPES = (
    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
)


@dataclass(frozen=True)
class Toolchain:
    """How one kind of source is built: compiler flags, the source file's suffix, and the
    arguments after the output (libraries). All of it goes into the cache key."""

    flags: tuple[str, ...]
    suffix: str
    libs: tuple[str, ...] = ()


#: the generated C kernels (and other small C helpers), loaded with ctypes
C_KERNELS = Toolchain(FLAGS, ".c", ("-lm",))


class CompilerUnavailable(RuntimeError):
    """No usable C compiler (the fused CPU backend then falls back to foreach)."""


class CompileError(RuntimeError):
    """The compiler rejected generated source (a bug: please report it)."""


_lock = threading.Lock()
_loaded: dict[tuple[str, str], ctypes._CFuncPtr] = {}
_compiler_id: dict[str, str] = {}


def compiler(variable: str = "CC", defaults: tuple[str, ...] = ("gcc", "cc")) -> list[str]:
    """The C compiler command: ``$CC`` if set, else ``gcc``, else ``cc`` (for C++:
    ``compiler("CXX", ("g++", "c++"))``)."""
    cmd = os.environ.get(variable)
    candidates = [cmd] if cmd else list(defaults)
    for cand in candidates:
        argv = shlex.split(cand)
        if argv and shutil.which(argv[0]):
            return argv
    language = "C++" if variable == "CXX" else "C"
    raise CompilerUnavailable(
        f"no {language} compiler found (tried {', '.join(candidates)}; set {variable})")


def compiler_identity(argv: list[str]) -> str:
    """The compiler's version banner and target, which go into every cache key."""
    key = " ".join(argv)
    if key not in _compiler_id:
        try:
            out = subprocess.run(
                [*argv, "--version"], capture_output=True, text=True, timeout=30, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError) as e:
            raise CompilerUnavailable(f"C compiler {key!r} does not run: {e}") from e
        _compiler_id[key] = out.strip().splitlines()[0] if out.strip() else key
    return _compiler_id[key]


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    ident = [platform.machine()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features")):
                    ident.append(line.strip())
                if line.strip() == "":
                    break  # the first processor is enough
    except OSError:
        ident.append(platform.processor())
    return "\n".join(ident)


def cache_dir() -> Path | None:
    """The per-user kernel cache, created 0700; ``None`` if it cannot be used safely."""
    root = os.environ.get("GRADSTEP_CACHE_DIR")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "gradstep"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError:
        return None
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        return None  # someone else could plant a library here
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_key(source: str, argv: list[str], toolchain: Toolchain = C_KERNELS) -> str:
    ident = "\0".join([source, compiler_identity(argv), " ".join(toolchain.flags),
                       " ".join(toolchain.libs), _cpu_identity()])
    return _sha256(ident.encode())



def _verified_library(directory: Path, key: str, argv: list[str],
                      toolchain: Toolchain = C_KERNELS) -> Path | None:
    """The cached library for ``key`` if every check passes, else ``None``."""
    try:
        digest = (directory / f"{key}.ref").read_text().strip()
        lib = directory / f"{key}-{digest}.so"
        source = (directory / f"{key}{toolchain.suffix}").read_text()
        if len(digest) != 64 or _sha256(lib.read_bytes()) != digest:
            return None
        if cache_key(source, argv, toolchain) != key:
            return None
        return lib
    except (OSError, UnicodeDecodeError):
        return None


def _compile(source: str, directory: Path, key: str, argv: list[str],
             toolchain: Toolchain = C_KERNELS) -> Path:
    """Build ``source`` and publish it in ``directory`` under ``key``."""
    with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as tmp:
        src, out = Path(tmp) / f"kernel{toolchain.suffix}", Path(tmp) / "kernel.so"
        src.write_text(source)
        try:
            res = subprocess.run(
                [*argv, *toolchain.flags, str(src), "-o", str(out), *toolchain.libs],
                capture_output=True,
                text=True,
                timeout=300,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise CompilerUnavailable(f"running the C compiler failed: {e}") from e
        if res.returncode != 0:
            raise CompileError(
                f"{' '.join(argv)} failed (exit {res.returncode}):\n{res.stderr[-2000:]}"
            )
        data = out.read_bytes()
    digest = _sha256(data)
    lib = directory / f"{key}-{digest}.so"
    atomic_write(lib, data)
    atomic_write(directory / f"{key}{toolchain.suffix}", source.encode())
    atomic_write(directory / f"{key}.ref", digest.encode())
    return lib


def build(source: str, argv: list[str], toolchain: Toolchain = C_KERNELS):
    """``(path, keep)``: the shared object built from ``source``, from the cache if a verified
    copy is there; ``keep`` is a private build directory to hold on to (or None)."""
    key = cache_key(source, argv, toolchain)
    directory = cache_dir()
    private = None
    if directory is None:
        private = tempfile.TemporaryDirectory(prefix="gradstep-")
        directory = Path(private.name)
    path = _verified_library(directory, key, argv, toolchain)
    if path is None:
        _remove_stale_builds(directory)
        path = _compile(source, directory, key, argv, toolchain)
    return path, private


def _remove_stale_builds(directory: Path, age: float = 3600.0) -> None:
    """Build directories over an hour old: left by a process that exited mid-build."""
    now = time.time()
    for stale in directory.glob(".build-*"):
        with contextlib.suppress(OSError):
            if now - stale.stat().st_mtime > age:
                shutil.rmtree(stale)


def load(source: str, name: str = "gs_step", argtypes: tuple = _ARGTYPES) -> ctypes._CFuncPtr:
    """The function ``name`` of ``source``, compiled (or taken from the cache) and loaded."""
    argv = compiler()
    key = cache_key(source, argv)
    fn = _loaded.get((key, name))
    if fn is not None:
        return fn
    with _lock:
        fn = _loaded.get((key, name))
        if fn is not None:
            return fn
        lib_path, private = build(source, argv)
        lib = ctypes.CDLL(str(lib_path))  # ctypes releases the GIL during calls
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = None
        fn._gradstep_lib = lib  # keep the library alive with the function
        fn._gradstep_path = str(lib_path)
        if private is not None:
            fn._gradstep_tmp = private
        _loaded[(key, name)] = fn
        return fn
