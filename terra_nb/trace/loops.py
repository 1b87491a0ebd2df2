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

A ``break`` or ``continue`` that is the first statement of an ``if`` opening the loop's body (``if
step >= steps: break``) gets a call ``__terra_skip__(k)`` before it: the turn ends having run
nothing but that test, and the engine, counting turns by ticks with the mode off, joins it to the
row before it (as co-execution does, whose rows begin at the turn's first op).

Example::

    >>> tree = instrument(ast.parse("for i in range(3):\\n    x = i"), "<cell>")
    >>> ast.unparse(tree).splitlines()[1].strip()      # doctest: +SKIP
    '__terra_tick__(0)'
"""

from __future__ import annotations

import ast

TICK = "__terra_tick__"  # the name the instrumented code calls; bound in the cell's namespace
SKIP = "__terra_skip__"  # called before a break or continue at a loop's head; bound beside TICK
LOOPS: list[tuple[str, int]] = []  # loop id -> (filename, line of the loop statement)
ENDS: list[int] = []  # loop id -> the loop statement's last line (its body's, or its else's)


def instrument(tree: ast.Module, filename: str) -> ast.Module:
    """Put a tick at the top of every loop body of ``tree`` (in place); returns ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.For, ast.While)) and node.body:
            LOOPS.append((filename, node.lineno))
            ENDS.append(node.end_lineno or node.lineno)
            first = node.body[0]
            if isinstance(first, ast.If) and isinstance(first.body[0], (ast.Break, ast.Continue)):
                first.body.insert(0, _call(SKIP, len(LOOPS) - 1, first.body[0]))
            node.body.insert(0, _call(TICK, len(LOOPS) - 1, first))
    return tree


def _call(name: str, loop: int, where: ast.stmt) -> ast.Expr:
    """The statement ``name(loop)``, at ``where``'s line and column (end positions too)."""
    call = ast.Expr(ast.Call(ast.Name(name, ast.Load()), [ast.Constant(loop)], []))
    for part in ast.walk(call):
        ast.copy_location(part, where)
    return call


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


def around(outer: int, inner: int) -> bool:
    """Whether loop ``outer``'s statement contains loop ``inner``'s (in one file, by their lines)."""
    (file_o, first_o), (file_i, first_i) = LOOPS[outer], LOOPS[inner]
    return outer != inner and file_o == file_i and first_o <= first_i and ENDS[inner] <= ENDS[outer]


def enclosed(loop: int, frame, ticked) -> bool:
    """Whether a frame of ``frame``'s stack (``frame`` standing in loop ``loop``) stands in another
    loop of ``ticked`` (the loops that turned in this cell) too: one around ``loop``, in its
    function or in a caller (an episode's loop around its steps' loop and the loop after them, an
    epoch's around its training and evaluation loops). (Other cells' loops may share a file name.)"""
    return any(running(other, frame.f_back if other == loop else frame) for other in ticked)
