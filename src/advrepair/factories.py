"""A user's own code by name: ``"package.module:factory"``, as the CLI and the registries take it.

The factory is imported, never unpickled: the user's module runs as ordinary Python, the
way ``python -m`` would run it, from the current folder or the installed packages.
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Callable

from advrepair.errors import InputError


def is_factory_spec(spec: str) -> bool:
    """``module:attribute`` with a module path on the left (a Windows drive letter is not one)."""
    module, sep, attr = spec.partition(":")
    return bool(sep) and bool(attr) and len(module) > 1 and all(p.isidentifier() for p in module.split(".")) \
        and all(p.isidentifier() for p in attr.split("."))


def load_factory(spec: str) -> Callable[..., Any]:
    """The callable ``spec`` names.

    Raises:
        InputError: a malformed spec, a module that cannot be imported, a missing or
            non-callable attribute.
    """
    if not isinstance(spec, str) or not is_factory_spec(spec):
        raise InputError(f"{spec!r} is not a factory: write module:function, e.g. mypkg.defenses:make_defense")
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the user's own folder comes first
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"cannot import {module_name!r} for {spec!r}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise InputError(f"{module_name!r} has no attribute {attr!r} (from {spec!r})")
        target = getattr(target, part)
    if not callable(target):
        raise InputError(f"{spec!r} is a {type(target).__name__}, not a callable factory")
    return target


def call_factory(factory: Callable[..., Any], **available: Any) -> Any:
    """Call ``factory`` with those of ``available`` its signature names (e.g. ``classifier``,
    ``eps``, ``seed``); a parameter it requires and we cannot give is an InputError."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return factory()
    kwargs, missing = {}, []
    for name, p in signature.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in available:
            kwargs[name] = available[name]
        elif p.default is p.empty:
            missing.append(name)
    if missing:
        raise InputError(f"{getattr(factory, '__qualname__', factory)} needs {missing}; a factory may take only "
                         f"{sorted(available)}")
    return factory(**kwargs)


def call_factory_exactly(factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``factory(*args, **kwargs)``, every argument given (an attack's parameters); one it does not
    take is an InputError naming it, not a TypeError from inside the user's code."""
    try:
        inspect.signature(factory).bind(*args, **kwargs)
    except TypeError as exc:
        raise InputError(f"{getattr(factory, '__qualname__', factory)} cannot take ({len(args)} positional, "
                         f"{sorted(kwargs)}): {exc}") from None
    except ValueError:  # no signature to check (a builtin): let the call say
        pass
    return factory(*args, **kwargs)


__all__ = ["call_factory", "call_factory_exactly", "is_factory_spec", "load_factory"]
