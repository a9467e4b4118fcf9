"""The ``%gpumem`` line magic and the ``%%gpumem`` cell magic, with their configuration.

Configuration, strongest first: options on the magic line; ``%config GpuMem.limit = "4GiB"`` (or
``c.GpuMem.limit`` in ``ipython_config.py``); the environment variables ``KMEM_POLICY``
(``growth`` or ``none``) and ``KMEM_LIMIT`` (``4GiB``, ``60%``, or ``share:20`` for a fair share
of each GPU among 20 kernels), which a workshop can set for every kernel before anything imports
a framework; then the default, ``growth``. ``KMEM_LEDGER`` (or ``GpuMem.ledger``) names the
folder the kernels of a machine or a hub share to know each other (``%gpumem who``); ``off``
turns it off.

This module only wires the rooms together: :mod:`._cell` compiles and runs the cell,
:mod:`.measure` measures it, :mod:`.advise` reads the record, :mod:`.show` shows it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from IPython.core import magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from traitlets import Float, Int, TraitError, Unicode, default, observe, validate

from . import _cell, _nvml, ledger
from ._interrupts import Interrupts, held
from .policy import Configurator, Policy
from .sizes import parse_limit

if TYPE_CHECKING:  # imported where used: %load_ext needs only the policy (and stays fast)
    from .measure import Measurement
    from .measure.presence import Presence
    from .record import CellRecord, Sharing, Suggestion
    from .show.panel import Panel

COMMANDS = ("status", "history", "export", "who")
LIVE_PANELS = 20  # panels that keep their widget (and buttons); older ones become static
CELL_ONLY = ("--interval", "--quiet", "--no-live", "--compare", "-o", "--output")


def _size_or_percent(value: str) -> str:
    """argparse ``type=`` for --limit: accepts ``4GiB``, ``512MiB``, ``60%``; what it refuses
    is said in the error (argparse's own would only say "invalid")."""
    value = _unquoted(value)
    try:
        parse_limit(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _unquoted(value: str) -> str:
    """``value`` without the quotes around it: IPython's splitting of a magic's line keeps
    them (``--limit "4 GiB"``, ``export "my cells.csv"``)."""
    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


_size_or_percent.__name__ = "size (e.g. 4GiB, 512MiB, 60%, share:4)"


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if not 0.001 <= seconds <= 60:
        raise ValueError(value)
    return seconds


_positive_seconds.__name__ = "interval in seconds (0.001 to 60)"


def _policy_options(magic):
    """The options both magics take: which policy to apply before anything else."""
    for decorator in reversed((
        magic_arguments.argument_group("policy (one of)"),
        magic_arguments.argument("--growth", action="store_true",
                                 help="take GPU memory only as needed (the default)"),
        magic_arguments.argument("--limit", type=_size_or_percent, metavar="SIZE",
                                 help="growth, capped at SIZE per GPU (4GiB, 512MiB, 60%%, or "
                                 "share:N: a fair share among N kernels)"),
        magic_arguments.argument("--no-policy", action="store_true",
                                 help="change nothing, only measure"),
    )):
        magic = decorator(magic)
    return magic


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
    ledger = Unicode(
        help="The folder the kmem kernels of a machine (or a hub) share to know each other "
        "(%gpumem who); 'off' for none. Default: $KMEM_LEDGER, else one folder per machine "
        "under the system's temporary folder."
    ).tag(config=True)

    @default("policy")
    def _policy_default(self) -> str:
        return os.environ.get("KMEM_POLICY", "growth")

    @default("limit")
    def _limit_default(self) -> str:
        return os.environ.get("KMEM_LIMIT", "")

    @default("ledger")
    def _ledger_default(self) -> str:
        return os.environ.get(ledger.ENV, "")

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

    @validate("history_size")
    def _check_history_size(self, proposal) -> int:
        if proposal["value"] < 1:
            raise TraitError(f"GpuMem.history_size must be at least 1, not {proposal['value']}")
        return proposal["value"]

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
        self.panels: Dict[Any, Panel] = {}  # the live panels, oldest first, by cell
        self.folder = _notebook_folder(shell)  # where Save writes, whatever %cd does later
        self._gpu_note_said: Optional[str] = None  # "no GPU: why", said once per kernel
        self._loaded = False
        self.presence: Optional[Presence] = None  # this kernel in the ledger, once loaded
        self.ledger_note: Optional[str] = None  # why there is no ledger, when there is none

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
        """Apply the default policy (called by ``%load_ext kmem_magic``) and join the ledger."""
        self._apply(self.default_policy())
        self._loaded = True
        self._open_ledger()
        _nvml.warm_up()  # in the background: the first cell need not wait for NVML to start

    def unload(self) -> None:
        """Undo the policy's variables and hooks (called by ``%unload_ext``) and leave the
        ledger; idempotent."""
        self._loaded = False
        self._close_ledger()
        self.configurator.remove()

    def _apply(self, policy: Policy) -> None:
        self.configurator.apply(policy)
        self._present()

    @observe("policy", "limit")
    def _config_changed(self, change) -> None:
        if self._loaded:
            self._apply(self.default_policy())

    @observe("ledger")
    def _ledger_changed(self, change) -> None:
        if self._loaded:
            self._close_ledger()
            self._open_ledger()

    # --------------------------------------------------------------------- the ledger
    def _open_ledger(self) -> None:
        """Join the ledger folder (a folder kmem cannot use is said once, in one line)."""
        from .measure.presence import Presence

        folder = ledger.chosen_folder(self.ledger)
        if folder is None:
            self.ledger_note = "the ledger is off (GpuMem.ledger or $KMEM_LEDGER is 'off')"
            return
        try:
            book = ledger.Ledger(folder, default=folder == ledger.default_folder())
            self.presence = Presence(book, self.shell.user_ns if self.shell else None)
        except Exception as error:  # a folder kmem cannot use costs the ledger, nothing else
            self.ledger_note = f"no ledger: {error}"
            print(f"kmem_magic: {self.ledger_note}")
            return
        self.ledger_note = None
        self._present()

    def _close_ledger(self) -> None:
        presence, self.presence = self.presence, None
        if presence is not None:
            try:
                presence.close()
            except Exception:
                pass

    def _present(self, record: Optional[CellRecord] = None) -> None:
        """Write this kernel's record: its policy now, or the figures ``record`` ended with."""
        policy = self.configurator.policy
        if self.presence is not None:
            self.presence.update(policy=str(policy) if policy else "",
                                 limit=policy.limit if policy else None, record=record)

    def _sharing(self, record: CellRecord) -> Optional[Sharing]:
        """Write this kernel's figures after ``record``, then read who else holds the GPUs
        (None without a ledger; never raises)."""
        if self.presence is None:
            return None
        try:
            self._present(record)
            return self.presence.who(record)
        except Exception as failure:
            self.ledger_note = f"the ledger could not be read ({failure!r})"
            return None

    def _gather(self):
        """In process 0 of a multi-process job: every device of the job (never raises)."""
        if self.presence is None:
            return None
        try:
            return self.presence.gather()
        except Exception as failure:
            print(f"kmem_magic: could not gather the job's other processes ({failure!r})")
            return None

    def _who(self) -> str:
        from .show import text

        if self.presence is None:
            me = ledger.Identity.here()
            sharing = ledger.view([], me, ledger.Readings.now(), "(none)")
            return text.who_table(sharing) + f"\nkmem_magic: {self.ledger_note}: other kmem " \
                "kernels are not shown"
        try:
            sharing = self.presence.who()
        except Exception as failure:  # an asked-for table that fails says so, in one line
            return f"kmem_magic: the ledger {self.presence.ledger.folder} could not be read " \
                f"({failure!r})"
        note = f"\nkmem_magic: {self.presence.fault}" if self.presence.fault else ""
        return text.who_table(sharing) + note

    # --------------------------------------------------------------------- the magics
    @magic_arguments.magic_arguments(name="gpumem")
    @magic_arguments.argument(
        "command", nargs="?", choices=COMMANDS,
        help="'status': the policy, each backend and each GPU (the default without a policy "
        "option); 'history': every measured cell; 'export PATH': the history as .csv or .json; "
        "'who': every kmem kernel on this machine's GPUs, by notebook and user",
    )
    @magic_arguments.argument("path", nargs="?", help="for export: a .csv or .json file")
    @magic_arguments.argument("--plot", action="store_true",
                              help="for history: draw memory across all measured cells")
    @magic_arguments.argument("--no-ledger", action="store_true",
                              help="leave the ledger: other kernels no longer see this one")
    @_policy_options
    @line_magic("gpumem")
    def gpumem_line(self, line: str = "") -> None:
        """Apply a memory policy to every Keras backend not started yet, or show kmem's state.

        %gpumem --limit 4GiB caps every backend at 4 GiB per GPU; %gpumem status shows the
        policy, the backends and the devices.
        """
        misplaced = [word for word in line.split() if word.split("=")[0] in CELL_ONLY]
        if misplaced:
            raise UsageError(f"%gpumem: {misplaced[0].split('=')[0]} applies to the cell magic "
                             "%%gpumem")
        args = magic_arguments.parse_argstring(self.gpumem_line, line)
        if args.path:
            args.path = _unquoted(args.path)
        policy = _chosen_policy(args)
        if args.command == "export" and (not args.path or
                                         not args.path.lower().endswith((".csv", ".json"))):
            raise UsageError("%gpumem export PATH: PATH must end in .csv or .json")
        if args.path and args.command != "export":
            raise UsageError(f"%gpumem: unexpected argument {args.path!r}")
        if args.plot and args.command != "history":
            raise UsageError("%gpumem: --plot goes with history: %gpumem history --plot")
        if args.no_ledger and args.command not in (None, "status"):
            raise UsageError("%gpumem: --no-ledger goes alone (or with status): "
                             "%gpumem --no-ledger")
        if policy is not None:
            self._apply(policy)
        if args.no_ledger:
            self._close_ledger()
            self.ledger_note = "this kernel left the ledger (%gpumem --no-ledger)"
            print(f"kmem_magic: {self.ledger_note}; other kernels no longer see it")
            if policy is None and args.command is None:
                return
        from .show import text

        if args.command == "history" and args.plot and self.history:
            from IPython.display import display

            from .show.history import bundle

            display(bundle(self.history, text.history_table(self.history)), raw=True)
        elif args.command == "history":
            print(text.history_table(self.history))
        elif args.command == "export":
            print(self._export(args.path))
        elif args.command == "who":
            print(self._who())
        elif args.command == "status" or policy is None:
            print(text.status(self.configurator))

    @magic_arguments.magic_arguments(name="%gpumem")
    @_policy_options
    @magic_arguments.argument_group("measuring")
    @magic_arguments.argument("--interval", type=_positive_seconds, metavar="SECONDS",
                              help="seconds between two samples (default 0.1, or "
                              "%%config GpuMem.interval)")
    @magic_arguments.argument("--quiet", action="store_true",
                              help="print one line instead of the report")
    @magic_arguments.argument("--no-live", action="store_true",
                              help="no live curves, only the final view")
    @magic_arguments.argument("-o", "--output", metavar="VAR",
                              help="also store the cell's record (a CellRecord) in VAR")
    @magic_arguments.argument(
        "--compare", metavar="POLICY", choices=["mixed_float16", "mixed_bfloat16"],
        help="mixed_float16 or mixed_bfloat16: after the cell, run its training a few steps "
        "under the current dtype policy and under POLICY, on clones of your models, and "
        "report the measured saving")
    @cell_magic("gpumem")
    @no_var_expand  # options are read as written; expanding $names would copy the namespace
    def gpumem_cell(self, line: str, cell: str) -> Any:
        """Run the cell exactly as without the magic and show its GPU and host memory: the
        peak per source, what the cell left behind, and suggestions backed by the numbers."""
        __tracebackhide__ = True  # noqa: F841 - read by IPython's traceback printer
        first = line.split()[0] if line.split() else ""
        if first in COMMANDS:
            raise UsageError(f"%%gpumem: '{first}' is a line magic: use %gpumem {first}")
        args = magic_arguments.parse_argstring(self.gpumem_cell, line)
        policy = _chosen_policy(args)
        if args.output is not None and not args.output.isidentifier():
            raise UsageError(f"%%gpumem -o: {args.output!r} is not a variable name")
        # Compile first: a cell with a syntax error changes nothing, not even the policy.
        try:
            code = _cell.compile_cell(self.shell, line, cell)
        except _cell.TopLevelAwait as error:
            raise UsageError(str(error)) from None
        if policy is not None:
            self._apply(policy)
        return self._measure_cell(code, args, cell)

    # --------------------------------------------------------------------- one cell
    def _measure_cell(self, code: _cell.Code, args, cell: str) -> Any:
        __tracebackhide__ = True  # noqa: F841
        policy = self.configurator.policy or self.default_policy()
        interval = args.interval or self.interval
        number = _cell.cell_number(self.shell)
        # kmem's own work before and after the body is never cut short by an interrupt: one
        # that arrives before stops the cell before its body runs, one after is reported and
        # the body's result kept. Every step of it is inside a held block, and the try opens
        # before the first, so that no interrupt between two of them skips the cell's finish.
        measurement: Optional[Measurement] = None
        panel: Optional[Panel] = None
        error: Optional[BaseException] = None
        value = None
        late = Interrupts()  # while kmem finishes: said in the report
        try:
            with held() as early:
                measurement = self._start(policy, interval, number, cell)
                panel = self._panel(policy, number, interval, args, measurement)
                self._watch(measurement, panel)
            if early.count:
                raise KeyboardInterrupt("interrupted before the cell ran")
            value = _cell.run(code, self.shell.user_ns)
            return value
        except BaseException as raised:
            error = raised
            with held(late):
                _cell.traceback_from_body(self.shell, code)
            raise
        finally:
            with held(late):
                oom = error is not None and _is_oom(error)
                record = self._finish(measurement, error, panel)
                if oom and record is not None:
                    record = self._examine(record, error, code)
                extra: List[Suggestion] = []
                if record is not None and args.compare and error is None:
                    with late.let_through():  # --compare trains again: Ctrl-C must reach it
                        extra = self._compare(code, args)
                if oom:
                    # Out of memory: the failed frames' locals (batches, activations) would keep
                    # the memory alive through sys.last_traceback. They are released once
                    # IPython has shown the traceback, and the report (below it) says what came
                    # back.
                    _cell.release_after_traceback(self.shell, error, then=functools.partial(
                        self._conclude_released, record, extra, args, panel, late))
                else:
                    self._conclude(record, extra, value, args, panel)
                    _say_interrupted(panel, late.count, error)

    def _examine(self, record: CellRecord, error: BaseException,
                 code: _cell.Code) -> CellRecord:
        """``record`` with the out-of-memory post-mortem and the failed step's plan, read
        while the failed frames are alive (a failure here costs only the post-mortem)."""
        from . import backends
        from .advise import postmortem

        try:
            note, restored = "", []
            if backends.keras_backend() == "jax":
                try:
                    restored = backends.by_name("jax").restore_keras_state(
                        _cell.failed_frames(error.__traceback__))
                except Exception as failure:
                    note = f"kmem could not give the model its weights back ({failure!r})"
                if restored:
                    note = ("Keras' jax trainer had taken the weights of "
                            f"{', '.join(repr(name) for name in restored)} "
                            "out of its variables for the step that failed; kmem put them back, "
                            "so the model trains on")
            found, plan = postmortem.examine(error, record, self.shell.user_ns, code.filename)
            return dataclasses.replace(record, step_plan=plan,
                                       postmortem=dataclasses.replace(found, note=note))
        except Exception as failure:
            print(f"kmem_magic: no post-mortem this time ({failure!r})")
            return record

    def _conclude_released(self, record: Optional[CellRecord], extra: List[Suggestion], args,
                           panel: Optional[Panel], interrupted: Interrupts) -> None:
        """After an out-of-memory error's frames were released: the figures read again, then
        the report, as :meth:`_conclude` (never raises into the kernel). ``interrupted``
        counted the interrupts while kmem finished the cell, and counts on."""
        from .advise.postmortem import released

        with held(interrupted):
            if record is not None:
                try:
                    record = released(record)
                except Exception as failure:
                    print(f"kmem_magic: could not read memory after releasing the failed "
                          f"frames ({failure!r})")
            self._conclude(record, extra, None, args, panel)
            _say_interrupted(panel, interrupted.count, True)

    def _start(self, policy: Policy, interval: float, number: Optional[int],
               cell: str) -> Optional[Measurement]:
        """The started measurement of this cell, None if kmem could not start one (the cell
        then runs unmeasured: a kmem fault never costs the cell)."""
        from .measure import Measurement

        try:
            return Measurement(policy=str(policy), limit=policy.limit, interval_s=interval,
                               execution_count=number, source=cell).start()
        except Exception as failure:
            print(f"kmem_magic: could not start measuring ({failure!r}); the cell runs as usual")
            return None

    def _panel(self, policy: Policy, number: Optional[int], interval: float, args,
               measurement: Optional[Measurement]) -> Optional[Panel]:
        """The panel, shown now if live, where the frontend shows widgets (else None)."""
        from .measure import measure_now
        from .show.panel import Actions, Panel, widgets_available

        if measurement is None or args.quiet or not widgets_available(self.shell):
            return None
        try:
            panel = Panel(f"%%gpumem cell-{number} · policy {policy}", measurement.devices,
                          refresh_s=max(interval, self.refresh), live=not args.no_live,
                          actions=Actions(measure_now, self.folder, lambda: self.history))
            if panel.live:
                panel.show()
                measurement.on_sample = panel.on_sample
        except Exception as failure:
            print(f"kmem_magic: no panel this time ({failure!r}); the report follows as text")
            return None
        return panel

    def _watch(self, measurement: Optional[Measurement], panel: Optional[Panel]) -> None:
        """While the cell runs, each sample feeds the live panel and, at most every few
        seconds, this kernel's ledger record."""
        presence = self.presence
        if measurement is None or presence is None:
            return
        show = measurement.on_sample

        def on_sample(timeline) -> None:
            if show is not None:
                show(timeline)
            presence.during(timeline, measurement.devices)

        measurement.on_sample = on_sample

    def _finish(self, measurement: Optional[Measurement], error,
                panel: Optional[Panel]) -> Optional[CellRecord]:
        """Stop measuring: the cell's record, or None if kmem failed (then said, never raised:
        a kmem bug must not replace the cell's own outcome)."""
        if measurement is None:
            return None
        try:
            return measurement.finish(error)
        except Exception as failure:
            why = f"the measurement failed ({failure!r}); the cell itself ran as usual"
            try:
                if panel is not None:
                    panel.fail(why)
            except Exception:
                pass
            print(f"kmem_magic: {why}")
            return None

    def _conclude(self, record: Optional[CellRecord], extra: List[Suggestion], value, args,
                  panel: Optional[Panel]) -> None:
        """Advise, remember and show; never raises into the user's cell."""
        if record is None:
            return
        try:
            self._remember_and_show(record, extra, value, args, panel)
        except Exception as failure:
            print(f"kmem_magic: could not finish the report ({failure!r}); the cell itself ran "
                  "as usual")

    def _remember_and_show(self, record: CellRecord, extra: List[Suggestion], value, args,
                           panel: Optional[Panel]) -> None:
        record = dataclasses.replace(record, sharing=self._sharing(record))
        record = dataclasses.replace(record, job=self._gather())
        suggestions, holders, faults = self._suggest(record, value)
        record = dataclasses.replace(record, suggestions=tuple(extra + suggestions),
                                     holders=holders, step_plan=self._step_plan(record),
                                     faults=record.faults + faults)
        self.history.append(record)
        del self.history[:-self.history_size]  # history_size is at least 1 (validated)
        if args.output:
            self.shell.user_ns[args.output] = record
        from . import show

        note_gpu = record.gpu_note != self._gpu_note_said
        self._gpu_note_said = record.gpu_note
        show.report(record, panel, quiet=args.quiet, note_gpu=note_gpu)
        if panel is not None:
            self._keep_live(panel)

    def _keep_live(self, panel: Panel) -> None:
        """Keep ``panel`` live and retire the others that should not be: the earlier panel of
        the same cell (re-run: its output is gone), all but the newest :data:`LIVE_PANELS`, and
        any whose record left the history (so records alive stay within ``history_size``)."""
        header = getattr(self.shell, "parent_header", None) or {}
        cell_id = (header.get("metadata") or {}).get("cellId") or id(panel)
        earlier = self.panels.pop(cell_id, None)
        if earlier is not None:
            earlier.retire(replace=False)
        self.panels[cell_id] = panel
        kept = {id(record) for record in self.history}
        for key, live in list(self.panels.items()):
            if len(self.panels) > LIVE_PANELS or id(live.record) not in kept:
                live.retire()
                del self.panels[key]

    def _step_plan(self, record: CellRecord):
        """Where the peak of the Keras step this cell trained goes, from the planning model
        (None for a cell that trains no model kmem can read; never raises)."""
        if record.step_plan is not None or record.error_kind or ".fit(" not in record.source:
            return record.step_plan
        try:
            from .plan.breakdown import step_plan, trained_model

            found = trained_model(record.source, self.shell.user_ns)
            return step_plan(*found) if found else None
        except Exception:  # the plan is an extra: a model it cannot read gets none
            return None

    def _suggest(self, record: CellRecord, value: Any) -> tuple:
        """The suggestions for ``record``, who holds what it left behind and what failed in
        advice (rules, the holders scan); a failure here must never hide the cell's result."""
        from . import advise

        try:
            suggestions, holders, faults = advise.read(record, self.history,
                                                       self.shell.user_ns, value)
            return list(suggestions), holders, faults
        except Exception as error:
            print(f"kmem_magic: no suggestions this time ({error!r})")
            return [], (), ()

    def _compare(self, code: _cell.Code, args) -> List[Suggestion]:
        """``--compare``: the measured saving of another dtype policy, as a suggestion."""
        from .advise.compare import CompareError, compare

        try:
            _, suggestion, line = compare(code, self.shell.user_ns, args.compare,
                                          interval_s=args.interval or self.interval)
        except CompareError as error:
            print(f"kmem_magic: --compare: {error}")
            return []
        except KeyboardInterrupt:
            print("kmem_magic: --compare interrupted; the cell's own report follows")
            return []
        except Exception as error:  # never let the comparison hide the cell's own result
            print(f"kmem_magic: --compare failed: {error!r}")
            return []
        print(line)
        return [suggestion] if suggestion is not None else []

    def _export(self, path: str) -> str:
        from .show import export

        try:
            return export.export(self.history, os.path.expanduser(path))
        except FileExistsError:
            raise UsageError(f"%gpumem export: {path} exists; choose another name") from None
        except OSError as error:
            raise UsageError(f"%gpumem export: cannot write {path}: "
                             f"{error.strerror or error}") from None


def _say(panel: Optional[Panel], message: str) -> None:
    """``message`` in the panel's status line, else printed."""
    try:
        if panel is not None and not panel.retired:
            panel.widget.status = message
            return
    except Exception:
        pass
    print(f"kmem_magic: {message}")


def _plain_help(doc: str) -> str:
    """IPython's magic help as plain text: without the reST ``::`` before the usage line."""
    usage, _, rest = doc.partition("\n\n")
    if doc.startswith("::\n\n"):
        usage, _, rest = doc[len("::\n\n"):].partition("\n\n")
        usage = "\n".join(line[2:] if line.startswith("  ") else line
                          for line in usage.splitlines())
    return f"Usage: {usage.strip()}\n\n{rest}"


for _magic in (GpuMem.gpumem_line, GpuMem.gpumem_cell):
    _magic.__doc__ = _plain_help(_magic.__doc__ or "")


def _say_interrupted(panel: Optional[Panel], count: int, error: Any) -> None:
    if count:
        kept = "its result is kept" if error is None else "its own error stands"
        _say(panel, "An interrupt arrived while kmem was finishing its report; the cell had "
             f"already run, and {kept}.")


def _is_oom(error: BaseException) -> bool:
    """Whether the cell's error is out of memory; never raises (an exception whose ``str``
    fails must stay the user's own)."""
    from . import backends

    try:
        return backends.is_oom(error)
    except Exception:
        return False


def _notebook_folder(shell) -> str:
    """The notebook's folder: VS Code names the file, Jupyter starts the kernel in it."""
    path = (getattr(shell, "user_ns", None) or {}).get("__vsc_ipynb_file__")
    if isinstance(path, str) and os.path.isabs(path):
        return os.path.dirname(path)
    return os.getcwd()


def _chosen_policy(args) -> Optional[Policy]:
    """The policy the magic's options ask for, None when they ask for none."""
    chosen = [flag for flag in (args.growth, args.limit, args.no_policy) if flag]
    if len(chosen) > 1:
        raise UsageError("%gpumem: choose one of --growth, --limit SIZE, --no-policy")
    if args.limit:
        return Policy("limit", parse_limit(args.limit))
    if args.growth or args.no_policy:
        return Policy("growth" if args.growth else "none")
    return None


__all__ = ["GpuMem"]
