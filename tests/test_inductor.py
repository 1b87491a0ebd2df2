"""The inductor backend, really compiling (slow: one Inductor compile takes ~20 s on 2 cores)."""

import pytest

import terra_nb

from differential import assert_same_state, run_eager, run_terra, state_of

PROGRAM = """
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
x, y = torch.randn(32, 8), torch.randn(32, 1)
def step():
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    return loss
for i in range(ITERS):
    loss = step()
    if i % 10 == 0:
        print(i, f"{loss.item():.5f}")
"""


@pytest.mark.slow
def test_inductor_blocks_compile_in_the_background_and_match_eager():
    session = terra_nb.Session(backend="inductor")
    namespace: dict = {"__name__": "__main__"}
    session.run_cell(PROGRAM.replace("ITERS", "5"), namespace)   # starts the compiles, runs eagerly meanwhile
    assert session.wait_compiled(timeout=600)
    compiled = [b for b in session.executor.compiled.values() if b.state == "compiled"]
    assert compiled, [b.state for b in session.executor.compiled.values()]
    compiles = session.to_pandas("events").query("kind == 'compile'")
    assert (compiles["duration_ms"] > 0).all() and len(compiles) >= 1

    # the second run uses the compiled blocks: same program, state compared with eager
    source = PROGRAM.replace("ITERS", "30")
    printed, eager_ns = run_eager(source)
    out = run_terra(source, session=session)
    printed_t, terra_ns = out[0], out[1]
    assert len(printed_t.splitlines()) == len(printed.splitlines())
    for a, b in zip(printed.split(), printed_t.split()):
        assert a == b or abs(float(a) - float(b)) <= 1e-4
    assert_same_state(state_of(eager_ns), state_of(terra_ns), exact=False, rtol=1e-5)
    blocks = session.to_pandas("blocks")
    used = blocks[(blocks["backend"] == "inductor") & (blocks["runs"] > 0)]
    assert len(used) >= 1
