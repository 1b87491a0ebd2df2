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
