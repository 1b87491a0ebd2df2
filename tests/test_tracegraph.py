"""The TraceGraph from the user's side: merging, branches, feeds, blocks, exports."""

import json
import sys
import textwrap

import torch

import terra_nb

from differential import run_terra

LOOP = """
import torch
torch.manual_seed(0)
w = torch.randn(4, 4, requires_grad=True)
x = torch.randn(2, 4)
for i in range(5):
    y = (x @ w).relu()
    loss = y.sum()
    loss.backward()
"""


def _ops(session):
    """The graph's nodes, by op and line number (a node's file is the last cell that ran it)."""
    return sorted((n.name, n.line.lineno) for n in session.graph.nodes[1:])


def test_same_loop_traced_twice_gives_one_set_of_nodes():
    session = terra_nb.Session()
    session.run_cell(LOOP, {}, mode="trace")
    first = _ops(session)
    assert all(n.count == 5 for n in session.graph.nodes[1:] if n.name in ("matmul", "relu", "backward"))
    session.run_cell(LOOP, {}, mode="trace")
    assert _ops(session) == first, "a second run of the same cell adds no node"
    assert all(n.count == 10 for n in session.graph.nodes[1:] if n.name in ("matmul", "relu", "backward"))


def test_loop_inside_a_function_called_once_is_merged_and_coexecuted():
    source = """
import torch
def train(w, x, steps):
    for i in range(steps):
        loss = (x @ w).tanh().sum()
        loss.backward()
    return loss
torch.manual_seed(0)
w = torch.randn(4, 4, requires_grad=True)
out = train(w, torch.randn(3, 4), 12)
"""
    _, _, session = run_terra(source)
    modes = [it.mode for it in session.log.iterations]
    assert len(modes) == 12 and modes.count("coexec") >= 9, modes
    assert [n.count for n in session.graph.nodes[1:] if n.name == "tanh"] == [12]


def test_loop_inside_an_imported_module_is_recognised(tmp_path, monkeypatch):
    (tmp_path / "trainer_mod.py").write_text(textwrap.dedent("""
        import torch

        class Trainer:
            def __init__(self, model, lr):
                self.model, self.opt = model, torch.optim.SGD(model.parameters(), lr=lr)

            def fit(self, batches):
                for x, y in batches:
                    self.opt.zero_grad()
                    loss = torch.nn.functional.mse_loss(self.model(x), y)
                    loss.backward()
                    self.opt.step()
                return loss.item()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("trainer_mod", None)
    source = """
import torch, trainer_mod
torch.manual_seed(0)
batches = [(torch.randn(5, 3), torch.randn(5, 1)) for _ in range(10)]
trainer = trainer_mod.Trainer(torch.nn.Linear(3, 1), 0.1)
final = trainer.fit(batches)
"""
    namespace: dict = {}
    session = terra_nb.Session()
    session.run_cell(source, namespace)
    eager: dict = {}
    exec(source, eager)
    assert namespace["final"] == eager["final"]
    modes = [it.mode for it in session.log.iterations]
    assert modes.count("coexec") >= 6, modes
    assert any(n.line and n.line.filename.endswith("trainer_mod.py") for n in session.graph.nodes[1:])


def test_if_on_a_python_value_gives_two_branches():
    source = """
import torch
x = torch.ones(3)
for i in range(6):
    if i % 2 == 0:
        x = x * 2
    else:
        x = x + 1
    x = x.sin()
"""
    _, _, session = run_terra(source, mode="trace")
    (sin,) = [n for n in session.graph.nodes[1:] if n.name == "sin"]
    preds = sorted(p.name for p in sin.pred)
    assert preds == ["add", "mul"], preds
    assert len(sin.succ) == 2, "after sin, either branch may come next"
    assert session.graph.block_end(sin)


def test_a_varying_python_float_is_a_feed_not_a_new_node():
    source = """
import torch
x = torch.ones(3)
for i in range(6):
    lr = 0.1 / (i + 1)
    x = x * lr
"""
    _, _, session = run_terra(source)
    muls = [n for n in session.graph.nodes[1:] if n.name == "mul"]
    assert len(muls) == 1
    assert muls[0].scalars_vary == {0}
    assert muls[0].count == 6


def test_an_index_that_changes_every_iteration_is_a_feed():
    source = """
import torch
torch.manual_seed(0)
xs = torch.randn(10, 4, 3)
total = torch.zeros(3)
for step in range(10):
    total = total + xs[step].sum(0)
print(total)
"""
    printed, _, session = run_terra(source)
    getitems = [n for n in session.graph.nodes[1:] if n.name == "__getitem__"]
    assert len(getitems) == 1 and getitems[0].count == 10
    assert [it.mode for it in session.log.iterations].count("coexec") >= 7
    import contextlib
    import io
    eager = io.StringIO()
    with contextlib.redirect_stdout(eager):
        exec(source, {})
    assert printed == eager.getvalue()


def test_a_changed_shape_is_a_variant():
    source = """
import torch
for n in [4, 4, 3, 4]:
    y = torch.ones(n, 2).sum(0)
"""
    _, _, session = run_terra(source, mode="trace")
    sums = [n for n in session.graph.nodes[1:] if n.name == "sum"]
    assert sorted(tuple(n.in_meta[0][0]) for n in sums) == [(3, 2), (4, 2)]


def test_blocks_end_where_fetches_are():
    source = """
import torch
w = torch.ones(3, requires_grad=True)
for i in range(4):
    a = (w * 2).sum()
    v = a.item()
    b = (w + v).exp().sum()
    b.backward()
"""
    _, _, session = run_terra(source)
    by_name = {}
    for n in session.graph.nodes[1:]:
        by_name.setdefault(n.name, n)  # the first of each name: sum is (w * 2).sum()
    assert by_name["item"].kind == "fetch"
    blocks = session.graph.blocks()
    block_of = {n.id: b for b, chain in enumerate(blocks) for n in chain}
    assert block_of[by_name["sum"].id] != block_of[by_name["exp"].id], "the fetch cuts the block"
    assert by_name["item"].id not in block_of
    runs = session.log.of_kind("block")
    assert runs and all(by_name["item"].id not in e.nodes for e in runs)


def test_json_and_dot_exports():
    session = terra_nb.Session()
    namespace = {"w": torch.randn(4, 4, requires_grad=True)}  # state made outside co-execution
    session.run_cell("""
import numpy as np
import torch
for i in range(5):
    x = torch.from_numpy(np.full((2, 4), float(i), dtype=np.float32))   # a feed: new every iteration
    loss = (x @ w).relu().sum()
    loss.backward()
print(loss.item())
""", namespace, mode="trace")
    data = session.to_json()
    json.dumps(data)
    kinds = {n["kind"] for n in data["nodes"]}
    assert {"op", "fetch", "state", "feed"} <= kinds, kinds
    ops = {n["op"]: n for n in data["nodes"] if n["kind"] != "state"}
    assert ops["matmul"]["count"] == 5 and ops["matmul"]["location"].startswith("<terra-cell")
    assert any(e["kind"] == "data" for e in data["edges"]) and any(e["kind"] == "flow" for e in data["edges"])
    assert all(n["block"] is not None for n in data["nodes"] if n["kind"] == "op")
    dot = session.to_dot()
    assert "matmul" in dot.source and "cluster_" in dot.source


def test_module_path_is_recorded():
    source = """
import torch
class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = torch.nn.Linear(4, 4)
    def forward(self, x):
        return self.attn(x).relu()
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([Block(), Block()])
    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x
net = Net()
for _ in range(2):
    net(torch.ones(1, 4))
"""
    _, _, session = run_terra(source, mode="trace")
    modules = {n.module for n in session.graph.nodes[1:] if n.name == "linear"}
    assert modules == {"layers.0.attn", "layers.1.attn"}


def test_run_cell_in_trace_mode_returns_a_report():
    session = terra_nb.Session()
    report = session.run_cell(LOOP + "loss\n", {}, mode="trace")
    assert report.cell == 1 and len(report.iterations) == 5
    assert {it.mode for it in report.iterations} == {"trace"}
    assert isinstance(report.value, torch.Tensor)


def test_iterations_are_the_dominant_loop():
    nested = """
import torch
torch.manual_seed(0)
cell = torch.nn.RNNCell(3, 4)
opt = torch.optim.SGD(cell.parameters(), lr=0.1)
xs = torch.randn(5, 2, 3)
for step in range(6):                 # the training loop: backward and step make it the dominant one
    h = torch.zeros(2, 4)
    for t in range(5):                # a time loop inside each step
        h = cell(xs[t], h)
    loss = h.pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
"""
    _, _, session = run_terra(nested)
    assert len(session.log.iterations) == 6
    epochs = """
import torch
w = torch.ones(3, requires_grad=True)
data = torch.randn(40, 3)
for epoch in range(2):                # few passes around ...
    for start in range(0, 40, 8):     # ... the loop that does the work
        loss = (data[start:start + 8] * w).sum()
        loss.backward()
"""
    _, _, session = run_terra(epochs)
    assert len(session.log.iterations) == 10


def test_an_edited_cell_retires_its_stale_nodes():
    session = terra_nb.Session()
    namespace = {"w": torch.ones(3, requires_grad=True)}
    session.run_cell("for i in range(3):\n    a = (w * 2).sum()\n    b = (w + 1).exp().sum()\n", namespace)
    ops = {n["op"] for n in session.to_json()["nodes"]}
    assert {"mul", "add", "exp"} <= ops
    # the same cell, edited: its second line changed
    session.run_cell("for i in range(3):\n    a = (w * 2).sum()\n    b = (w - 1).tanh().sum()\n", namespace)
    retired = session.retire_cell(1)
    assert retired >= 2, "add and exp of the old line are stale"
    ops = {n["op"] for n in session.to_json()["nodes"]}
    assert "exp" not in ops and "add" not in ops
    assert {"mul", "sub", "tanh"} <= ops, "the unchanged line's nodes stay"
    report = session.run_cell("for i in range(4):\n    a = (w * 2).sum()\n    b = (w - 1).tanh().sum()\n", namespace)
    assert [it.mode for it in report.iterations].count("coexec") >= 3


def test_a_call_site_has_one_offset_whichever_instruction_the_frame_reports():
    """A frame waiting in a call may report its PRECALL or its CALL (the adaptive interpreter
    decides): both must key the same location."""
    import dis

    from terra_nb.trace.location import canonical_offsets

    def caller(f, a):
        return f(a, 1) + f(a, 2)

    canon = canonical_offsets(caller.__code__)
    calls = [i.offset for i in dis.get_instructions(caller.__code__) if i.opname in ("PRECALL", "CALL")]
    assert len(calls) == 4
    first, second = {canon[o // 2] for o in calls[:2]}, {canon[o // 2] for o in calls[2:]}
    assert len(first) == 1 and len(second) == 1 and first != second


def test_only_except_clauses_count_as_catching():
    """``caught_here``'s regions: a try with an except clause (typed or bare), not a with block's
    exit or a finally, which raise again."""
    import dis

    from terra_nb.trace.location import _except_regions

    def program(x):
        try:
            a = x + 1
        except ValueError:
            a = 0
        with open(__file__) as handle:
            b = x + 2
        try:
            c = x + 3
        finally:
            handle = None
        try:
            d = x + 4
        except:  # noqa: E722
            d = 0
        return a, b, c, d, handle

    adds = [i.offset for i in dis.get_instructions(program) if i.opname == "BINARY_OP" and i.argrepr == "+"]
    regions = _except_regions(program.__code__)
    caught = [any(start <= offset < end for start, end in regions) for offset in adds]
    assert caught == [True, False, False, True]


def test_a_try_catches_what_its_clauses_name_or_an_enclosing_try_does():
    """``catches`` reads the types an except clause names (a tuple, a module's attribute, a
    subclass of the exception, ``Exception``), follows an exception that no clause matches to the
    enclosing try (in the frame or a caller's, up to the root) and takes a finally or a with
    block's exit to raise again: a ``try ... except KeyboardInterrupt`` around a loop does not
    catch a backward's ``RuntimeError``."""
    import sys

    from terra_nb.trace.location import RootRegistry, catches

    roots = RootRegistry()
    seen: list = []

    def probe():
        seen.append(catches(sys._getframe(1), roots, RuntimeError))

    def helper():
        probe()

    def program():
        try:
            probe()
        except RuntimeError:
            pass
        try:
            probe()
        except (KeyError, RuntimeError) as e:
            print(e)
        try:
            probe()
        except KeyboardInterrupt:
            pass
        try:
            probe()
        except torch.cuda.OutOfMemoryError:  # (a subclass of RuntimeError)
            pass
        try:
            probe()
        except ValueError:
            pass
        except Exception:
            pass
        try:
            probe()
        except:  # noqa: E722
            pass
        try:
            try:
                probe()
            except KeyError:
                pass
        except RuntimeError:
            pass
        try:
            try:
                probe()
            except KeyError:
                pass
        except ValueError:
            pass
        try:
            with open(__file__):
                probe()
        except RuntimeError:
            pass
        try:
            probe()
        finally:
            pass
        try:
            try:
                probe()
            finally:
                seen.append("finally")
        except RuntimeError:
            pass
        try:
            helper()
        except RuntimeError:
            pass
        helper()

    roots.add(program.__code__)
    program()
    assert [s for s in seen if s != "finally"] == [True, True, False, True, True, True, True, False, True, False,
                                                   True, True, False]
