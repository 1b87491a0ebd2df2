"""Eager PyTorch as the oracle: run a program both ways, compare what it prints and leaves."""

from __future__ import annotations

import contextlib
import io
import math

import torch

import terra_nb

# A loop whose 11th step indexes past an embedding's rows, in a function it calls: an error that a
# block raises when co-executed (its traceback must end at ``h = emb(idx)``, in ``step``).
INDEX_ERROR_IN_A_FUNCTION = """import torch

emb = torch.nn.Embedding(10, 4)

def step(idx):
    h = emb(idx)
    return h.sum()

for i in range(12):
    loss = step(torch.tensor([1, 2, 3]) * (1 if i < 10 else 10))  # (computed: a future, checked by no one)
    loss.backward()
    print(i, round(loss.item(), 4))
"""


def run_eager(source: str) -> tuple[str, dict]:
    namespace: dict = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "<eager>", "exec", dont_inherit=True), namespace)  # (not this module's __future__)
    return out.getvalue(), namespace


def run_terra(source: str, session: terra_nb.Session | None = None, backend: str = "eager",
              mode: str = "auto", runner: str = "auto") -> tuple[str, dict, terra_nb.Session]:
    session = session or terra_nb.Session(backend=backend, runner=runner)
    namespace: dict = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        session.run_cell(source, namespace, mode=mode)
    return out.getvalue(), namespace, session


def state_of(namespace: dict) -> dict[str, torch.Tensor | None]:
    """Every tensor a program leaves: its tensors, modules (parameters, buffers, .grad), optimizer state."""
    state: dict[str, torch.Tensor | None] = {}
    for name, value in namespace.items():
        if name.startswith("__"):
            continue
        if isinstance(value, torch.Tensor):
            state[name] = value
        elif isinstance(value, torch.nn.Module):
            for key, t in value.state_dict(keep_vars=True).items():
                state[f"{name}.{key}"] = t
                if isinstance(t, torch.nn.Parameter):
                    state[f"{name}.{key}.grad"] = t.grad
        elif isinstance(value, torch.optim.Optimizer):
            for i, per_param in enumerate(value.state.values()):
                for key, t in per_param.items():
                    if isinstance(t, torch.Tensor):
                        state[f"{name}.state{i}.{key}"] = t
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            for i, t in enumerate(value):
                state[f"{name}[{i}]"] = t
    return state


def assert_same_state(expected: dict, actual: dict, exact: bool = True, rtol: float = 1e-5) -> None:
    assert expected.keys() == actual.keys(), f"different state: {sorted(expected.keys() ^ actual.keys())}"
    for key, want in expected.items():
        got = actual[key]
        if want is None or got is None:
            assert want is None and got is None, f"{key}: {want!r} vs {got!r}"
            continue
        if want.is_nested or got.is_nested:  # (no shape: compare its components)
            assert want.is_nested and got.is_nested, f"{key}: nested {want.is_nested} vs {got.is_nested}"
            assert_same_state(dict(enumerate(want.unbind())), dict(enumerate(got.unbind())), exact, rtol)
            continue
        assert want.shape == got.shape and want.dtype == got.dtype, f"{key}: {want.shape}/{want.dtype} vs {got.shape}/{got.dtype}"
        assert want.layout == got.layout, f"{key}: {want.layout} vs {got.layout}"
        if want.layout != torch.strided:
            want, got = want.to_dense(), got.to_dense()
        plain = ("Tensor", "Parameter", "FutureTensor")  # (a result kept from co-execution: README "Limits")
        if type(want).__name__ not in plain or type(got).__name__ not in plain:  # a class of the program's
            assert type(want).__name__ == type(got).__name__, f"{key}: {type(want)} vs {type(got)}"
            want, got = want.as_subclass(torch.Tensor), got.as_subclass(torch.Tensor)
        if exact:
            assert torch.equal(want.detach(), got.detach()), f"{key} differs (max abs diff {(want - got).abs().max()})"
        else:
            torch.testing.assert_close(got.detach(), want.detach(), rtol=rtol, atol=1e-6, msg=key)


def check_program(source: str, backend: str = "eager", exact: bool = True, require_coexec: bool = True,
                  runner: str = "auto"):
    """Run ``source`` eagerly and co-executed; assert same stdout and state; return the session."""
    printed, namespace = run_eager(source)
    printed_t, namespace_t, session = run_terra(source, backend=backend, runner=runner)
    if exact:
        assert printed_t == printed
    else:
        _assert_close_text(printed, printed_t)
    assert_same_state(state_of(namespace), state_of(namespace_t), exact=exact)
    if require_coexec:
        modes = [it.mode for it in session.log.iterations]
        assert "coexec" in modes, f"no co-executed iteration: {modes}"
    return session


def _assert_close_text(expected: str, actual: str) -> None:
    a, b = expected.split(), actual.split()
    assert len(a) == len(b), f"{expected!r} vs {actual!r}"
    for x, y in zip(a, b):
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            assert x == y
        else:
            assert math.isclose(fx, fy, rel_tol=1e-4, abs_tol=1e-5), f"{x} vs {y}"


def check_cells(cells: list[tuple[bool, str]], runner: str = "auto", backend: str = "eager") -> terra_nb.Session:
    """A notebook's cells in order, ``(co-executed, source)``: the co-executed ones as ``%%terra``
    cells of one session, the others plain. Assert what they print and leave is eager's."""
    eager_ns: dict = {"__name__": "__main__"}
    expected = io.StringIO()
    with contextlib.redirect_stdout(expected):
        for _, cell in cells:
            exec(compile(cell, "<eager>", "exec", dont_inherit=True), eager_ns)
    session = terra_nb.Session(runner=runner, backend=backend)
    terra_ns: dict = {"__name__": "__main__"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for coexecuted, cell in cells:
            if coexecuted:
                session.run_cell(cell, terra_ns)
            else:
                exec(compile(cell, "<plain>", "exec", dont_inherit=True), terra_ns)
    assert printed.getvalue() == expected.getvalue()
    assert_same_state(state_of(eager_ns), state_of(terra_ns))
    return session
