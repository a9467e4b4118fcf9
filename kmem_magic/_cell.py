"""Compile and run a cell's code as IPython does: transformed, with its last expression
evaluated (unless the cell ends in ``;``), in the user's namespace.

>>> from IPython.core.interactiveshell import InteractiveShell         # doctest: +SKIP
>>> code = compile_cell(InteractiveShell.instance(), "", "x = 2\\nx + 1")  # doctest: +SKIP
>>> run(code, {})                                                      # doctest: +SKIP
3
"""

from __future__ import annotations

import ast
import io
import tokenize
from typing import Any, Dict, NamedTuple, Optional


class TopLevelAwait(ValueError):
    """The cell awaits at top level, which ``%%gpumem`` cannot run (yet)."""


def _parses_with_top_level_await(source: str) -> bool:
    try:
        compile(source, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    except SyntaxError:
        return False
    return True


class Code(NamedTuple):
    """A compiled cell: its statements and its last expression (each None when absent)."""

    body: Optional[Any]
    expr: Optional[Any]


def ends_with_semicolon(source: str) -> bool:
    """Whether the code's last token is ``;``, which silences a cell's value in IPython."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return False
    skip = (tokenize.ENDMARKER, tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)
    last = next((token for token in reversed(tokens) if token.type not in skip), None)
    return last is not None and last.type == tokenize.OP and last.string == ";"


def compile_cell(shell: Any, line: str, cell: str) -> Code:
    """Transform and compile ``cell`` (run as ``%%gpumem line``) with ``shell``'s transformers
    and AST transformers, splitting off a last expression; raises SyntaxError as IPython does."""
    source = shell.transform_cell(cell)
    # Cache "%%gpumem ..." plus the body so tracebacks show the user's lines, numbered as
    # in the notebook cell (the body starts on line 2).
    filename = shell.compile.cache(f"%%gpumem {line}\n{source}", shell.execution_count)
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
    return Code(body, expr)


def run(code: Code, namespace: Dict[str, Any]) -> Any:
    """Execute ``code`` in ``namespace``; the value of its last expression, else None."""
    __tracebackhide__ = True  # noqa: F841 - read by IPython's traceback printer
    if code.body is not None:
        exec(code.body, namespace)
    if code.expr is not None:
        return eval(code.expr, namespace)
    return None
