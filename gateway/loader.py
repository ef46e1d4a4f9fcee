"""Finds a workflow class from a ``FILE[:Class]`` or ``module[:Class]`` target, as ``hutch run`` takes it.

``examples/order.py:OrderWorkflow`` loads a file, ``examples.order:OrderWorkflow`` a module;
without ``:Class`` the single :class:`~engine.WorkflowEntrypoint` subclass defined there is
used. Every failure is a :class:`TargetError` whose message says what to fix.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType

from engine import WorkflowEntrypoint
from engine.config import DEFAULT_LIMITS


class TargetError(Exception):
    """A target cannot be loaded: the file or module is missing, does not import, or has no such class."""


def load_workflow(target: str) -> type[WorkflowEntrypoint]:
    """The workflow class a target names.

    Args:
        target: ``path/to/file.py[:Class]`` or ``package.module[:Class]``.

    Raises:
        TargetError: with a message naming the target and what is wrong.
    """
    where, class_name = _split(target)
    module = _import_file(Path(where)) if _is_path(where) else _import_module(where)
    return _pick_class(module, where, class_name)


def workflow_name(cls: type) -> str:
    """The workflow name ``hutch run`` registers a class under: ``OrderWorkflow`` → ``order-workflow``."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", cls.__name__)
    name = re.sub(r"[^a-z0-9-]+", "-", words.lower()).strip("-") or "workflow"
    return name[: DEFAULT_LIMITS.max_workflow_name_length].rstrip("-")


def _split(target: str) -> tuple[str, str | None]:
    where, sep, class_name = target.rpartition(":")
    if not sep:
        return target, None
    if not where or not class_name:
        raise TargetError(f"target {target!r} must look like 'path/to/file.py:Class' or 'package.module:Class'")
    return where, class_name


def _is_path(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where or Path(where).is_file()


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise TargetError(f"file {str(path)!r} does not exist" if not path.exists() else f"{str(path)!r} is not a file")
    path = path.resolve()
    # Import it under its dotted name (examples/order.py → examples.order) with its package root
    # on sys.path, so the file's own imports (relative or of sibling modules) work as usual.
    parts, root = [path.stem], path.parent
    while (root / "__init__.py").is_file():
        parts.insert(0, root.name)
        root = root.parent
    name = ".".join(parts)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not name.startswith(exc.name):
            raise TargetError(_import_failure(str(path), exc)) from None
        module = None  # shadowed by something else on sys.path: load the file directly below
    except Exception as exc:
        raise TargetError(_import_failure(str(path), exc)) from None
    if module is not None and _same_file(module, path):
        return module
    # Another module already owns that name (say the file is json.py): load this file by path.
    unique = f"_hutch_target_{abs(hash(str(path))):x}"
    spec = importlib.util.spec_from_file_location(unique, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"{str(path)!r} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[unique]
        raise TargetError(_import_failure(str(path), exc)) from None
    return module


def _same_file(module: ModuleType, path: Path) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).resolve() == path


def _import_module(name: str) -> ModuleType:
    # A console script's sys.path does not include the working directory; `python -m` does.
    # Users expect `hutch run examples.order` to find ./examples like `python -m` would.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):
            raise TargetError(
                f"no module named {name!r} (looked in the current directory and on sys.path); "
                "give a file path like 'examples/order.py' or a module path like 'examples.order'"
            ) from None
        raise TargetError(_import_failure(name, exc)) from None
    except Exception as exc:
        raise TargetError(_import_failure(name, exc)) from None


def _import_failure(what: str, exc: BaseException) -> str:
    # The user's module itself raised: show where, without the loader's own frames.
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if "importlib" not in f.filename and f.filename != __file__]
    location = f" ({own[-1].filename}:{own[-1].lineno})" if own else ""
    if isinstance(exc, SyntaxError) and exc.filename:
        location = f" ({exc.filename}:{exc.lineno})"
    return f"importing {what!r} failed{location}: {type(exc).__name__}: {exc}"


def _pick_class(module: ModuleType, where: str, class_name: str | None) -> type[WorkflowEntrypoint]:
    defined = sorted(
        (
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, WorkflowEntrypoint)
            and obj is not WorkflowEntrypoint
            and obj.__module__ == module.__name__
        ),
        key=lambda c: c.__name__,
    )
    names = ", ".join(c.__name__ for c in defined) or "none"
    if class_name is None:
        if len(defined) == 1:
            return defined[0]
        if not defined:
            raise TargetError(f"{where!r} defines no WorkflowEntrypoint subclass")
        raise TargetError(f"{where!r} defines several workflows ({names}); pick one with {where}:<Class>")
    obj = getattr(module, class_name, None)
    if obj is None:
        raise TargetError(f"{where!r} has no class {class_name!r}; workflows defined there: {names}")
    if not (isinstance(obj, type) and issubclass(obj, WorkflowEntrypoint)) or obj is WorkflowEntrypoint:
        raise TargetError(f"{where}:{class_name} is not a WorkflowEntrypoint subclass; workflows there: {names}")
    return obj
