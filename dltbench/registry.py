"""One registry for tasks and methods, filled three ways.

1. Built-ins: every subpackage of :mod:`dltbench.tasks` is imported on first use; its
   ``__init__`` registers the task and its methods with the same decorators a third
   party uses.
2. Installed plugins: the entry-point groups ``dltbench.tasks`` and ``dltbench.methods``
   of any installed package. An entry point names a module (imported, so that its
   decorators run) or a ``module:Class`` (registered if it is not already).
3. Files: ``--plugin path/to/file.py`` imports a file that is not installed.

A plugin is checked when it registers (base class, protocol method, JSON-ready
constructor defaults), not when it crashes mid-run.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import pkgutil
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from .api import Method, Task, jsonable

T = TypeVar("T")

_TASKS: dict[str, type[Task]] = {}
_METHODS: dict[tuple[str, str], type[Method]] = {}
_ORIGIN: dict[tuple[str, str], str] = {}
_loaded_builtins: set[str] = set()
_loaded_entry_points = False
_current_origin = "builtin"
#: True only in a plugin worker (:mod:`dltbench.worker`): plugin code is imported there
#: and nowhere else. The harness knows a plugin's methods by :class:`MethodStub`.
IN_WORKER = False


class RegistryError(Exception):
    """A name that is unknown, registered twice, or a plugin that breaks its protocol."""


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} Valid names: {', '.join(sorted(choices)) or '(none)'}."


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register a Task subclass under its ``name``."""
    if not (inspect.isclass(cls) and issubclass(cls, Task)):
        raise RegistryError(f"{cls!r} is not a dltbench.Task subclass")
    if not cls.name:
        raise RegistryError(f"task class {cls.__name__} has no `name`")
    if cls.name in _TASKS and _TASKS[cls.name] is not cls:
        raise RegistryError(f"task {cls.name!r} is registered twice")
    _TASKS[cls.name] = cls
    return cls


def register_method(task: str, name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: register a method for ``task`` under ``name``.

    Example::

        @dltbench.register_method(task="certified", name="my-noise")
        class MyNoise(CertifiedMethod):
            def train(self, data, config, ctx): ...
    """

    def decorator(cls: type[T]) -> type[T]:
        _add_method(cls, task, name)
        return cls

    return decorator


def _add_method(cls: Any, task: str, name: str) -> None:
    key = (task, name)
    old = _METHODS.get(key)
    # The same class imported again (a spawned cell re-loading a plugin) is not a clash.
    if old is not None and (old.__module__, old.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise RegistryError(
            f"method {name!r} of task {task!r} is registered twice "
            f"({_ORIGIN[key]} and {_current_origin})"
        )
    cls.name, cls.task = name, task
    problems = check_method_class(cls, task)
    if problems:
        raise RegistryError(
            f"method {name!r} for task {task!r} is not valid: " + "; ".join(problems)
        )
    _METHODS[key] = cls
    _ORIGIN[key] = _current_origin


def _class_identity(cls: type) -> tuple[str, str]:
    try:
        where = str(Path(inspect.getfile(cls)).resolve())
    except (TypeError, OSError):
        where = cls.__module__
    return where, cls.__qualname__


def check_method_class(cls: Any, task: str) -> list[str]:
    """Protocol checks of a method class against its task; an empty list means it conforms."""
    problems: list[str] = []
    if not inspect.isclass(cls) or not issubclass(cls, Method):
        return [f"{cls!r} is not a subclass of dltbench.Method"]
    task_cls = _TASKS.get(task)
    if task_cls is None:
        return problems  # the task may register later (plugin order); checked again at use
    if not issubclass(cls, task_cls.method_type):
        problems.append(
            f"{cls.__name__} must subclass {task_cls.method_type.__module__}."
            f"{task_cls.method_type.__name__}"
        )
    proto = getattr(cls, task_cls.protocol, None)
    if proto is None or getattr(proto, "__isabstractmethod__", False):
        problems.append(f"{cls.__name__} does not implement `{task_cls.protocol}`")
    if inspect.isabstract(cls) and not problems:
        problems.append(f"{cls.__name__} is abstract: {sorted(cls.__abstractmethods__)}")
    for pname, p in inspect.signature(cls.__init__).parameters.items():
        if pname == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            problems.append(f"constructor argument {pname!r} needs a default")
        elif jsonable(p.default) != p.default and not isinstance(p.default, tuple):
            problems.append(f"default of {pname!r} is not JSON-ready: {p.default!r}")
    return problems


def load_builtins(task: str | None = None) -> None:
    """Import the built-in task packages (all, or just ``task``'s) so they register."""
    from . import tasks as tasks_pkg

    names = [m.name for m in pkgutil.iter_modules(tasks_pkg.__path__) if m.ispkg]
    for name in names if task is None else [n for n in names if n == task]:
        if name not in _loaded_builtins:
            _loaded_builtins.add(name)
            importlib.import_module(f"{tasks_pkg.__name__}.{name}")


def load_entry_points() -> None:
    """Load the ``dltbench.tasks`` and ``dltbench.methods`` entry points of installed packages.

    A task is harness code (its evaluator) and is imported here; methods are plugin code,
    imported in the harness only through a sandboxed worker (:func:`describe_plugins`).
    """
    global _loaded_entry_points, _current_origin
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    groups = ("dltbench.tasks", "dltbench.methods") if IN_WORKER else ("dltbench.tasks",)
    if not IN_WORKER and list(entry_points(group="dltbench.methods")):
        register_stubs([i for i in describe_plugins(None, ()) if i["origin"].startswith("entry")])
    for group in groups:
        for ep in entry_points(group=group):
            _current_origin = f"entry-point {ep.name} = {ep.value}"
            try:
                obj = ep.load()
            except Exception as exc:
                raise RegistryError(
                    f"plugin entry point {ep.value!r} failed to import: {exc}"
                ) from exc
            finally:
                _current_origin = "builtin"
            _register_loaded(obj, f"entry-point {ep.value}")


def _register_loaded(obj: Any, origin: str) -> None:
    """An entry point may name a class that does not decorate itself: register it here."""
    if inspect.isclass(obj) and issubclass(obj, Task):
        register_task(obj)
    elif inspect.isclass(obj) and issubclass(obj, Method) and (obj.task, obj.name) not in _METHODS:
        if not (obj.task and obj.name):
            raise RegistryError(f"{origin}: method class {obj.__name__} needs `task` and `name`")
        global _current_origin
        _current_origin = origin
        try:
            _add_method(obj, obj.task, obj.name)
        finally:
            _current_origin = "builtin"


class MethodStub(Method):
    """The harness's stand-in for a plugin's method class: what a record needs to know
    (name, version, source hash, hyper-parameters, description, declared requirements),
    read by a sandboxed worker, so that plugin code is never imported in the harness."""

    def __init__(self, info: dict[str, Any] | None = None):
        info = info or {}
        self.info = info
        self.name, self.task = str(info.get("name", "")), str(info.get("task", ""))
        self.version = str(info.get("version", "0"))
        self.source = str(info.get("source_hash", ""))
        self.requires = tuple(str(r) for r in info.get("requires", ()))
        self.__module__ = str(info.get("module", "plugin"))

    def __call__(self) -> MethodStub:
        """Instantiating the stub gives itself (its params are the method's defaults)."""
        return self

    def get_params(self) -> dict[str, Any]:
        """The method's constructor defaults, as the worker read them."""
        params = self.info.get("params", {})
        return dict(params) if isinstance(params, dict) else {}

    def description(self) -> str:
        """The method's own one-line description, as the worker read it."""
        return str(self.info.get("description", ""))[:200]


def describe_plugins(task: str | None, plugin_files: tuple[str, ...]) -> list[dict[str, Any]]:
    """Import plugin files and method entry points in a sandboxed worker; their methods' infos."""
    from .oracle import PluginError
    from .sandbox import PluginProcess

    files = tuple(str(Path(f).resolve()) for f in plugin_files)
    with PluginProcess(plugin_files=files) as worker:
        try:
            return worker.request("describe", {"task": task, "plugin_files": list(files)})
        except PluginError as exc:
            first = str(exc).split("\n", 1)[0].removeprefix("RegistryError: ")
            raise RegistryError(first) from exc


def method_infos(task: str | None = None) -> list[dict[str, Any]]:
    """Worker side: the infos of every method not built into dltbench (see describe_plugins)."""
    out = []
    for (t, n), cls in sorted(_METHODS.items()):
        origin = _ORIGIN[(t, n)]
        if origin == "builtin" or (task is not None and t != task):
            continue
        out.append({
            "task": t, "name": n, "version": str(cls.version),
            "params": jsonable(cls().get_params()), "origin": origin,
            "description": cls.description(), "requires": list(getattr(cls, "requires", ())),
            "module": cls.__module__,
        })  # fmt: skip
    return out


def register_stubs(infos: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Harness side: know plugin methods by their stubs (origin as the worker saw it)."""
    keys = []
    for info in infos:
        info = dict(info)
        # The source hash is the harness's own reading of the plugin's file, never the
        # worker's word: a record's method_source_hash must name the code that ran.
        own = _origin_source_hash(str(info.get("origin", "")), str(info.get("module", "")))
        info["source_hash"] = own or "unknown"
        key = (str(info["task"]), str(info["name"]))
        old = _METHODS.get(key)
        if old is not None and not isinstance(old, MethodStub):
            raise RegistryError(f"method {key[1]!r} of task {key[0]!r} is registered twice "
                                f"({_ORIGIN[key]} and {info.get('origin')})")  # fmt: skip
        _METHODS[key] = MethodStub(info)  # type: ignore[assignment]
        _ORIGIN[key] = str(info.get("origin", "plugin"))
        keys.append(key)
    return keys


def _module_file(module: str) -> Path | None:
    """The file of a dotted module, found without importing it (find_spec of a dotted name
    would import its parent packages, i.e. run plugin code here)."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin else None
    for base in spec.submodule_search_locations or []:
        stem = Path(base).joinpath(*rest)
        for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _origin_source_hash(origin: str, module: str) -> str | None:
    """sha256 (16 hex) of the source a plugin's method came from, read without importing it."""
    path: Path | None = None
    if origin.startswith("file "):
        path = Path(origin[len("file ") :])
    elif module:
        path = _module_file(module)
    try:
        src = path.read_text() if path is not None else None
    except OSError:
        return None
    return hashlib.sha256(src.encode()).hexdigest()[:16] if src is not None else None


def load_plugin_file(path: str | Path) -> list[tuple[str, str]]:
    """Make a plugin file's methods known; returns the (task, method) keys it registered.

    In the harness the file is imported only inside a sandboxed worker, which reports
    its methods (:func:`describe_plugins`); in a worker it is imported here.
    """
    global _current_origin
    path = Path(path).resolve()
    if not path.is_file():
        raise RegistryError(f"plugin file {str(path)!r} does not exist")
    load_builtins()
    if not IN_WORKER:
        known = [k for k, o in _ORIGIN.items() if o == f"file {path}"]
        if known:
            return known
        infos = [i for i in describe_plugins(None, (str(path),)) if i["origin"] == f"file {path}"]
        if not infos:
            raise RegistryError(
                f"plugin {path.name} registered no method: decorate a class with "
                "@dltbench.register_method(task=..., name=...)"
            )
        return register_stubs(infos)
    before = set(_METHODS)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    modname = f"dltbench_plugin_{path.stem}_{digest}"
    if modname in sys.modules:
        return [k for k, o in _ORIGIN.items() if o == f"file {path}"]
    spec = importlib.util.spec_from_file_location(modname, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    _current_origin = f"file {path}"
    try:
        spec.loader.exec_module(module)
    except RegistryError:
        del sys.modules[modname]
        raise
    except Exception as exc:
        del sys.modules[modname]
        raise RegistryError(
            f"plugin {path.name} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        _current_origin = "builtin"
    added = [k for k in _METHODS if k not in before]
    if not added:
        raise RegistryError(
            f"plugin {path.name} registered no method: decorate a class with "
            "@dltbench.register_method(task=..., name=...)"
        )
    return added


def discover(task: str | None = None, plugin_files: tuple[str, ...] | list[str] = ()) -> None:
    """Make every source of tasks and methods known (built-ins, entry points, files)."""
    load_builtins(task)
    load_entry_points()
    for f in plugin_files:
        load_plugin_file(f)


def get_task(name: str) -> Task:
    """An instance of the task ``name``; a clear error with the valid names if unknown."""
    load_builtins(name)
    if name not in _TASKS:
        discover()
    if name not in _TASKS:
        raise RegistryError(f"unknown task {name!r}." + _did_you_mean(name, list(_TASKS)))
    return _TASKS[name]()


def task_names() -> list[str]:
    """All registered task names, sorted."""
    discover()
    return sorted(_TASKS)


def method_names(task: str) -> list[str]:
    """Names of the methods registered for ``task``, sorted."""
    return sorted(n for t, n in _METHODS if t == task)


def get_method_class(task: str, name: str) -> type[Method]:
    """The class registered as ``name`` for ``task``, checked against the task's protocol."""
    if (task, name) not in _METHODS:
        raise RegistryError(
            f"unknown method {name!r} for task {task!r}." + _did_you_mean(name, method_names(task))
        )
    cls = _METHODS[(task, name)]
    if isinstance(cls, MethodStub):  # checked by the worker that imported it
        return cls  # type: ignore[return-value]
    problems = check_method_class(cls, task)
    if problems:
        raise RegistryError(f"method {name!r}: " + "; ".join(problems))
    return cls


def method_origin(task: str, name: str) -> str:
    """Where a method came from: builtin, an entry point, or a plugin file."""
    return _ORIGIN[(task, name)]


#: Files of a task package that are presentation, not evaluation: ``plots.py`` declares how
#: ``dltbench report`` draws the curves records already hold, and no number in a record depends
#: on it. Hashing it would make every record of the task stale when a plot's title changes.
PRESENTATION_FILES: frozenset[str] = frozenset({"plots.py"})
#: Data a task package ships beside its code (the package data of pyproject.toml): reference
#: moments, fixed seeds, precomputed features. The numbers depend on it as on the code.
TASK_DATA_GLOBS: tuple[str, ...] = ("*.json", "*.npz")


def task_source_hash(cls: type[Task]) -> str:
    """sha256 of the evaluator's code: the task's package (less its presentation files, see
    ``PRESENTATION_FILES``), the modules of other task packages it imports (e.g. diffusion
    scores samples with gan's FID), the data files of every package read that way
    (``TASK_DATA_GLOBS``), and the shared data and model code."""
    pkg = Path(inspect.getfile(cls)).resolve().parent
    here = Path(__file__).resolve().parent
    own = [f for f in sorted(pkg.glob("*.py")) if f.name not in PRESENTATION_FILES]
    code = _with_task_imports(own, here / "tasks")
    packages = list(dict.fromkeys(f.parent for f in code))
    shipped = [f for d in packages for g in TASK_DATA_GLOBS for f in sorted(d.glob(g))]
    files = code + shipped + [here / "models.py", here / "data" / "__init__.py"]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def _with_task_imports(files: list[Path], tasks_root: Path) -> list[Path]:
    """``files`` followed by every module of another task package they import, transitively.

    Read from the source (``from ..gan import metrics``, ``from dltbench.tasks.gan.metrics
    import ...``, at any depth of the file), in a fixed order, so a task's hash changes when
    code it borrows from another task does, and not otherwise.
    """
    out, seen, todo = [], set(), list(files)
    while todo:
        f = todo.pop(0)
        if f in seen:
            continue
        seen.add(f)
        out.append(f)
        todo += [d for d in _imported_task_modules(f, tasks_root) if d not in seen]
    return out


def _imported_task_modules(path: Path, tasks_root: Path) -> list[Path]:
    """The .py files under ``tasks_root`` that ``path`` imports (relative or absolute)."""
    import ast

    found: list[Path] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        parts = (node.module or "").split(".") if node.module else []
        if node.level:
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
        elif parts[:2] == ["dltbench", "tasks"]:
            base, parts = tasks_root, parts[2:]
        else:
            continue
        target = base.joinpath(*parts)
        candidates = [target.with_suffix(".py"), target / "__init__.py"]
        candidates += [target / f"{alias.name}.py" for alias in node.names]
        for c in candidates:
            c = c.resolve()
            if c.is_file() and c.is_relative_to(tasks_root) and c.name not in PRESENTATION_FILES:
                found.append(c)
    return found


def source_hash(cls: type) -> str:
    """sha256 of the source of the module that defines ``cls`` (what its numbers depend on)."""
    if isinstance(cls, MethodStub):
        return cls.source
    module = sys.modules.get(cls.__module__)
    try:
        src = inspect.getsource(module) if module else inspect.getsource(cls)
    except (OSError, TypeError):
        src = json.dumps([cls.__module__, cls.__qualname__])
    return hashlib.sha256(src.encode()).hexdigest()[:16]
