"""Native CPU kernels: C sources shipped with the package, compiled on first use, loaded by ctypes.

Eager PyTorch has no operation for some of the fusions an attack's inner loop wants (the
first convolution and its max-pool in one pass, :mod:`advrepair.engine.fused_conv_pool`;
RIDE's per-image networks trained whole, :mod:`advrepair.defenses.ride.native_engine`).
Their C sources live in ``advrepair/engine/kernels`` (``team.h``: the threads they share).
The first process that needs one compiles it with the system's C compiler (``$CC``, else
``cc``; a fraction of a second, no PyTorch headers) into a cache directory and every later
process loads the cached library.
Without a compiler, or with ``ADVREPAIR_NATIVE_KERNELS=0``, :func:`load_kernel` returns
``None`` and callers keep PyTorch's own operations: the results agree up to float rounding.

The library is built for this CPU (``-march=native``), so its file name carries a digest of
the source and the shared headers, the flags, the compiler and the CPU's model and feature flags: a cache shared
between machines never hands one CPU's build to another.

Example:
    >>> library = load_kernel("conv_pool")
    >>> library is None or hasattr(library, "conv_pool_forward")
    True
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Callable

#: set to ``0`` to use PyTorch's operations only (results record the choice)
SWITCH = "ADVREPAIR_NATIVE_KERNELS"
#: where compiled kernels are kept (default ``~/.cache/advrepair/native``)
CACHE_VARIABLE = "ADVREPAIR_NATIVE_CACHE"

SOURCES = Path(__file__).with_name("kernels")
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-shared", "-pthread")


def native_kernels_enabled() -> bool:
    """Whether native kernels may be used in this process (``ADVREPAIR_NATIVE_KERNELS``)."""
    return os.environ.get(SWITCH, "1") != "0"


def cache_directory() -> Path:
    """Where compiled kernels go: ``ADVREPAIR_NATIVE_CACHE``, else ``~/.cache/advrepair/native``;
    where that cannot be created (a read-only home), a private folder in the temp directory."""
    configured = os.environ.get(CACHE_VARIABLE)
    if configured:
        return Path(configured)
    home = Path.home() / ".cache" / "advrepair" / "native"
    try:
        home.mkdir(parents=True, exist_ok=True)
        return home
    except OSError:
        return _private_temp_directory()


def _private_temp_directory() -> Path:
    """A per-user folder in the shared temp directory that only this user can write: a library
    someone else planted there must never be loaded."""
    folder = Path(tempfile.gettempdir()) / f"advrepair-native-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    status = folder.lstat()
    if folder.is_symlink() or status.st_uid != os.getuid() or status.st_mode & 0o022:
        raise OSError(f"{folder} is not a private folder of this user")
    return folder


def _cpu_identity() -> str:
    """The CPU's model and feature flags (what ``-march=native`` compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


def _build(name: str, compiler: str) -> Path:
    source = SOURCES / f"{name}.c"
    folder = cache_directory()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    headers = [header.read_text() for header in sorted(SOURCES.glob("*.h"))]  # shared by the kernels
    digest = hashlib.sha256("\0".join([source.read_text(), *headers, " ".join(FLAGS), version, platform.machine(),
                                       _cpu_identity()]).encode()).hexdigest()[:16]
    target = folder / f"{name}-{digest}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    # compile beside the target and rename: processes racing on the same kernel each build
    # their own file and the last rename wins; none ever loads a half-written library
    handle, partial = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", partial, str(source)], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip()[-2000:] or f"{compiler} exited with {done.returncode}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


@functools.lru_cache(maxsize=None)
def _load(name: str) -> ctypes.CDLL | None:
    compiler = _compiler()
    if compiler is None:
        return None
    try:
        return ctypes.CDLL(str(_build(name, compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(f"advrepair: the native kernel {name!r} could not be built ({error}); "
                      "PyTorch's own operations are used instead", RuntimeWarning, stacklevel=3)
        return None


def load_kernel(name: str) -> ctypes.CDLL | None:
    """The compiled library for ``kernels/NAME.c``, or ``None`` when native kernels are off or
    cannot be built here (no compiler: silently; a failed build: with a warning)."""
    if not native_kernels_enabled():
        return None
    return _load(name)


def bound_kernel(name: str, declare: Callable[[ctypes.CDLL], None], openmp_entry: str) -> ctypes.CDLL | None:
    """:func:`load_kernel` with the library's functions declared by ``declare`` (argument and
    result types, once per library) and PyTorch's OpenMP runtime handed to it through its
    ``openmp_entry(parallel, thread_num, num_threads)`` (``kernels/team.h``; without a runtime
    the kernel keeps its pthreads)."""
    library = load_kernel(name)
    return None if library is None else _bound(library, declare, openmp_entry)


@functools.lru_cache(maxsize=None)
def _bound(library: ctypes.CDLL, declare: Callable[[ctypes.CDLL], None], openmp_entry: str) -> ctypes.CDLL:
    declare(library)
    function = getattr(library, openmp_entry)
    function.argtypes = [ctypes.c_void_p] * 3
    function.restype = None
    runtime = openmp_runtime()
    if runtime is not None:
        function(*runtime)
    return library


def openmp_runtime() -> tuple[int, int, int] | None:
    """Addresses of ``GOMP_parallel``, ``omp_get_thread_num`` and ``omp_get_num_threads`` in the
    OpenMP runtime PyTorch runs on (already loaded in this process), or ``None``.

    A kernel that splits its work over the same threads as PyTorch's operations starts at
    once; threads of its own would compete with PyTorch's, which spin for a while after each
    operation (measured: the fused first layer took twice its isolated time on its own threads).
    """
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    import torch  # its own runtime first: another library may have loaded a second one
    home = os.path.dirname(torch.__file__)
    paths = sorted({line.split()[-1] for line in lines if line.split()[-1].startswith("/")
                    and os.path.basename(line.split()[-1]).startswith(("libgomp", "libiomp5"))},
                   key=lambda path: (not path.startswith(home), path))
    for path in paths:
        try:
            runtime = ctypes.CDLL(path)
            entry = [ctypes.cast(getattr(runtime, symbol), ctypes.c_void_p).value
                     for symbol in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")]
        except (OSError, AttributeError):
            continue
        if all(entry):
            return entry[0], entry[1], entry[2]  # type: ignore[return-value]
    return None
