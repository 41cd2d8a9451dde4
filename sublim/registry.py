"""Plug-ins by name: model backends, traits and data kinds are registered classes chosen in params.yaml.

A name resolves, in order, to: a class already registered under it (by a module imported earlier, e.g. one
listed under `plugins:` in params.yaml), a built-in module of the same name inside sublim's package for that
family (`sublim/data/maths.py` defines the `maths` data kind), an installed entry point of the family's group
(`sublim.data_kinds`, `sublim.traits`, `sublim.backends`), or an import path `package.module:Class`.
Steps never branch on a name: they ask the registry for the class and use its interface.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

P = TypeVar("P")
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class PluginError(LookupError):
    """An unknown or broken plug-in name; the message names it and what is known."""


class PluginSpec(BaseModel):
    """The params.yaml section of one plug-in (a trait, a data kind, a backend): plain data, frozen, no unknown keys.

    Subclasses add the plug-in's own settings; `build()` makes the plug-in object the steps use.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    plugin: ClassVar[type | None] = None  # set by the registry when the plug-in class registers

    def build(self) -> Any:
        if self.plugin is None:
            raise PluginError(f"{type(self).__name__} belongs to no registered plug-in")
        return self.plugin(self)


class Registry(Generic[P]):
    """Name -> plug-in class for one family. Each plug-in class has a `Spec` (a PluginSpec subclass) whose
    field `key` (kind / backend) holds the name it was chosen by."""

    def __init__(self, family: str, package: str, group: str, key: str, default: str):
        self.family, self.package, self.group, self.key, self.default = family, package, group, key, default
        self._classes: dict[str, type[P]] = {}

    def register(self, name: str) -> Callable[[type[P]], type[P]]:
        """A class decorator. Refused at import, so `sublim check` names the plug-in before any compute: a class
        missing part of its family's interface, and a name another class already has (a built-in included:
        which one won used to depend on what was imported first)."""
        def add(cls: type[P]) -> type[P]:
            spec = getattr(cls, "Spec", None)
            if not (isinstance(spec, type) and issubclass(spec, PluginSpec)):
                raise TypeError(f"{family} plug-in {cls.__qualname__} needs a `Spec` (a PluginSpec subclass)")
            if inspect.isabstract(cls):
                raise TypeError(f"{family} plug-in {_where(cls)} does not implement "
                                f"{', '.join(sorted(cls.__abstractmethods__))}")
            self._check_unique(name, cls)
            owner = spec.__dict__.get("plugin")
            if owner is not None and owner is not cls:
                # a subclass reusing its parent's Spec gets a Spec of its own (setting the parent's `plugin` made
                # the parent's name build the subclass: with tinyllama registered, `backend: tinylm` trained a
                # Llama); `Spec` inside the class is where pickle finds it
                spec = type(spec.__name__, (spec,), {"__module__": cls.__module__,
                                                     "__qualname__": f"{cls.__qualname__}.Spec"})
                cls.Spec = spec
            spec.plugin = cls
            self._classes[name] = cls
            cls.name = name
            return cls

        family = self.family
        return add

    def _check_unique(self, name: str, cls: type) -> None:
        existing = self._classes.get(name)
        if existing is not None and _where(existing) == _where(cls):  # the same class imported again
            return
        builtin = f"{self.package}.{name}"
        if (not cls.__module__.startswith(self.package + ".") and re.fullmatch(r"[a-z][a-z0-9_]*", name)
                and importlib.util.find_spec(builtin) is not None):
            raise TypeError(f"{self.family} {name!r} ({_where(cls)}) would shadow the built-in {builtin}; "
                            "choose another name")
        if existing is not None:
            raise TypeError(f"{self.family} {name!r} is registered twice: {_where(existing)} and {_where(cls)}; "
                            "rename one")

    def names(self) -> list[str]:
        """Registered names so far (built-ins load on first use)."""
        return sorted(self._classes)

    def get(self, name: str) -> type[P]:
        if not isinstance(name, str) or not name:
            raise PluginError(f"a {self.family} name must be a non-empty string, got {name!r}")
        if name in self._classes:
            return self._classes[name]
        if IMPORT_PATH.match(name):
            return self._by_path(name)
        if re.fullmatch(r"[a-z][a-z0-9_]*", name):
            try:
                importlib.import_module(f"{self.package}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{self.package}.{name}":
                    raise PluginError(f"{self.family} {name!r}: its module failed to import ({exc})") from None
            except Exception as exc:  # noqa: BLE001  (a plug-in's own error, whatever its type, is said in one line)
                raise PluginError(f"{self.family} {name!r}: its module failed to import "
                                  f"({type(exc).__name__}: {exc})") from None
            if name in self._classes:
                return self._classes[name]
        for ep in entry_points(group=self.group):
            if ep.name == name:
                try:
                    cls = ep.load()
                except Exception as exc:  # noqa: BLE001
                    raise PluginError(f"{self.family} {name!r}: entry point {ep.value} failed to load "
                                      f"({type(exc).__name__}: {exc})") from None
                self._classes.setdefault(name, cls)
                return cls
        raise PluginError(f"unknown {self.family} {name!r}; known: {', '.join(self.known())} "
                          f"(or a module:Class import path, or a `{self.group}` entry point)")

    def known(self) -> list[str]:
        """Built-in names (modules of the family's package), registered ones and entry points."""
        import pkgutil

        pkg = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{self.package}.{mod.name}")  # registers the built-ins it defines
        return sorted({*self._classes, *(ep.name for ep in entry_points(group=self.group))})

    def _by_path(self, path: str) -> type[P]:
        module, _, attr = path.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"{self.family} {path!r}: cannot import it ({exc})") from None
        except Exception as exc:  # noqa: BLE001
            raise PluginError(f"{self.family} {path!r}: its module failed to import ({type(exc).__name__}: "
                              f"{exc})") from None
        if not isinstance(getattr(cls, "Spec", None), type):
            raise PluginError(f"{self.family} {path!r} is not a {self.family} plug-in (no Spec)")
        if getattr(cls.Spec, "plugin", None) is not cls:
            try:
                self.register(path)(cls)
            except TypeError as exc:
                raise PluginError(f"{self.family} {path!r}: {exc}") from None
        return cls

    def spec(self, value: Any) -> PluginSpec:
        """Validate one params section into the chosen plug-in's Spec (pydantic errors keep their key path)."""
        if isinstance(value, PluginSpec):
            return value
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise PydanticCustomError("plugin", "expected a mapping with `{key}`", {"key": self.key})
        name = value.get(self.key, self.default)
        try:
            cls = self.get(name)
        except PluginError as exc:
            raise PydanticCustomError("plugin", "{error}", {"error": str(exc)}) from None
        try:
            return cls.Spec.model_validate({**value, self.key: name})
        except ValidationError as exc:
            errors = [{k: e[k] for k in ("loc", "msg", "type", "input") if k in e} for e in exc.errors()]
            raise PydanticCustomError("nested", "{first}", {"first": errors[0]["msg"], "errors": errors}) from None


def import_plugins(modules: list[str]) -> None:
    """Import the modules params.yaml lists under `plugins:` (each registers its classes on import). Any error
    while importing one (a missing dependency, a syntax or name error, a class refused at registration) is
    one line naming the module."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise PluginError(f"plugins: cannot import {module!r} ({exc})") from None
        except Exception as exc:  # noqa: BLE001
            raise PluginError(f"plugins: {module!r} failed to import ({type(exc).__name__}: {exc})") from None


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
