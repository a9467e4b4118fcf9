"""Compile and run a cell's code as IPython does: transformed, with its last expression
evaluated (unless the cell ends in ``;``), in the user's namespace.

>>> from IPython.core.interactiveshell import InteractiveShell         # doctest: +SKIP
>>> code = compile_cell(InteractiveShell.instance(), "", "x = 2\\nx + 1")  # doctest: +SKIP
>>> run(code, {})                                                      # doctest: +SKIP
3
"""

from __future__ import annotations

import ast
import inspect
import io
import os
import sys
import tokenize
import traceback
from typing import Any, Callable, Dict, NamedTuple, Optional


class TopLevelAwait(ValueError):
    """The cell awaits at top level, which ``%%gpumem`` cannot run (yet)."""


def _parses_with_top_level_await(source: str) -> bool:
    try:
        compile(source, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    except SyntaxError:
        return False
    return True


class Code(NamedTuple):
    """A compiled cell: its statements and its last expression (each None when absent), and the
    name its source is cached under (what its frames' tracebacks show)."""

    body: Optional[Any]
    expr: Optional[Any]
    filename: str = ""


def ends_with_semicolon(source: str) -> bool:
    """Whether the code's last token is ``;``, which silences a cell's value in IPython."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return False
    skip = (tokenize.ENDMARKER, tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)
    last = next((token for token in reversed(tokens) if token.type not in skip), None)
    return last is not None and last.type == tokenize.OP and last.string == ";"


def cell_number(shell: Any) -> Optional[int]:
    """The In[] number of the running cell (IPython 7 and 9 count at different moments: 9 has
    already advanced ``execution_count`` while the cell runs)."""
    running = getattr(shell.displayhook, "exec_result", None)
    number = getattr(running, "execution_count", None)
    return number if number is not None else getattr(shell, "execution_count", None)


def compile_cell(shell: Any, line: str, cell: str) -> Code:
    """Transform and compile ``cell`` (run as ``%%gpumem line``) with ``shell``'s transformers
    and AST transformers, splitting off a last expression; raises SyntaxError as IPython does."""
    source = shell.transform_cell(cell)
    # Cache the magic's line (as a comment, so that the source parses and tracebacks show the
    # same frames as the bare cell's) plus the body: the user's lines, numbered as in the
    # notebook cell (the body starts on line 2).
    filename = shell.compile.cache(f"# %%gpumem {line}\n{source}", cell_number(shell))
    try:
        tree = shell.transform_ast(shell.compile.ast_parse("\n" + source, filename=filename))
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not ends_with_semicolon(source):
            last = ast.Expression(tree.body.pop().value)
        body = shell.compile(tree, filename, "exec") if tree.body else None
        expr = shell.compile(last, filename, "eval") if last is not None else None
    except SyntaxError:
        if _parses_with_top_level_await(source):
            raise TopLevelAwait("%%gpumem: top-level await cannot be measured yet; run the "
                                "awaited code in a cell of its own, or measure a synchronous "
                                "call") from None
        raise
    return Code(body, expr, filename)


def release_after_traceback(shell: Any, error: BaseException,
                            then: Optional[Callable[[], None]] = None) -> None:
    """Clear the locals of the frames ``error`` went through (the user's, not kmem's) once
    IPython has shown its traceback, then call ``then``: the traceback reads as the bare
    cell's, and the tensors a failed cell's frames held (an out-of-memory error's batch,
    activations) are released before the next cell, which ``sys.last_traceback`` would
    otherwise keep alive."""
    def release(*_args) -> None:
        shell.events.unregister("post_run_cell", release)
        try:
            for tb in _tracebacks(error):
                _clear_frames(tb)
        finally:
            if then is not None:
                then()

    shell.events.register("post_run_cell", release)


def _tracebacks(error: BaseException) -> list:
    """The tracebacks of ``error`` and of the errors it chains (``raise ... from``, or raised
    while handling: a retry after an out-of-memory error keeps the first attempt's frames)."""
    found, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        found.append(error.__traceback__)
        error = error.__cause__ or error.__context__
    return found


def failed_frames(tb) -> list:
    """The frames of a failed cell, outermost first: every frame of the traceback ``tb`` and,
    between two of its entries, the callers that link them, so that the frames Keras'
    traceback filter leaves out of ``tb`` are there too (its ``fit`` and step frames, whose
    locals hold the batch and the training state). Nothing above the cell's frame, and nothing
    of kmem's: the kernel's frames, some still running, are never part of it. An error raised
    in another thread and re-raised here keeps both threads' traceback frames."""
    entries = []
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_PACKAGE):
            entries.append(tb.tb_frame)
        tb = tb.tb_next
    frames, seen = [], set()
    for outer, inner in zip([None] + entries, entries):
        between, frame = [], inner.f_back
        while frame is not None and frame is not outer and len(between) < 1000 and \
                outer is not None and not frame.f_code.co_filename.startswith(_PACKAGE):
            between.append(frame)
            frame = frame.f_back
        if frame is not outer:  # not linked by callers (another thread): the entry only
            between = []
        for found in reversed(between):
            if id(found) not in seen:
                seen.add(id(found))
                frames.append(found)
        if id(inner) not in seen:
            seen.add(id(inner))
            frames.append(inner)
    return frames


_SUSPENDABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _clear_frames(tb) -> None:
    """Clear the locals of the failed cell's frames (kmem's own are left alone)."""
    for frame in failed_frames(tb):
        # the cell's frame is the namespace; clearing a suspended generator's frame would
        # close the generator (before Python 3.13)
        if frame.f_locals is not frame.f_globals and not frame.f_code.co_flags & _SUSPENDABLE:
            try:
                frame.clear()
                # Before Python 3.13, showing the traceback left a snapshot of the locals in
                # the frame's f_locals: reading it again re-syncs it with the cleared frame.
                frame.f_locals
            except RuntimeError:  # still running (a caller of the cell): nothing to free
                pass


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def traceback_from_body(shell: Any, code: Code) -> None:
    """Have IPython show the error that is leaving the cell from the cell's own body down, as
    it shows the bare cell's: without the ``run_cell_magic`` line and kmem's hidden frames.

    Done through IPython's custom exception hook for this one error (then removed again), and
    only where the user has set no hook of their own."""
    if shell.custom_exceptions:
        return

    def show(self, etype, value, tb, tb_offset=None):
        self.set_custom_exc((), None)
        start = tb
        while start is not None and start.tb_frame.f_code.co_filename != code.filename:
            start = start.tb_next
        start = start or tb
        if issubclass(etype, SyntaxError):
            # IPython would re-read sys.exc_info() (the whole stack) for a SyntaxError raised
            # while running: show it from the body down, as IPython shows the bare cell's.
            stb = self.SyntaxTB.structured_traceback(etype, value, traceback.extract_tb(start))
            sys.last_type, sys.last_value, sys.last_traceback = etype, value, start
            self._showtraceback(etype, value, stb)
        else:
            self.showtraceback((etype, value, start), tb_offset=0)
        return []

    shell.set_custom_exc((BaseException,), show)
    ours = shell.CustomTB.__func__

    def remove(*_args) -> None:  # should the error not reach IPython's run_code
        shell.events.unregister("post_run_cell", remove)
        if getattr(shell.CustomTB, "__func__", None) is ours:
            shell.set_custom_exc((), None)

    shell.events.register("post_run_cell", remove)


def run(code: Code, namespace: Dict[str, Any]) -> Any:
    """Execute ``code`` in ``namespace``; the value of its last expression, else None."""
    __tracebackhide__ = True  # noqa: F841 - read by IPython's traceback printer
    if code.body is not None:
        exec(code.body, namespace)
    if code.expr is not None:
        return eval(code.expr, namespace)
    return None
