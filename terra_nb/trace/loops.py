"""Loop ticks: the loops of a cell's source announce each of their iterations.

Every ``for`` and ``while`` statement of a cell (and of the functions the cell defines) gets a
call ``__terra_tick__(k)`` as the first statement of its body, ``k`` a small int naming the loop.
The engine needs no such marks to trace or co-execute (it finds iterations by the ops, see
``CoExecutor._advance``); the ticks let it count the iterations of a loop while *no*
TorchFunctionMode is installed: auto's eager stretches on a CPU run with the mode popped, so that
they cost what eager costs, and the tick of the cell's loop both counts them and puts the mode
back when co-execution is to be measured again. Lines and columns of the user's statements do not
change (a tick takes its loop's first body line), so tracebacks and location keys stay as they
were; comprehensions are expressions and get no tick.

Example::

    >>> tree = instrument(ast.parse("for i in range(3):\\n    x = i"), "<cell>")
    >>> ast.unparse(tree).splitlines()[1].strip()      # doctest: +SKIP
    '__terra_tick__(0)'
"""

from __future__ import annotations

import ast

TICK = "__terra_tick__"  # the name the instrumented code calls; bound in the cell's namespace
LOOPS: list[tuple[str, int]] = []  # loop id -> (filename, line of the loop statement)
ENDS: list[int] = []  # loop id -> the loop statement's last line (its body's, or its else's)


def instrument(tree: ast.Module, filename: str) -> ast.Module:
    """Put a tick at the top of every loop body of ``tree`` (in place); returns ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.For, ast.While)) and node.body:
            LOOPS.append((filename, node.lineno))
            ENDS.append(node.end_lineno or node.lineno)
            first = node.body[0]
            call = ast.Expr(ast.Call(ast.Name(TICK, ast.Load()), [ast.Constant(len(LOOPS) - 1)], []))
            for part in ast.walk(call):  # the loop's first body line and column, end positions too
                ast.copy_location(part, first)
            node.body.insert(0, call)
    return tree


def running(loop: int, frame) -> bool:
    """Whether a frame of ``frame``'s stack stands on a line of loop ``loop`` (its statement, its
    body, or a call made from them): False once the loop ended (its function returned, or its cell
    went past it)."""
    filename, first = LOOPS[loop]
    last = ENDS[loop]
    while frame is not None:
        line = frame.f_lineno  # (None in a frame between lines)
        if frame.f_code.co_filename == filename and line is not None and first <= line <= last:
            return True
        frame = frame.f_back
    return False


def enclosed(loop: int, frame, ticked) -> bool:
    """Whether a frame of ``frame``'s stack (``frame`` standing in loop ``loop``) stands in another
    loop of ``ticked`` (the loops that turned in this cell) too: one around ``loop``, in its
    function or in a caller (an episode's loop around its steps' loop and the loop after them, an
    epoch's around its training and evaluation loops). (Other cells' loops may share a file name.)"""
    return any(running(other, frame.f_back if other == loop else frame) for other in ticked)
