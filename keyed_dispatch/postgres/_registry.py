"""The job functions a worker may run: registered by name, nothing else.

A job row names its function as text, and anyone who can write a row could
name any importable function (``subprocess:getoutput``). So a worker never
imports what a row names: it runs only functions registered in its own
process, and a job naming another fails at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from ._common import check_function_name, resolve_function

__all__ = ["function_name", "job_function", "registered", "registered_function", "resolve_functions"]

F = TypeVar("F", bound=Callable[..., Any])

# Written at import time of the modules that register (the import lock
# serializes those), read by worker threads: single dict operations.
_registry: dict[str, Callable[..., Any]] = {}


def function_name(fn: Callable[..., Any]) -> str:
    """``module:qualname`` of ``fn``, the name a job gives it.

    Raises:
        ValueError: ``fn`` has no such name (a lambda, a nested function):
            register it with an explicit ``name``.
    """
    name = f"{getattr(fn, '__module__', None)}:{getattr(fn, '__qualname__', None)}"
    try:
        return check_function_name(name)
    except ValueError:
        raise ValueError(
            f"{fn!r} has no 'module:function' name ({name!r}); register it as job_function(name=...)"
        ) from None


@overload
def job_function(fn: F, /) -> F: ...
@overload
def job_function(*, name: str | None = None) -> Callable[[F], F]: ...
def job_function(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Register a function that workers may run; a decorator, returning it unchanged.

    ``@job_function`` registers ``fn`` under ``module:qualname`` (what
    submitters name: ``submit(key, "myapp.tasks:place_orders", ...)``);
    ``@job_function(name="myapp.tasks:place_orders")`` under another name
    (a function defined in ``__main__``, say). A worker runs only the
    functions registered in its process: those of the modules it imports
    (``python -m keyed_dispatch worker --import myapp.tasks``) and those
    passed to ``run_worker(functions=...)``.

    Registering the same function again (a reloaded module) replaces it.

    Raises:
        ValueError: the name is malformed, or taken by another function.
    """

    if name is not None:
        check_function_name(name)

    def register(target: F) -> F:
        if not callable(target):
            raise TypeError(f"a job function must be callable, got {type(target).__name__}")
        label = name if name is not None else function_name(target)
        held = _registry.get(label)
        if held is not None and _identity(held) != _identity(target):
            raise ValueError(f"job function name {label!r} is already registered for {held!r}")
        _registry[label] = target
        return target

    if fn is not None:
        return register(fn)
    return register


def _identity(fn: Callable[..., Any]) -> tuple[object, object]:
    return getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)


def registered_function(name: str) -> Callable[..., Any] | None:
    """The function registered as ``name`` in this process, None if there is none."""
    return _registry.get(name)


def registered() -> dict[str, Callable[..., Any]]:
    """A copy of the registry: name -> function."""
    return dict(_registry)


def resolve_functions(functions: Iterable[Callable[..., Any] | str]) -> dict[str, Callable[..., Any]]:
    """Functions given by object or by ``module:function`` name, by their job name.

    A name is imported here, once (the caller vouches for it); an object is
    known under :func:`function_name`.

    Raises:
        ValueError, ImportError, TypeError: as :func:`resolve_function`, or an
            object without a ``module:function`` name.
    """
    resolved: dict[str, Callable[..., Any]] = {}
    for item in functions:
        if isinstance(item, str):
            resolved[item] = resolve_function(item)
        elif callable(item):
            resolved[function_name(item)] = item
        else:
            raise TypeError(f"functions must be callables or 'module:function' names, got {item!r}")
    return resolved
