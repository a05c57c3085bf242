"""Find a task: by built-in name (``[task] name = "mnist"``) or by reference (``ref``).

A built-in registers a factory with :func:`register` when its module is imported; the
modules of :data:`BUILTIN_MODULES` are imported the first time a built-in is asked for,
so ``import edgeai.task`` stays cheap. A reference ``"module.path:attribute"`` names a
Task subclass, a factory returning a Task, or a Task instance; the module is imported
from the experiment file's folder (put first on ``sys.path``) or from the installed
packages.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from edgeai.errors import ConfigError, UnknownNameError
from edgeai.task.base import Task
from edgeai.task.config import TaskConfig

__all__ = [
    "TaskConfig",  # re-exported from its own module (torch-free), its old home here
    "add_import_path",
    "builtin_factory",
    "builtin_names",
    "load_task",
    "register",
    "resolve_ref",
]

# Imported on first use; each calls register() for its tasks.  A module missing from a
# stripped-down install is skipped, so its name is simply not offered.
BUILTIN_MODULES = (
    "edgeai.task.builtin.mnist",
    "edgeai.task.builtin.shakespeare",
    "edgeai.task.builtin.regression",
)

_FACTORIES: dict[str, Callable[..., Task]] = {}
_loaded = False


def register(name: str, factory: Callable[..., Task]) -> None:
    """Offer ``factory`` (a Task subclass or a function returning a Task) as ``name``.

    Registering the same factory twice is harmless (a module imported again); another
    factory under a taken name is an error.
    """
    known = _FACTORIES.get(name)
    if known is not None and known is not factory and _qualname(known) != _qualname(factory):
        raise ValueError(f"task {name!r} is already registered ({_qualname(known)})")
    _FACTORIES[name] = factory


def builtin_names() -> list[str]:
    """The names a ``[task] name = ...`` may use, sorted."""
    _load_builtins()
    return sorted(_FACTORIES)


def builtin_factory(name: str) -> Callable[..., Task]:
    """The registered factory of ``name``.

    Raises
    ------
    UnknownNameError
        Listing the built-in names.
    """
    _load_builtins()
    factory = _FACTORIES.get(name)
    if factory is None:
        raise UnknownNameError("task", name, sorted(_FACTORIES))
    return factory


def load_task(config: TaskConfig, base_dir: Path | str | None = None) -> Task:
    """Build the task ``config`` names; a ``ref`` imports from ``base_dir`` first.

    Raises
    ------
    ConfigError
        The module cannot be imported, the attribute is missing or is not a Task, the
        options do not fit its constructor, or building it failed; the message says
        which and how to fix it.
    """
    if config.name is not None:
        try:
            target: object = builtin_factory(config.name)
        except UnknownNameError as exc:
            raise ConfigError(f"task.name: {exc}") from exc
    else:
        target = resolve_ref(str(config.ref), config.path or base_dir)
    return _instantiate(target, config)


def resolve_ref(ref: str, base_dir: Path | str | None = None) -> object:
    """Import ``"module.path:attribute"``, with ``base_dir`` first on ``sys.path``."""
    module_name, _, attr_path = ref.partition(":")
    if base_dir is not None:
        add_import_path(base_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        where = f" in {Path(base_dir).resolve()} or" if base_dir is not None else ""
        raise ConfigError(
            f"task.ref = {ref!r}: cannot import module {module_name!r} ({exc}); put "
            f"{module_name.replace('.', '/')}.py{where} in an installed package"
        ) from exc
    except Exception as exc:  # a user's module may raise anything while importing
        raise ConfigError(
            f"task.ref = {ref!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    target: object = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise ConfigError(
                f"task.ref = {ref!r}: module {module_name!r} has no attribute {attr_path!r}; "
                "name a Task subclass, a function returning a Task, or a Task instance"
            ) from exc
    return target


def add_import_path(folder: Path | str) -> None:
    """Put ``folder`` first on ``sys.path`` (once), so a user's task module imports."""
    entry = str(Path(folder).resolve())
    if entry not in sys.path:
        sys.path.insert(0, entry)


def _instantiate(target: object, config: TaskConfig) -> Task:
    options = dict(config.options)
    if isinstance(target, Task):
        if options:
            raise ConfigError(
                f"task {config.label!r} is an instance, so [task.options] cannot reach it; "
                "name its class or a factory function instead, or drop the options"
            )
        return target
    if inspect.isclass(target) and not issubclass(target, Task):
        raise ConfigError(
            f"task {config.label!r} is the class {_qualname(target)}, not a subclass of "
            "edgeai.task.Task; subclass it (class MyTask(Task): ...)"
        )
    if not callable(target):
        raise ConfigError(
            f"task {config.label!r} is a {type(target).__name__}, not a Task; name a "
            "subclass of edgeai.task.Task, a function returning one, or an instance"
        )
    if inspect.isabstract(target):
        missing = ", ".join(sorted(getattr(target, "__abstractmethods__", ())))
        raise ConfigError(f"task {config.label!r} does not implement {missing}")
    try:
        inspect.signature(target).bind(**options)
    except TypeError as exc:
        raise ConfigError(f"task {config.label!r}: [task.options] do not fit: {exc}") from exc
    except ValueError:  # no signature to inspect (a builtin); calling it will tell
        pass
    try:
        task = target(**options)
    except ConfigError as exc:
        raise ConfigError(f"task {config.label!r}: {exc}") from exc
    except Exception as exc:  # a user's constructor may raise anything
        raise ConfigError(
            f"task {config.label!r}: building it failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(task, Task):
        raise ConfigError(
            f"task {config.label!r} returned a {type(task).__name__}, not an instance of a "
            "subclass of edgeai.task.Task"
        )
    return task


def _load_builtins() -> None:
    global _loaded  # noqa: PLW0603  (a once-only import guard)
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module exists but something it needs is missing
                raise


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
