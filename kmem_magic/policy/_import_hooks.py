"""Post-import hooks: run a function right after a package (``tensorflow``, ``torch``) is imported.

Some settings can only be made through a framework's API, yet must be made before the framework
starts. Importing the framework ourselves would be slow and surprising, so kmem waits for the
user's own ``import`` and configures the package the moment its ``__init__`` has finished, before
any of the user's code can use it.

>>> hooks = PostImportHooks()
>>> hooks.add("tensorflow", lambda module: None)
>>> hooks.install(); hooks.uninstall()
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from typing import Any, Callable, Dict, List, Optional

Hook = Callable[[Any], None]


class _HookedLoader(importlib.abc.Loader):
    """Wraps a package's real loader and calls the hooks after ``exec_module``."""

    def __init__(self, loader: Any, run: Callable[[Any], None]) -> None:
        self._loader = loader
        self._run = run

    def create_module(self, spec):  # noqa: D102 - the loader protocol
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: D102 - the loader protocol
        try:
            self._loader.exec_module(module)
        finally:
            # Hand the real loader back: importlib.resources and friends look at it later.
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._loader
            module.__loader__ = self._loader
        self._run(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class PostImportHooks(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` entry that calls ``hook(module)`` once a watched package is imported.

    A hook for a package that is already imported runs at once. Exceptions in a hook never
    break the user's import: they are passed to ``on_error(name, exc)``.
    """

    def __init__(self, on_error: Optional[Callable[[str, BaseException], None]] = None) -> None:
        self._hooks: Dict[str, List[Hook]] = {}
        self._busy = threading.local()
        self._on_error = on_error

    def add(self, name: str, hook: Hook) -> None:
        """Call ``hook(module)`` when ``name`` is imported (now, if it already is)."""
        if name in sys.modules:
            self._call(name, [hook], sys.modules[name])
        else:
            self._hooks.setdefault(name, []).append(hook)

    def clear(self) -> None:
        """Forget every pending hook."""
        self._hooks.clear()

    def install(self) -> None:
        """Put this finder first on ``sys.meta_path`` (idempotent)."""
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def uninstall(self) -> None:
        """Take this finder off ``sys.meta_path`` (idempotent)."""
        while self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, fullname, path, target=None):  # noqa: D102 - the finder protocol
        if fullname not in self._hooks or getattr(self._busy, "name", None) == fullname:
            return None
        self._busy.name = fullname
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.name = None
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _HookedLoader(spec.loader, self._after_import(fullname))
        return spec

    def _after_import(self, name: str) -> Callable[[Any], None]:
        def run(module: Any) -> None:
            self._call(name, self._hooks.pop(name, []), module)

        return run

    def _call(self, name: str, hooks: List[Hook], module: Any) -> None:
        for hook in hooks:
            try:
                hook(module)
            except Exception as error:  # a hook must never break the user's import
                if self._on_error is not None:
                    self._on_error(name, error)
