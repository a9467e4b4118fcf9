"""The ``%gpumem`` line magic and the ``%%gpumem`` cell magic, with their configuration.

Configuration, strongest first: options on the magic line; ``%config GpuMem.limit = "4GiB"`` (or
``c.GpuMem.limit`` in ``ipython_config.py``); the environment variables ``KMEM_POLICY``
(``growth`` or ``none``) and ``KMEM_LIMIT`` (``4GiB``, ``60%``), which a workshop can set for
every kernel before anything imports a framework; then the default, ``growth``.
"""

from __future__ import annotations

import ast
import base64
import io
import os
import sys
import tokenize
import traceback
from typing import Any, List, Optional, Sequence

from IPython.core import magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from traitlets import Float, Int, TraitError, Unicode, default, observe, validate

from .advice import Context, advise
from .backends import is_oom
from .live import keras_state, scan
from .measure import Measurement, measure_now
from .panel import Actions, Panel, widgets_available
from .policy import Configurator, Policy
from .record import CellRecord, history_csv, label
from .units import format_bytes, parse_limit


def _size_or_percent(text: str) -> str:
    """argparse ``type=`` for --limit: accepts ``4GiB``, ``512MiB``, ``60%``."""
    parse_limit(text)
    return text


_size_or_percent.__name__ = "size (e.g. 4GiB, 512MiB, 60%)"


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not 0.001 <= value <= 60:
        raise ValueError(text)
    return value


_positive_seconds.__name__ = "interval in seconds (0.001 to 60)"


def _ends_with_semicolon(source: str) -> bool:
    """Whether the code's last token is ``;``, which silences a cell's value in IPython."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return False
    skip = (tokenize.ENDMARKER, tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)
    last = next((token for token in reversed(tokens) if token.type not in skip), None)
    return last is not None and last.type == tokenize.OP and last.string == ";"


@magics_class
class GpuMem(Magics):
    """Measure GPU memory of notebook cells and set a memory policy for every Keras backend."""

    policy = Unicode(
        help="Memory policy when no limit is set: 'growth' (take memory as needed) or 'none' "
        "(change nothing, only measure). Default: $KMEM_POLICY, else 'growth'."
    ).tag(config=True)
    limit = Unicode(
        help="Hard per-GPU limit such as '4GiB' or '60%'; empty for none. Default: $KMEM_LIMIT."
    ).tag(config=True)
    interval = Float(0.1, help="Seconds between two samples while a cell runs.").tag(config=True)
    refresh = Float(0.5, help="Seconds between two redraws of the live panel.").tag(config=True)
    history_size = Int(100, help="How many cell records %gpumem keeps.").tag(config=True)

    @default("policy")
    def _policy_default(self) -> str:
        return os.environ.get("KMEM_POLICY", "growth")

    @default("limit")
    def _limit_default(self) -> str:
        return os.environ.get("KMEM_LIMIT", "")

    @validate("policy")
    def _check_policy(self, proposal) -> str:
        value = proposal["value"].strip().lower()
        if value not in ("growth", "none"):
            raise TraitError(f"GpuMem.policy must be 'growth' or 'none', not {value!r}")
        return value

    @validate("limit")
    def _check_limit(self, proposal) -> str:
        value = proposal["value"].strip()
        if value:
            try:
                parse_limit(value)
            except ValueError as error:
                raise TraitError(f"GpuMem.limit: {error}") from None
        return value

    @validate("interval", "refresh")
    def _check_interval(self, proposal) -> float:
        if not 0.001 <= proposal["value"] <= 60:
            raise TraitError(f"GpuMem.{proposal['trait'].name} must be between 0.001 and 60 "
                             "seconds")
        return proposal["value"]

    def __init__(self, shell=None, **kwargs) -> None:
        super().__init__(shell=shell, **kwargs)
        self.configurator = Configurator()
        self.history: List[CellRecord] = []
        self._loaded = False

    # --------------------------------------------------------------------- life cycle
    def default_policy(self) -> Policy:
        """The policy from configuration and environment (raises UsageError if it is bad)."""
        try:
            return Policy.parse(self.policy, self.limit)
        except (ValueError, TraitError) as error:
            where = [f"${name}={os.environ[name]!r}" for name in ("KMEM_POLICY", "KMEM_LIMIT")
                     if name in os.environ]
            source = f" (environment: {', '.join(where)})" if where else ""
            raise UsageError(f"kmem_magic: {error}{source}") from None

    def load(self) -> None:
        """Apply the default policy (called by ``%load_ext kmem_magic``)."""
        self.configurator.apply(self.default_policy())
        self._loaded = True

    def unload(self) -> None:
        """Undo the policy's variables and hooks (called by ``%unload_ext``); idempotent."""
        self._loaded = False
        self.configurator.remove()

    @observe("policy", "limit")
    def _config_changed(self, change) -> None:
        if self._loaded:
            self.configurator.apply(self.default_policy())

    # --------------------------------------------------------------------- the magic
    @magic_arguments.magic_arguments()
    @magic_arguments.argument(
        "command", nargs="?", choices=["status", "history", "export"],
        help="line magic only: 'status' (policy, backends, devices), 'history' (every measured "
        "cell), 'export PATH' (the history as .csv or .json)",
    )
    @magic_arguments.argument("path", nargs="?", help="for export: a .csv or .json file")
    @magic_arguments.argument(
        "--growth", action="store_true", help="policy: take GPU memory only as needed (default)"
    )
    @magic_arguments.argument(
        "--limit", type=_size_or_percent, metavar="SIZE",
        help="policy: growth, capped at SIZE per GPU (4GiB, 512MiB, 60%%)",
    )
    @magic_arguments.argument(
        "--no-policy", action="store_true", help="policy: change nothing, only measure"
    )
    @magic_arguments.argument(
        "--interval", type=_positive_seconds, metavar="SECONDS",
        help="cell magic: seconds between two samples (default: GpuMem.interval)",
    )
    @magic_arguments.argument(
        "--quiet", action="store_true", help="cell magic: print one line instead of the report"
    )
    @magic_arguments.argument(
        "--no-live", action="store_true", help="cell magic: no live curves, only the final view"
    )
    @magic_arguments.argument(
        "--compare", metavar="POLICY", choices=["mixed_float16", "mixed_bfloat16"],
        help="cell magic: after the cell, run its training a few steps under the current dtype "
        "policy and under POLICY, on clones of your models, and report the measured saving",
    )
    @line_cell_magic
    def gpumem(self, line: str = "", cell: Optional[str] = None) -> Any:
        """Set the memory policy (line) or measure the GPU memory of a cell (cell).

        ``%gpumem --limit 4GiB`` applies a policy to every backend not started yet;
        ``%gpumem status`` shows what is in place. ``%%gpumem`` runs the cell exactly as
        without it and then shows its peak and what it left behind, per source.
        """
        __tracebackhide__ = True  # noqa: F841 - read by IPython's traceback printer
        args = magic_arguments.parse_argstring(self.gpumem, line)
        chosen = [flag for flag in (args.growth, args.limit, args.no_policy) if flag]
        if len(chosen) > 1:
            raise UsageError("%gpumem: choose one of --growth, --limit SIZE, --no-policy")
        if args.command == "export" and (cell is not None or not args.path or
                                         not args.path.lower().endswith((".csv", ".json"))):
            raise UsageError("%gpumem export PATH: PATH must end in .csv or .json")
        if args.path and args.command != "export":
            raise UsageError(f"%gpumem: unexpected argument {args.path!r}")
        if cell is not None and args.command:
            raise UsageError(f"%%gpumem: '{args.command}' is a line magic: "
                             f"use %gpumem {args.command}")
        if cell is None and (args.interval or args.quiet or args.no_live or args.compare):
            raise UsageError("%gpumem: --interval, --quiet, --no-live and --compare apply to the "
                             "cell magic %%gpumem")
        # Compile first: a cell with a syntax error changes nothing, not even the policy.
        code = self._compile(line, cell) if cell is not None else None
        policy = None
        if args.limit:
            policy = Policy("limit", parse_limit(args.limit))
        elif args.growth or args.no_policy:
            policy = Policy("growth" if args.growth else "none")
        if policy is not None:
            self.configurator.apply(policy)
        if cell is None:
            if args.command == "history":
                print(self.history_table())
            elif args.command == "export":
                print(self.export(args.path))
            elif args.command == "status" or policy is None:
                print(self.status())
            return None
        return self._measure_cell(code, args, cell)

    def _measure_cell(self, code, args, cell: str) -> Any:
        __tracebackhide__ = True  # noqa: F841
        policy = self.configurator.policy or self.default_policy()
        interval = args.interval or self.interval
        number = self._cell_number()
        panel = None
        if not args.quiet and widgets_available(self.shell):
            from . import _nvml

            devices = _nvml.devices()
            panel = Panel(
                f"%%gpumem cell-{number} · policy {policy}",
                devices,
                [policy.limit.bytes_of(d.total_bytes) if policy.limit else None for d in devices],
                refresh_s=max(interval, self.refresh),
                live=not args.no_live,
                actions=Actions(measure_now),
            )
            if panel.live:
                panel.show()
        measurement = Measurement(
            policy=str(policy),
            limit=policy.limit,
            interval_s=interval,
            execution_count=number,
            on_sample=panel.on_sample if panel is not None and panel.live else None,
            source=cell,
        )
        measurement.start()
        error: Optional[BaseException] = None
        value = None
        try:
            value = self._run(code)
            return value
        except BaseException as raised:
            error = raised
            if is_oom(raised):
                # Out of memory: the failed frames' locals (batches, activations) would keep the
                # memory alive through sys.last_traceback. Release them; the text stays.
                traceback.clear_frames(raised.__traceback__)
            raise
        finally:
            self._conclude(measurement, error, value, args, panel, code)

    def _conclude(self, measurement: Measurement, error, value, args,
                  panel: Optional[Panel], code) -> None:
        """Stop measuring, advise, remember and show; never raises into the user's cell."""
        try:
            record = measurement.finish(error)
        except Exception as failure:  # a kmem bug must not replace the cell's own outcome
            print(f"kmem_magic: the measurement failed ({failure!r}); the cell itself ran as usual")
            return
        suggestions = self._advise(record, value)
        if args.compare and error is None:
            suggestions = self._compare(code, args) + suggestions
        record.suggestions = [s.to_dict() for s in suggestions]
        self._remember(record)
        self._show(record, quiet=args.quiet, panel=panel, suggestions=suggestions)

    def _compare(self, code, args) -> list:
        """``--compare``: the measured saving of another dtype policy, as a suggestion."""
        from .compare import CompareError, compare

        try:
            _, suggestion, line = compare(code, self.shell.user_ns, args.compare,
                                          interval_s=args.interval or self.interval)
        except CompareError as error:
            print(f"kmem_magic: --compare: {error}")
            return []
        except Exception as error:  # never let the comparison hide the cell's own result
            print(f"kmem_magic: --compare failed: {error!r}")
            return []
        print(line)
        return [suggestion] if suggestion is not None else []

    def _cell_number(self) -> Optional[int]:
        """The In[] number of the running cell (IPython 7 and 9 count at different moments)."""
        running = getattr(self.shell.displayhook, "exec_result", None)
        number = getattr(running, "execution_count", None)
        return number if number is not None else getattr(self.shell, "execution_count", None)

    def _compile(self, line: str, cell: str):
        """Transform and compile the cell like IPython does, splitting off a last expression."""
        shell = self.shell
        source = shell.transform_cell(cell)
        # Cache "%%gpumem ..." plus the body so tracebacks show the user's lines, numbered as
        # in the notebook cell (the body starts on line 2).
        filename = shell.compile.cache(f"%%gpumem {line}\n{source}", shell.execution_count)
        tree = shell.compile.ast_parse("\n" + source, filename=filename)
        tree = shell.transform_ast(tree)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not _ends_with_semicolon(source):
            last = ast.Expression(tree.body.pop().value)
        body = shell.compile(tree, filename, "exec") if tree.body else None
        expr = shell.compile(last, filename, "eval") if last is not None else None
        return body, expr

    def _run(self, code) -> Any:
        __tracebackhide__ = True  # noqa: F841
        body, expr = code
        namespace = self.shell.user_ns
        if body is not None:
            exec(body, namespace)
        if expr is not None:
            return eval(expr, namespace)
        return None

    def _remember(self, record: CellRecord) -> None:
        self.history.append(record)
        del self.history[: -self.history_size or None]

    def _advise(self, record: CellRecord, value: Any = None) -> list:
        """The suggestions for ``record``; a failure here must never hide the cell's result.
        ``value`` is the cell's result, which IPython is about to keep in ``Out``."""
        try:
            namespace = self.shell.user_ns
            shown = {f"Out[{record.execution_count}]": value} if value is not None else {}
            keras = sys.modules.get("keras")
            policy = None
            if keras is not None:
                policy = getattr(keras.config.dtype_policy(), "name", None)
            weights, optimizer = keras_state(namespace)
            context = Context(
                live_objects=lambda: scan({**shown, **namespace},
                                          getattr(sys, "last_traceback", None)),
                dtype_policy=policy, keras_weights_bytes=weights, keras_optimizer_bytes=optimizer)
            return advise(record, self.history, context)
        except Exception as error:
            print(f"kmem_magic: no suggestions this time ({error!r})")
            return []

    def _show(self, record: CellRecord, quiet: bool, panel: Optional[Panel] = None,
              suggestions: Sequence = ()) -> None:
        try:
            if quiet:
                print(record.one_line() + (f" · {len(suggestions)} suggestion(s): "
                      + "; ".join(s.title for s in suggestions) if suggestions else ""))
                return
            from .plot import png

            image = png(record)
            text = record.summary()
            if panel is not None:
                panel.finish(record, image, [s.html() for s in suggestions], text=text)
                return
            from IPython.display import display

            bundle = {
                "text/plain": text,
                "image/png": base64.b64encode(image).decode("ascii"),
            }
            display(bundle, raw=True)
        except Exception as error:  # showing must never hide the cell's own result or error
            print(f"kmem_magic: could not show the memory report: {error!r}")
            print(record.summary())

    # --------------------------------------------------------------------- history
    def history_table(self) -> str:
        """Every measured cell: number, peak, left behind, wall time, suggestions."""
        if not self.history:
            return "no cell measured yet: run one with %%gpumem"
        lines = [f"{'cell':<9} {'wall':>8}  {'peak':<36} {'left behind':>13}  suggestions"]
        for record in self.history:
            peak, source, _, left = record.headline()
            lines.append(
                f"{record.name:<9} {record.wall_s:>7.2f}s  "
                f"{format_bytes(peak.bytes) + ' (' + label(source) + ')':<36} "
                f"{format_bytes(left, signed=True):>13}  "
                + ("; ".join(s["title"] for s in record.suggestions) or "-"))
        return "\n".join(lines)

    def export(self, path: str) -> str:
        """Write the history to ``path`` (.json: full records; .csv: one row per figure)."""
        if os.path.exists(path):
            raise UsageError(f"%gpumem export: {path} exists; choose another name")
        if path.lower().endswith(".json"):
            import json

            text = json.dumps([r.to_dict() for r in self.history], indent=1)
        else:
            text = history_csv(self.history)
        with open(path, "w") as handle:
            handle.write(text)
        return f"wrote {len(self.history)} cell(s) to {os.path.abspath(path)}"

    # --------------------------------------------------------------------- status
    def status(self) -> str:
        """The policy, each backend's state, and the devices, as text."""
        from . import _nvml
        from .backends import BACKENDS, keras_backend

        policy = self.configurator.policy
        lines = [f"kmem_magic policy: {policy if policy else 'not applied'}"]
        reports = {r.backend: r for r in self.configurator.reports}
        for backend in BACKENDS:
            state = ("started" if backend.is_initialized() else
                     "imported" if backend.is_imported() else
                     "installed" if backend.is_installed() else "not installed")
            report = reports.get(backend.name)
            lines.append(f"  {backend.name:<11} {state:<13} "
                         f"{report.message if report else ''}".rstrip())
        lines.append(f"keras backend: {keras_backend() or 'keras not imported'}")
        devices = _nvml.devices()
        if not devices:
            lines.append(f"no GPU: {_nvml.unavailable_reason()}")
        for device in devices:
            used = _nvml.memory_used(device)
            mine, why = _nvml.process_used(device)
            lines.append(
                f"GPU {device.cuda_index}: {device.name} {device.uuid} "
                f"used {format_bytes(used)} of {format_bytes(device.total_bytes)}, "
                f"this process {format_bytes(mine)}" + (f" ({why})" if why else "")
            )
        if self.configurator.env.names:
            lines.append("set by kmem: " + ", ".join(
                f"{name}={os.environ.get(name)}" for name in self.configurator.env.names))
        return "\n".join(lines)


__all__ = ["GpuMem"]
