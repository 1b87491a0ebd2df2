"""Graph-only replay: the blocks of a traced iteration, run with no Python between them.

:class:`Trace` holds what one traced call recorded (each op's node, its real input tensors,
its floats and its outputs). :meth:`Trace.replay` cuts those records into blocks exactly as the
skeleton would, generates each block's GraphModule and runs them back to back on the *same
state objects* with the *same feeds*. Replaying a trace of iteration ``k`` is therefore one more
iteration with ``k``'s batch: the oracle for the tests is running that iteration eagerly again.

This is also the limit the benchmark compares co-execution to (``graph-only``): the time the
blocks take when nothing else runs.
"""

from __future__ import annotations

import time

from ..graph.blocks import BlockSpec, produces
from ..graph.tracegraph import DEFERRED
from ..trace.ops import fill, out_structure, out_tensors
from .backends import CompiledBlock


class Trace:
    """The ops one call executed while traced, ready to be replayed as blocks."""

    def __init__(self, records: list, backend: str = "eager", max_block: int = 64) -> None:
        self.records = records
        self.max_block = max_block
        self.backend = backend
        self._plan: list | None = None

    @property
    def nodes(self) -> list:
        return [r[0] for r in self.records]

    def plan(self) -> list:
        """The replay plan: ``("block", CompiledBlock, inputs, floats, outs)`` or ``("now", record)`` steps."""
        if self._plan is None:
            self._plan = []
            chunk: list = []
            for record in self.records:
                node = record[0]
                if node.kind in DEFERRED:
                    chunk.append(record)
                    if len(chunk) >= self.max_block:
                        self._close(chunk)
                        chunk = []
                else:
                    self._close(chunk)
                    chunk = []
                    if node.kind != "feed":
                        self._plan.append(("now", record))
            self._close(chunk)
        return self._plan

    def _close(self, chunk: list) -> None:
        if not chunk:
            return
        produced: dict[int, int] = {}
        inputs: list = []
        input_ids: dict[int, int] = {}
        floats: list = []
        ops = []
        outs: list = []
        for node, tensors, fl, node_outs in chunk:
            wiring = []
            for t in tensors:
                v = produced.get(id(t))
                if v is None:
                    k = input_ids.get(id(t))
                    if k is None:
                        k = input_ids[id(t)] = len(inputs)
                        inputs.append(t)
                    wiring.append(-1 - k)
                else:
                    wiring.append(v)
            ops.append((node, tuple(wiring)))
            floats.extend([fl[k] for k in node.passed])
            if produces(node):
                for t in node_outs:
                    produced[id(t)] = len(outs)
                    outs.append(t)
        spec = BlockSpec(tuple(ops), len(inputs), tuple(range(len(outs))))
        self._plan.append(("block", CompiledBlock(spec, self.backend), inputs, floats, outs))  # type: ignore[union-attr]

    def replay(self) -> float:
        """Run the plan once; returns the seconds it took."""
        env: dict[int, object] = {}
        t0 = time.perf_counter()
        for step in self.plan():
            if step[0] == "block":
                _, block, inputs, floats, outs = step
                results = block(*[env.get(id(t), t) for t in inputs], *floats)
                for old, new in zip(outs, results):
                    env[id(old)] = new
            else:
                node, tensors, fl, node_outs = step[1]
                live = [env.get(id(t), t) for t in tensors]
                out = node.func(*fill(node.targs, live, fl), **fill(node.tkwargs, live, fl))
                struct = out_structure(out)
                if struct is not None:
                    for old, new in zip(node_outs, out_tensors(out, struct)):
                        env[id(old)] = new
        return time.perf_counter() - t0

    @property
    def blocks(self) -> list[BlockSpec]:
        return [step[1].spec for step in self.plan() if step[0] == "block"]
