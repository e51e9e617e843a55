"""Load the CIFAR "python version" pickles without letting them run code.

A pickle can name any importable callable and have it called on load
(``os.system`` included), so the unpickler below resolves only the few numpy
callables that rebuild arrays and refuses every other global.
"""
from __future__ import annotations

import importlib
import io
import os
import pickle
from pathlib import Path
from typing import Any, Callable

from advrepair.errors import DatasetError

# (module, name) pairs as they appear in pickles written by numpy 1.x ("numpy.core")
# and numpy 2.x ("numpy._core").
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        *(
            (f"numpy.{core}.{module}", name)
            for core in ("core", "_core")
            for module, name in (
                ("multiarray", "_reconstruct"),
                ("multiarray", "scalar"),
                ("numeric", "_frombuffer"),
            )
        ),
    ]
)


def _resolve(module: str, name: str) -> Callable[..., Any]:
    """The allowed callable, taken from whichever of numpy.core / numpy._core this numpy has.

    Importing ``numpy.core.*`` under numpy 2 emits a DeprecationWarning, so the
    private ``numpy._core`` is tried first.
    """
    if module == "numpy":
        return getattr(importlib.import_module("numpy"), name)
    submodule = module.rsplit(".", 1)[1]
    for core in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{core}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise DatasetError(f"this numpy has no {module}.{name}, needed to read the pickle")


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` resolves only numpy array reconstruction callables."""

    def __init__(self, file: io.BufferedIOBase, source: str = "<pickle>") -> None:
        # encoding="bytes": the CIFAR pickles come from Python 2, whose str must stay bytes
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _resolve(module, name)
        raise DatasetError(
            f"refusing to load {self._source}: it references the global {module}.{name}, which is not one "
            "of the numpy array builders a CIFAR pickle needs; the file is not a genuine CIFAR batch "
            "(possibly malicious). Use the binary distribution or download the python one again"
        )


def load_restricted_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` with ``RestrictedUnpickler``.

    Raises:
        DatasetError: a forbidden global, or a file that is not a complete pickle.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return RestrictedUnpickler(fh, source=str(path)).load()
    except DatasetError:
        raise
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot unpickle {path}: {type(exc).__name__}: {exc}; download the file again") from exc
