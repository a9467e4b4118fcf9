"""The memory policy (growth, a hard limit, or none) and applying it to every Keras backend.

A policy must be in place before a framework starts on the GPU; after that it can no longer
change how the framework allocates. :class:`Configurator` applies a :class:`Policy` to each
backend that has not started yet, through the environment variables the framework reads at
start-up or, where only an API exists, a hook that runs right after the user's own ``import``.
It never starts a framework itself, never overwrites a variable the user set, and reports one
line per backend: what was applied, what was kept, or why it is too late and the exact fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import _nvml
from ..backends import BACKENDS, Report
from ..sizes import Limit, parse_limit
from ._import_hooks import PostImportHooks

MODES = ("growth", "limit", "none")


@dataclass(frozen=True)
class Policy:
    """What kmem asks of every framework: ``growth`` (take memory as needed), a ``limit``
    (growth, capped at :attr:`limit` per GPU), or ``none`` (change nothing, only measure)."""

    mode: str = "growth"
    limit: Optional[Limit] = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown policy {self.mode!r}: use one of {', '.join(MODES)}")
        if (self.mode == "limit") != (self.limit is not None):
            raise ValueError("a limit policy needs a limit, and only a limit policy has one")

    @classmethod
    def parse(cls, mode: str = "growth", limit: str = "") -> "Policy":
        """The policy for a mode name and an optional limit text (a limit wins over the mode)."""
        if limit and str(limit).strip():
            return cls("limit", parse_limit(limit))
        mode = (mode or "growth").strip().lower()
        return cls(mode)

    def __str__(self) -> str:
        if self.mode == "limit":
            return f"limit {self.limit}"
        return "growth" if self.mode == "growth" else "none (measure only)"


class Environment:
    """Sets environment variables for the frameworks, never over a user's value, and undoes it."""

    def __init__(self) -> None:
        self._set: Dict[str, str] = {}

    def offer(self, name: str, value: str) -> Tuple[bool, str]:
        """Set ``name=value`` unless the user set ``name``; returns (set by kmem, text to show)."""
        current = os.environ.get(name)
        if current is not None and self._set.get(name) != current:
            return False, f"{name}={current} (yours, kept)"
        os.environ[name] = value
        self._set[name] = value
        return True, f"{name}={value}"

    def is_users(self, name: str) -> bool:
        """Whether ``name`` is set, and not by kmem."""
        return name in os.environ and self._set.get(name) != os.environ[name]

    def withdraw(self, name: str) -> None:
        """Remove ``name`` if kmem set it and nobody changed it since."""
        if name in self._set and os.environ.get(name) == self._set.pop(name):
            del os.environ[name]

    def restore(self) -> None:
        """Remove every variable kmem set that still holds kmem's value."""
        for name in list(self._set):
            self.withdraw(name)

    @property
    def names(self) -> List[str]:
        return sorted(self._set)


class _Setup:
    """What one application of a policy lets the backends do (the backends' ``Setup``):
    offer environment variables and queue post-import hooks, until it is withdrawn."""

    def __init__(self, env: Environment, hooks: PostImportHooks) -> None:
        self._env, self._hooks = env, hooks
        self.active = True

    def offer(self, name: str, value: str) -> Tuple[bool, str]:
        return self._env.offer(name, value)

    def is_users(self, name: str) -> bool:
        return self._env.is_users(name)

    def after_import(self, package: str, hook: Callable[[Any], None]) -> None:
        self._hooks.add(package, hook)


class Configurator:
    """Applies a :class:`Policy` to every backend and remembers what it did, to undo it.

    ``printer`` receives the report lines (``print`` in a notebook).
    """

    def __init__(self, printer: Callable[[str], None] = print) -> None:
        self.env = Environment()
        self.hooks = PostImportHooks(on_error=self._hook_failed)
        self.policy: Optional[Policy] = None
        self.reports: List[Report] = []
        self._printer = printer
        self._setup: Optional[_Setup] = None

    def apply(self, policy: Policy) -> List[Report]:
        """Apply ``policy`` to every backend not started yet; print and return one report each."""
        # A new policy replaces the old one entirely: withdraw what the old one set first.
        self._withdraw()
        self.hooks.install()
        self.policy = policy
        self._setup = _Setup(self.env, self.hooks)
        # Only a limit needs the GPUs (a percentage of each one's memory); growth asks NVML
        # nothing, which keeps %load_ext fast. The cells and %gpumem status say "no GPU".
        devices = _nvml.devices() if policy.limit is not None else []
        self.reports = [backend.configure(policy, self._setup, devices) for backend in BACKENDS]
        gpu_note = _nvml.unavailable_reason() if policy.limit is not None else None
        lines = [f"kmem_magic: policy {policy}" + (f" (no GPU: {gpu_note})" if gpu_note else "")]
        lines += [str(report) for report in self.reports]
        self._printer("\n".join(lines))
        return self.reports

    def remove(self) -> None:
        """Undo everything :meth:`apply` did that can still be undone (idempotent)."""
        self._withdraw()
        self.policy = None
        self.hooks.uninstall()

    def _withdraw(self) -> None:
        if self._setup is not None:
            self._setup.active = False  # hooks queued inside a framework check this
        self.hooks.clear()
        self.env.restore()

    def _hook_failed(self, package: str, error: BaseException) -> None:
        self._printer(f"kmem_magic: could not configure {package} after its import: {error}")

