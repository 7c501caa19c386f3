"""One small registry type shared by algorithms, divergences, tasks and rollout backends.

Entries register themselves with a decorator in their own file; nothing else keeps a list.
Lookups of unknown names fail with the valid choices and a did-you-mean suggestion.

A plugin file that is broken must not take the others down with it. So the lazy load imports
every module of the package and records, instead of raising:
- a module that fails to import (its entries are dropped, its file and error are kept);
- a name registered twice (the first registration stays, the second is recorded).
Other names keep working (one `PluginWarning` per registry says what was skipped); looking up
a broken or duplicated name raises a `RegistryError` that names the file(s) involved.
`problems()` lists everything recorded, `check()` raises if there is anything.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown, duplicate or unloadable registry name. `str()` is the user-facing message."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class PluginWarning(UserWarning):
    """A plugin module was skipped (it failed to import or reused a name); the rest works."""


def display_path(file: str | None) -> str:
    """A file path as a user would type it: relative to the working directory when inside."""
    if not file:
        return "<unknown file>"
    p = Path(file).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


@dataclass(frozen=True)
class Origin:
    """Where an entry was registered: the registering module, its file, what was registered
    ('class KLk3')."""

    module: str
    file: str | None
    what: str

    def __str__(self) -> str:
        return f"{display_path(self.file)} ({self.what})"


@dataclass(frozen=True)
class PluginProblem:
    """One recorded load problem. `module` is the module to fix (for a duplicate: the one that
    registered the name second); `message` is a complete one-line explanation."""

    module: str
    file: str | None
    message: str
    name: str | None = None  # the duplicated registry name, for duplicates


def _origin(obj: object, depth: int) -> Origin:
    frame = sys._getframe(depth)  # the module body (or helper) that called the decorator
    module = frame.f_globals.get("__name__", getattr(obj, "__module__", "?"))
    file = frame.f_globals.get("__file__")
    if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__"):
        what = f"{'class' if isinstance(obj, type) else 'function'} {obj.__qualname__}"
    else:
        what = f"a {type(obj).__qualname__}"
    return Origin(module, file, what)


def _describe_import_error(exc: BaseException, file: str | None) -> str:
    """'NameError: name 'toch' is not defined (line 9)': the error and the line in `file`."""
    line = None
    if isinstance(exc, SyntaxError) and exc.filename and file and \
            Path(exc.filename).resolve() == Path(file).resolve():
        line = exc.lineno
        text = f"{type(exc).__name__}: {exc.msg}"
    else:
        text = f"{type(exc).__name__}: {exc}"
        if file:
            for frame in traceback.extract_tb(exc.__traceback__):
                if Path(frame.filename).resolve() == Path(file).resolve():
                    line = frame.lineno
    return text + (f" (line {line})" if line else "")


class Registry(Generic[T]):
    """Name -> entry map. `package` names the package whose modules register entries;
    it is imported lazily on first lookup so that `import gbmpo` stays cheap."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self._package = package
        # every registration of a name in order; more than one means a duplicate
        self._regs: dict[str, list[tuple[T, Origin]]] = {}
        self._failed: dict[str, PluginProblem] = {}  # module name -> its import failure
        self._modules: list[str] = []
        self._loaded = package is None
        self._warned = False

    # ---- registration -------------------------------------------------------------------
    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            origin = _origin(obj, 2)
            regs = self._regs.setdefault(name, [])
            # the same module executed again (importlib.reload) replaces its own entry
            regs[:] = [(o, g) for o, g in regs if o is not obj and
                       (g.module, g.what) != (origin.module, origin.what)]
            regs.append((obj, origin))
            try:
                obj.registry_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        pkg = importlib.import_module(self._package)  # type: ignore[arg-type]
        self._loaded = True  # after the package itself imported: its failure is not a plugin's
        # one order over every directory of the package, so "sorts before" means by name
        for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if mod.name.startswith("_"):
                continue
            full = f"{self._package}.{mod.name}"
            self._modules.append(full)
            try:
                importlib.import_module(full)
            except Exception as exc:  # a broken plugin file; the others still load
                spec = importlib.util.find_spec(full)
                file = spec.origin if spec is not None else None
                for regs in self._regs.values():  # the file is broken as a whole
                    regs[:] = [(o, g) for o, g in regs if g.module != full]
                self._failed[full] = PluginProblem(
                    full, file, f"{self.kind} plugin {display_path(file)} failed to import: "
                    f"{_describe_import_error(exc, file)}")
        self._regs = {n: r for n, r in self._regs.items() if r}

    def _warn_once(self) -> None:
        """One PluginWarning per problem, on the first lookup that succeeds (a lookup that
        fails raises an error carrying the problem instead)."""
        if self._warned:
            return
        self._warned = True
        for p in self.problems():
            tail = (f"{p.name!r} is unavailable until then" if p.name else "it is skipped")
            warnings.warn(f"{p.message}; {tail}, the other {self.kind} entries work",
                          PluginWarning, stacklevel=4)

    # ---- problems -----------------------------------------------------------------------
    def _duplicate_message(self, name: str) -> str:
        (_, first), *later = self._regs[name]
        again = ", ".join(str(g) for _, g in later)
        return (f"{self.kind} {name!r} is registered twice: first by {first}, again by {again}; "
                f"rename one of them (registry names must be unique)")

    def problems(self) -> list[PluginProblem]:
        """Every module that failed to import and every name registered more than once."""
        self._load()
        out = list(self._failed.values())
        for name in sorted(n for n, r in self._regs.items() if len(r) > 1):
            later = self._regs[name][1][1]
            out.append(PluginProblem(later.module, later.file, self._duplicate_message(name),
                                     name))
        return out

    def check(self) -> None:
        """Raise a RegistryError listing every problem, e.g. before expanding 'every entry'."""
        problems = self.problems()
        if problems:
            raise RegistryError("; ".join(p.message for p in problems))

    def plugin_modules(self) -> list[str]:
        """Every module of the package that the load tried to import, sorted by name."""
        self._load()
        return list(self._modules)

    # ---- lookups ------------------------------------------------------------------------
    def get(self, name: str) -> T:
        self._load()
        regs = self._regs.get(name, [])
        if len(regs) == 1:
            self._warn_once()
            return regs[0][0]
        raise RegistryError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        """Why `get(name)` fails: a duplicated name, a name whose file failed to import, or an
        unknown name (with did-you-mean and the valid choices)."""
        self._load()
        if len(self._regs.get(name, [])) > 1:
            return self._duplicate_message(name)
        for problem in self._failed.values():
            if _mentions(problem.file, name):
                return f"{self.kind} {name!r} is not available: {problem.message}"
        valid = self._usable()
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        broken = "".join(f" Not loaded: {p.message}." for p in self._failed.values())
        return (f"unknown {self.kind} {name!r}.{hint}{broken} "
                f"Valid choices: {', '.join(valid)}")

    def names(self) -> list[str]:
        """Names that `get` resolves (duplicated names are left out: see `problems()`)."""
        self._load()
        self._warn_once()
        return self._usable()

    def _usable(self) -> list[str]:
        return sorted(n for n, r in self._regs.items() if len(r) == 1)

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self._regs[name][0][0]

    def __contains__(self, name: object) -> bool:
        self._load()
        found = len(self._regs.get(name, [])) == 1  # type: ignore[arg-type]
        if found:
            self._warn_once()
        return found


def _mentions(file: str | None, name: str) -> bool:
    """Whether a (broken) plugin file registers `name`, judged from its text."""
    try:
        text = Path(file).read_text() if file else ""
    except OSError:
        return False
    return any(f"register({q}{name}{q})" in text for q in "\"'")


def first_doc_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""
