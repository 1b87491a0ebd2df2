"""Graph-only replay: the blocks of a traced iteration reproduce that iteration bitwise.

Oracle: snapshot every state tensor (parameters, buffers, optimizer state, .grad) and the RNG,
run the iteration traced (that is eager execution), restore the snapshot into the same
objects, replay the blocks, and require exactly the state the traced run left.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import terra_nb


def _state(model, opt):
    out = {f"m.{k}": v for k, v in model.state_dict(keep_vars=True).items()}
    for i, p in enumerate(model.parameters()):
        out[f"g{i}"] = p.grad
        if opt is not None:
            for k, v in opt.state[p].items():
                if isinstance(v, torch.Tensor):
                    out[f"o{i}.{k}"] = v
    return out


def _snapshot(model, opt):
    return {k: None if v is None else v.detach().clone() for k, v in _state(model, opt).items()}, torch.get_rng_state()


def _restore(model, opt, snap):
    values, rng = snap
    for i, p in enumerate(model.parameters()):
        g = values[f"g{i}"]
        p.grad = None if g is None else g.clone()
    for k, v in _state(model, opt).items():
        if not k.startswith("g"):
            v.data.copy_(values[k])
    torch.set_rng_state(rng)


def _assert_replay_matches(step, model, opt, *args):
    step(model, opt, *args)  # warm-up: lazy optimizer state exists from here on
    step(model, opt, *args)
    before = _snapshot(model, opt)
    trace = terra_nb.Session().trace(step, model, opt, *args)
    after_eager = _snapshot(model, opt)[0]
    _restore(model, opt, before)
    trace.replay()
    after_replay = _snapshot(model, opt)[0]
    assert after_eager.keys() == after_replay.keys()
    for k, want in after_eager.items():
        got = after_replay[k]
        assert (want is None) == (got is None), k
        if want is not None:
            assert torch.equal(want, got), f"{k} differs"
    assert trace.blocks, "the iteration was cut into blocks"
    return trace


def _train_step(model, opt, x, y):
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))


DATA = (torch.randn(8, 6), torch.randint(0, 4, (8,)))


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    lambda p: torch.optim.Adam(p, lr=0.01),
    lambda p: torch.optim.Adam(p, lr=0.01, foreach=True),
    lambda p: torch.optim.AdamW(p, lr=0.01, foreach=True),
    lambda p: torch.optim.AdamW(p, lr=0.01, foreach=False),
], ids=["sgd", "adam", "adam-foreach", "adamw-foreach", "adamw"])
def test_mlp_with_optimizers(make_opt):
    model = _mlp()
    _assert_replay_matches(_train_step, model, make_opt(model.parameters()), *DATA)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_cnn_with_batchnorm(train):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    model.train(train)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))
    _assert_replay_matches(_train_step, model, opt, x, y)
    assert int(model[1].num_batches_tracked) == (3 if train else 0)  # 2 warm-up + the replayed step


def test_lstm_cell_unrolled_in_a_python_loop():
    torch.manual_seed(0)
    cell = nn.LSTMCell(5, 7)
    opt = torch.optim.SGD(cell.parameters(), lr=0.1)
    xs = torch.randn(6, 3, 5)

    def step(cell, opt, xs):
        h = c = torch.zeros(3, 7)
        total = 0
        for t in range(xs.shape[0]):
            h, c = cell(xs[t], (h, c))
            total = total + h.pow(2).mean()
        opt.zero_grad()
        total.backward()
        opt.step()

    _assert_replay_matches(step, cell, opt, xs)


def test_transformer_block():
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.randn(2, 5, 16)

    def step(model, opt, x):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()

    _assert_replay_matches(step, model, opt, x)


def test_no_grad_evaluation():
    model = _mlp()
    model.eval()
    x = torch.randn(8, 6)
    results = []

    def evaluate(model, opt, x):
        with torch.no_grad():
            results.append(model(x).softmax(-1))

    trace = _assert_replay_matches(evaluate, model, None, x)
    assert all(not node.grad[0] for node in trace.nodes if node.name == "linear")


def test_replaying_captured_iterations_leaves_out_a_backward_into_a_graph_built_before_them():
    """REINFORCE-like: each iteration is one step; every fourth backpropagates a loss summed over
    the steps before. Replayed back to back, outputs feed later iterations (the window's own
    steps), but a loss that sums steps from before the window cannot be differentiated again."""
    session = terra_nb.Session(backend="eager")
    session.executor.runner.capture(6)
    source = """
import torch
torch.manual_seed(0)
policy = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(policy.parameters(), lr=0.01)
log_probs = []
for step in range(40):
    logits = policy(torch.ones(4) * (step % 3))
    log_probs.append(torch.log_softmax(logits, -1)[step % 2])
    if len(log_probs) == 4:
        loss = -torch.stack(log_probs).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        log_probs = []
"""
    session.run_cell(source, {"__name__": "__main__"})
    assert len(session.executor.runner.captured) == 6
    times, left_out = session.executor.runner.replay_captured()
    assert left_out >= 1 and len(times) == 6 - left_out and all(t > 0 for t in times)


def test_replaying_iterations_that_begin_at_their_backward():
    """Where the iterations' anchor is ``loss.backward()``, each captured iteration begins with the
    backward of a loss the iteration before built. Only the first is left out: the others find
    their loss in what the replay of the iteration before produced. (All of them were: the first
    failure stopped its iteration before its forward built the next one's graph.)"""
    from collections import deque

    from terra_nb.runtime.runner import GraphRunner

    w = torch.ones(3, requires_grad=True)

    def forward(w, x):
        return [(w * x).sum()]

    def backward(loss):
        loss.backward()
        return []

    captured: deque = deque()
    loss = forward(w, torch.ones(3))[0]
    for i in range(5):
        x = torch.full((3,), float(i))
        backward(loss)
        new = forward(w, x)
        captured.append(((1, i), [(backward, [loss], []), (forward, [w, x], new)]))
        loss = new[0]
    runner = GraphRunner.__new__(GraphRunner)
    runner.captured = captured
    times, left_out = runner.replay_captured()
    assert left_out == 1 and len(times) == 4
