"""Session traces as pandas tables: columns, dtypes, values, round trips."""

import pandas as pd
import pytest

import terra_nb
from terra_nb.frames import read_export

from differential import run_terra

PROGRAM = """
import random
import torch
torch.manual_seed(0); random.seed(3)
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(8, 4)
for i in range(12):
    out = model(x)
    loss = out.pow(2).mean() if i != 9 else out.abs().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(round(loss.item(), 4))
"""


@pytest.fixture(scope="module")
def session():
    _, _, sess = run_terra(PROGRAM)
    return sess


def test_iterations_table(session):
    frame = session.to_pandas("iterations")
    assert list(frame.columns) == ["cell", "iteration", "mode", "wall_ms", "speedup", "blocks", "syncs",
                                   "fallbacks", "ops_traced", "ops_coexec", "time"]
    assert frame["iteration"].tolist() == list(range(1, 13))
    assert isinstance(frame["mode"].dtype, pd.CategoricalDtype)
    assert list(frame["mode"].cat.categories) == ["eager", "trace", "coexec", "fallback"]
    assert str(frame["time"].dtype).startswith("datetime64")
    assert frame["wall_ms"].dtype == "float64" and (frame["wall_ms"] > 0).all()
    assert frame["speedup"].isna().all(), "no eager baseline in this cell: no speedup"
    modes = dict(zip(frame["iteration"], frame["mode"].astype(str)))
    assert modes[1] == "trace" and modes[10] == "fallback", modes  # iteration 10 takes the abs() branch
    assert modes[11] == modes[12] == "coexec", "co-execution resumes at the next iteration"
    assert list(frame["mode"]).count("coexec") >= 8
    assert frame.loc[frame["iteration"] == 10, "fallbacks"].item() == 1


def test_events_table_names_the_fallback_and_its_line(session):
    events = session.to_pandas("events")
    assert list(events.columns) == ["cell", "iteration", "kind", "reason", "location", "duration_ms", "time"]
    assert list(events["kind"].cat.categories) == ["sync", "fallback", "compile", "choice", "error"]
    fallback = events[events["kind"] == "fallback"]
    assert len(fallback) == 1, "one new branch, one fallback: the rest of its iteration is traced"
    assert fallback["iteration"].item() == 10
    assert fallback["location"].item() == "<terra-cell-1>:10"
    assert "abs" in fallback["reason"].item()
    syncs = events[events["kind"] == "sync"]
    # only loss.item() needs a value (zero_grad sets None without reading p.grad); whether it
    # waited for the GraphRunner depends on timing
    assert (syncs["location"] == "<terra-cell-1>:14").all()
    assert syncs["reason"].str.contains("item: Python needs a value").all()
    assert (syncs["duration_ms"] >= 0).all()


def test_ops_table(session):
    ops = session.to_pandas("ops")
    assert list(ops.columns) == ["node", "op", "module", "location", "block", "kind", "count"]
    assert str(ops["block"].dtype) == "Int64"
    assert list(ops["kind"].cat.categories) == ["op", "feed", "fetch", "state"]
    linear = ops[ops["op"] == "linear"]
    assert len(linear) == 1 and linear["count"].item() == 12
    assert linear["location"].item() == "<terra-cell-1>:9"
    item = ops[ops["op"] == "item"]
    assert item["kind"].item() == "fetch" and pd.isna(item["block"].item())
    assert linear["block"].notna().item()


def test_blocks_table(session):
    blocks = session.to_pandas("blocks")
    assert list(blocks.columns) == ["block", "nodes", "backend", "compile_ms", "runs", "mean_ms"]
    assert (blocks["runs"] > 0).any() and blocks["nodes"].min() >= 1
    assert set(blocks["backend"].astype(str)) == {"eager"}
    assert blocks.loc[blocks["runs"] > 0, "mean_ms"].gt(0).all()


def test_tables_are_functions_of_the_log(session):
    for kind in ("iterations", "ops", "events", "blocks"):
        pd.testing.assert_frame_equal(session.to_pandas(kind), session.to_pandas(kind))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_round_trip(session, tmp_path, suffix):
    path = str(tmp_path / f"run{suffix}")
    written = session.export(path)
    assert written[0] == path and len(written) == 4
    for kind in ("iterations", "ops", "events", "blocks"):
        back = read_export(path, kind)
        original = session.to_pandas(kind)
        assert list(back.columns) == list(original.columns)
        assert len(back) == len(original)
    back = read_export(path, "iterations")
    assert back["mode"].astype(str).tolist() == session.to_pandas("iterations")["mode"].astype(str).tolist()
    assert back["wall_ms"].tolist() == pytest.approx(session.to_pandas("iterations")["wall_ms"].tolist())


def test_bad_table_and_bad_path():
    with pytest.raises(ValueError, match="choose one of"):
        terra_nb.Session().to_pandas("nodes")
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        terra_nb.Session().export("out.xlsx")


def test_plot_names_the_extra_when_matplotlib_is_missing(session, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"terra-nb\[plot\]"):
        terra_nb.plot("iterations", session)


def test_a_long_run_keeps_a_bounded_sync_log_and_counts_every_sync():
    """A ``.item()`` every iteration for a long run: the events table keeps the first syncs of the
    line, the iterations table and the graph count every one (the log must not grow without bound,
    nor the widget's events with it)."""
    from terra_nb.runtime.events import SYNCS_KEPT

    source = """
import torch
w = torch.ones(3)
for i in range(400):
    v = (w * (i % 7)).sum().item()  # the block that makes it is pending: Python waits
"""
    _, _, session = run_terra(source)
    syncs = session.to_pandas("events").query("kind == 'sync'")
    line = "<terra-cell-1>:5"
    assert (syncs["location"] == line).sum() == SYNCS_KEPT
    counted = int(session.to_pandas("iterations")["syncs"].sum())
    assert counted >= 390
    assert session.log.syncs_by_location()[line] == counted
    nodes = [n for n in session.to_json()["nodes"] if n["location"] == line]
    assert sum(n["syncs"] for n in nodes) == counted
