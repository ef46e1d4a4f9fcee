"""Finds workflow classes — the one loader behind ``hutch run``, ``hutch worker``, ``hutch dev`` and hutch.toml.

A target is ``examples/order.py:OrderWorkflow`` (a file) or ``examples.order:OrderWorkflow`` (a
module); without ``:Class`` the single :class:`~engine.WorkflowEntrypoint` subclass defined there
is used. Every failure is a :class:`TargetError` whose message says what to fix.

Module targets are looked up on ``sys.path`` with the project's directories in front of it: the
current directory (a console script's ``sys.path`` lacks it, ``python -m`` has it) and the
directory of the hutch.toml in use (``HUTCH_CONFIG``), so ``HUTCH_CONFIG=compose/hutch.toml
hutch worker`` run from the repository root and ``hutch worker`` run next to the file both find
the ``class_name`` modules it names.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType

from hutch.entrypoint import WorkflowEntrypoint
from hutch.errors import TargetError

CONFIG_ENV = "HUTCH_CONFIG"


def config_file() -> Path:
    """The hutch.toml in use: ``HUTCH_CONFIG``, default ``./hutch.toml`` (it may not exist)."""
    return Path(os.environ.get(CONFIG_ENV, "hutch.toml"))


def project_dirs() -> list[Path]:
    """Where module targets are looked for before the rest of ``sys.path``, first first."""
    dirs = [Path.cwd()]
    config = config_file()
    if config.is_file():
        directory = config.resolve().parent
        if directory not in dirs:
            dirs.append(directory)
    return dirs


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


def _add_project_dirs() -> list[Path]:
    # In front, in order, as `python -m` puts the current directory; "" on sys.path already
    # stands for the current directory (python -m, the REPL), so it is not added twice.
    dirs = project_dirs()
    present = {str(Path(p).resolve()) if p else str(Path.cwd()) for p in sys.path}
    missing = [str(d) for d in dirs if str(d) not in present]
    sys.path[:0] = missing
    if missing:
        importlib.invalidate_caches()
    return dirs


def _import_module(name: str) -> ModuleType:
    dirs = _add_project_dirs()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):
            looked = f"the current directory {dirs[0]}" + "".join(f", hutch.toml's directory {d}" for d in dirs[1:])
            raise TargetError(
                f"no module named {name!r} (looked in {looked} and on sys.path); "
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
