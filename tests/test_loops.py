"""Loop ticks (trace/loops.py): the cell's loops announce their iterations; nothing else changes."""

import ast
import traceback

import pytest

import terra_nb
from terra_nb.trace import loops

from differential import run_eager, run_terra

SOURCE = """
import torch
squares = [i * i for i in range(3)]             # a comprehension: no tick
def body(n):
    total = 0
    while n:
        total += n
        n -= 1
    return total
x = torch.zeros(2)
for step in range(4):
    x = x + body(step)
print(x, squares)
"""


def test_every_loop_statement_gets_a_tick_on_its_first_body_line():
    tree = loops.instrument(ast.parse(SOURCE), "<cell>")
    ticks = [node for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == loops.TICK]
    assert len(ticks) == 2  # the while of body() and the for of the cell
    for loop in (n for n in ast.walk(tree) if isinstance(n, (ast.For, ast.While))):
        tick, first = loop.body[0], loop.body[1]
        assert tick.lineno == first.lineno and tick.col_offset == first.col_offset
        assert loops.LOOPS[tick.value.args[0].value] == ("<cell>", loop.lineno)


def test_an_instrumented_cell_prints_what_eager_prints_and_its_tracebacks_name_the_same_lines():
    out, namespace, _ = run_terra(SOURCE)
    assert out == run_eager(SOURCE)[0]
    failing = SOURCE.replace("        n -= 1", "        n -= 1\n        assert n != 1, 'boom'")
    with pytest.raises(AssertionError) as eager_error:
        run_eager(failing)
    with pytest.raises(AssertionError) as terra_error:
        run_terra(failing)
    lines = [frame.lineno for frame in traceback.extract_tb(eager_error.value.__traceback__)][-2:]
    assert [frame.lineno for frame in traceback.extract_tb(terra_error.value.__traceback__)][-2:] == lines


def test_a_function_a_cell_defined_still_runs_outside_any_cell():
    session = terra_nb.Session()
    namespace: dict = {"__name__": "__main__"}
    session.run_cell(SOURCE, namespace)
    assert namespace["body"](4) == 10  # its while loop ticks into an idle executor


def test_a_break_or_continue_opening_a_loop_gets_a_skip_at_its_line():
    source = """
def first_squares(n):
    out = []
    for i in range(100):
        if len(out) >= n:
            break
        if i % 2:
            continue
        out.append(i * i)
    return out
for k in range(3):
    if k == 1:
        continue
    print(first_squares(k + 2))
"""
    tree = loops.instrument(ast.parse(source), "<cell>")
    skips = [node for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == loops.SKIP]
    assert sorted(skip.lineno for skip in skips) == [6, 13]  # the `continue` after a statement gets none
    for loop in (n for n in ast.walk(tree) if isinstance(n, (ast.For, ast.While))):
        head = loop.body[1].body
        assert head[0].value.args[0].value == loop.body[0].value.args[0].value  # the loop's own id
        assert isinstance(head[1], (ast.Break, ast.Continue)) and head[0].lineno == head[1].lineno
    out, namespace, _ = run_terra(source)
    assert out == run_eager(source)[0]
    assert namespace["first_squares"](3) == [0, 4, 16]  # outside any cell: the executor is idle
