"""``@terra_nb.coexecute`` and ``Session.call``: each call of a function is one co-executed iteration."""

import functools

import pytest
import torch

import terra_nb
from terra_nb.session import _running

from differential import run_terra


def _train(session: terra_nb.Session, calls: int = 10):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss, "weight_grad": model.weight.grad}

    step = terra_nb.coexecute(step, session_=session) if session is not None else step
    data = [(torch.randn(8, 4), torch.randn(8, 2)) for _ in range(calls)]
    out = [step(x, y) for x, y in data]
    return model, out


def test_a_decorated_step_trains_as_eager_and_returns_plain_tensors():
    """Each call is a row; what it returns holds real tensors, in a dict too (a dict's values
    stayed futures, and ``g["weight_grad"] is model.weight.grad`` was False)."""
    model_e, out_e = _train(None)
    session = terra_nb.Session()
    model_t, out_t = _train(session)
    assert torch.equal(model_e.weight, model_t.weight) and torch.equal(model_e.bias, model_t.bias)
    assert [o["loss"].item() for o in out_e] == [o["loss"].item() for o in out_t]
    assert all(type(o["loss"]) is torch.Tensor for o in out_t)
    assert out_t[-1]["weight_grad"] is model_t.weight.grad
    modes = [it.mode for it in session.log.iterations]
    assert len(modes) == 10 and "coexec" in modes, modes


def test_callables_that_are_not_plain_functions():
    """A partial, a bound method and a module are called as one iteration each; a callable with no
    Python code gets a clear error and leaves no row (it failed at ``fn.__code__``, after it had
    added a row)."""
    session = terra_nb.Session()
    lin = torch.nn.Linear(3, 3)

    def scaled(scale, x):
        return lin(x) * scale

    class Holder:
        def run(self, x):
            return lin(x).sum()

    x = torch.ones(2, 3)
    for _ in range(4):
        assert torch.equal(session.call(functools.partial(scaled, 2.0), x), lin(x) * 2.0)
        assert torch.equal(session.call(Holder().run, x), lin(x).sum())
        assert torch.equal(session.call(lin, x), lin(x))
    rows = len(session.log.iterations)
    with pytest.raises(TypeError, match="torch.sum"):
        session.call(torch.sum, x)
    assert len(session.log.iterations) == rows


def test_generator_and_async_functions_are_refused_where_they_are_decorated():
    """Calling one only makes the generator (or coroutine): its body ran later, outside co-execution,
    and each call left an empty row that said ``trace``."""
    def gen(x):
        yield x * 2

    async def astep(x):
        return x * 2

    for fn in (gen, astep):
        with pytest.raises(TypeError, match="generator|coroutine"):
            terra_nb.coexecute(fn)


def test_an_error_inside_a_call_is_an_event_of_its_log():
    session = terra_nb.Session()

    @terra_nb.coexecute(session_=session)
    def step(x):
        if x.sum().item() > 5:
            raise ValueError("bad batch")
        return x * 2

    step(torch.ones(2))
    with pytest.raises(ValueError):
        step(torch.ones(8))
    errors = [e for e in session.log.events if e.kind == "error"]
    assert len(errors) == 1 and "ValueError: bad batch" in errors[0].reason


def test_a_session_given_as_the_decorators_argument():
    session = terra_nb.Session()

    @terra_nb.coexecute(session)
    def step(x):
        return (x * 2).sum()

    assert step(torch.ones(3)).item() == 6.0
    assert len(session.log.iterations) == 1


def test_a_decorated_function_called_inside_a_running_cell_joins_that_cell():
    """Under ``terra-nb run`` (a session running the script's cell), a function decorated without a
    session went to the process's default session: a second engine ran inside the first, and the
    running session's log filled with that engine's own operations (``untyped_storage`` fallbacks
    and syncs every iteration)."""
    before = len(terra_nb.session().log.iterations)
    source = """import torch, terra_nb
lin = torch.nn.Linear(4, 2)
@terra_nb.coexecute
def step(x):
    return lin(x).sum()
for i in range(6):
    print(round(step(torch.ones(3, 4) * i).item(), 4))
"""
    printed, _, session = run_terra(source)
    assert len(printed.split()) == 6
    reasons = [e.reason for e in session.log.events if e.kind in ("fallback", "sync")]
    assert not [r for r in reasons if "untyped_storage" in r], reasons
    assert len(terra_nb.session().log.iterations) == before
    assert not _running()


def test_naming_the_backend_a_session_has_keeps_its_compiled_blocks():
    """``%%terra --backend inductor`` on every cell names the backend the session has: its blocks,
    compiled at a cost of seconds each on a CPU, were thrown away every time."""
    session = terra_nb.Session()
    run_terra("import torch\nx = torch.ones(3)\nfor i in range(6):\n    x = (x * 2).relu()\n", session=session)
    blocks = dict(session.executor.compiled)
    assert blocks
    session.set_backend("eager")
    assert session.executor.compiled == blocks
    session.set_backend("inductor")
    assert not session.executor.compiled


def test_the_log_does_not_grow_by_the_graph_at_each_call():
    """Each call is a cell of its own, and each cell's end logged an event naming every node of the
    graph with its count: a training loop of decorated steps grew the log by the graph's size per
    step. The calls share one such event; the ops table still counts every call."""
    session = terra_nb.Session()
    _train(session, calls=40)
    counts = session.log.of_kind("counts")
    assert len(counts) == 1, len(counts)
    ops = session.to_pandas("ops")
    linear = ops[ops["op"] == "linear"]
    assert len(linear) == 1 and int(linear["count"].iloc[0]) == 40, ops
    run_terra("import torch\nx = torch.ones(3) * 2\n", session=session)  # (a cell after the calls)
    assert len(session.log.of_kind("counts")) == 2
    ops = session.to_pandas("ops")
    assert int(ops[ops["op"] == "linear"]["count"].iloc[0]) == 40, ops
