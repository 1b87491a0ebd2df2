"""The skeleton's C hot path: it is built here, it takes the calls, and both paths agree."""

from __future__ import annotations

import contextlib
import io
import shlex
import shutil
import sysconfig

import pytest
from test_coexec import CASES, PRELUDE

import terra_nb
from terra_nb.runtime import coexec, native

from differential import check_program, run_eager, run_terra

_CC = shlex.split(sysconfig.get_config_var("CC") or "cc")[0]
needs_compiler = pytest.mark.skipif(shutil.which(_CC) is None, reason=f"no C compiler ({_CC}) on this machine")

LOOP = """
import torch
torch.manual_seed(0)
w = torch.randn(8, 8)
x = torch.randn(4, 8)
total = 0.0
for step in range(30):
    y = (x @ w).relu() * 0.5 + step * 0.1
    total += y.sum().item()
print(round(total, 4))
"""


@needs_compiler
def test_the_native_path_is_built_and_installed():
    assert native.load() is not None, native.problem()
    assert native.problem() == ""
    session = terra_nb.Session()
    mode = coexec.TerraMode(session.executor)
    assert mode.native is not None
    assert mode.__torch_function__.__func__ is mode.native


@pytest.fixture
def modes(monkeypatch) -> list:
    """Every TerraMode made while the test runs, in order."""
    made: list = []
    init = coexec.TerraMode.__init__

    def recording(self, executor):
        init(self, executor)
        made.append(self)

    monkeypatch.setattr(coexec.TerraMode, "__init__", recording)
    return made


@needs_compiler
def test_the_native_path_takes_the_deferred_ops(modes, monkeypatch):
    """The C path validates and defers the ops; what the program prints is eager's, on either path."""
    out, _, session = run_terra(LOOP)
    assert out == run_eager(LOOP)[0]
    ops = session.executor.deferred_total
    handed_over = sum(modes[-1].native.misses.values())  # calls the C path left to Python
    assert ops > 100
    assert handed_over < ops / 4, (modes[-1].native.misses, ops)
    monkeypatch.setenv("TERRA_NB_NATIVE", "0")
    pure_out, _, pure_session = run_terra(LOOP)
    assert modes[-1].native is None
    assert pure_out == out
    assert pure_session.executor.deferred_total == ops


INDEXED = """
import torch
torch.manual_seed(0)
batches = torch.randn(6, 4, 8)
w = torch.randn(8, 8, requires_grad=True)
total = 0.0
for step in range(40):
    x = batches[step % 6]
    y = x.narrow(0, step % 3, 2) @ w
    total += y.sum().item()
print(round(total, 4))
"""


@needs_compiler
def test_the_native_path_takes_ops_whose_ints_became_feeds(modes):
    """``batches[step % 6]`` and ``narrow``'s start change every turn: their ints become feeds, and the
    C path validates those ops with the ints left out of the comparison (no call handed to Python)."""
    out, _, session = run_terra(INDEXED)
    assert out == run_eager(INDEXED)[0]
    assert session.executor.graph.int_masks, "the varying ints were not generalized"
    assert [it.mode for it in session.log.iterations].count("coexec") >= 30
    misses = modes[-1].native.misses
    assert misses.get("no entry matched", 0) + misses.get("no successor here", 0) < 10, misses
    assert set(misses) <= {"not skeleton", "no entry matched", "no successor here"}, misses


@needs_compiler
def test_the_native_path_runs_eager_iterations_itself(modes):
    """Baseline iterations (and auto's eager ones where its mode stays on) run each call in C; only the anchor's
    function goes to Python, which checks whether an iteration ended there."""
    session = terra_nb.Session()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        session.run_cell(LOOP, {"__name__": "__main__"}, baseline=10)
    assert out.getvalue() == run_eager(LOOP)[0]
    assert [it.mode for it in session.log.iterations].count("eager") == 10
    misses = modes[-1].native.misses
    assert "mode not auto" not in misses, misses
    assert misses["the anchor's function, run eagerly"] >= 10, misses


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_python_path_alone_is_the_same_as_eager(name, monkeypatch):
    """Where the C path cannot be built, the Python path does the same work."""
    monkeypatch.setenv("TERRA_NB_NATIVE", "0")
    assert native.load() is None
    check_program(PRELUDE + CASES[name])


def test_a_profiling_mode_counts_the_deferred_ops_of_either_path(monkeypatch):
    for setting in ("1", "0"):
        monkeypatch.setenv("TERRA_NB_NATIVE", setting)
        session = terra_nb.Session()
        profiler = session.executor.profiler = coexec.ProfilingMode(session.executor)
        run_terra(LOOP, session)
        counted = sum(n for _, n in profiler.by_iteration.values())
        assert counted == session.executor.deferred_total > 0
        assert profiler.us_per_op() is not None


@needs_compiler
def test_the_c_scan_reads_arguments_as_the_python_scan_does():
    """The spec, tensors and scalars of every argument shape the ops take, both ways."""
    import numpy as np
    import torch

    from terra_nb.trace.ops import scan

    session = terra_nb.Session()
    fast = coexec.TerraMode(session.executor).native
    t, u = torch.ones(2), torch.zeros(3)
    calls = [
        ((t, u), {}),
        ((t, 0.5), {}),
        ((t, 3), {}),
        ((t, True, None), {}),
        ((t, np.float64(0.25)), {}),
        ((t, (0, 2, 1)), {}),
        (([t, u],), {"dim": 0}),
        ((t, torch.Size([2, 1])), {}),
        ((t, slice(1, None, 2)), {}),
        ((t, (slice(None), 0, Ellipsis)), {}),
        ((t,), {"dim": -1, "keepdim": True, "dtype": torch.float64}),
        ((t, [[1, 2.5], (u, "x")]), {"alpha": 0.1, "out": None}),
        ((t, lambda g: g * 2), {}),  # a function: by its code
        ((t, {}), {}),  # a dict (Tensor.__deepcopy__'s memo): by its type
        ((5,), {"generator": torch.Generator()}),  # a generator: by its type
    ]
    for args, kwargs in calls:
        tensors: list = []
        scalars: list = []
        want = scan(args, kwargs, tensors, scalars)
        spec, c_tensors, c_scalars = native.load().scan(fast, args, kwargs)
        assert spec == want, (args, kwargs)
        assert [id(x) for x in c_tensors] == [id(x) for x in tensors]
        assert c_scalars == scalars and [type(x) for x in c_scalars] == [type(x) for x in scalars]


def test_without_a_compiler_the_python_path_runs_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_LOADED", [])
    monkeypatch.setattr(native, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(native.sysconfig, "get_config_var", lambda name: "no-such-cc-terra" if name == "CC" else None)
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert native.load() is None
    assert "no-such-cc-terra" in native.problem()
    out, _, session = run_terra(LOOP)
    assert out == run_eager(LOOP)[0]
    assert any(it.mode == "coexec" for it in session.log.iterations)
