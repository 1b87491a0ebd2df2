"""GraphExplorer: the state it syncs to the front end, from a real co-executed session."""

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import terra_nb
from terra_nb.widget import GraphExplorer
from terra_nb.widget.explorer import _records

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Iteration 7 takes the abs() branch the trace has not seen: a fallback at that line.
PROGRAM = """\
import torch
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(8, 4)
for i in range(10):
    out = model(x)
    loss = out.abs().mean() if i == 6 else out.pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    last = loss.item()
"""
BRANCH_LINE = PROGRAM.splitlines().index("    loss = out.abs().mean() if i == 6 else out.pow(2).mean()") + 1


@pytest.fixture(scope="module")
def session():
    sess = terra_nb.Session()
    sess.run_cell(PROGRAM, {"__name__": "__main__"})
    return sess


@pytest.fixture(scope="module")
def explorer(session):
    return GraphExplorer.from_session(session)


def test_synced_state_is_plain_json(explorer):
    state = {name: getattr(explorer, name) for name in ("graph", "iterations", "events", "selected")}
    json.dumps(state, allow_nan=False)  # NaN or a Timestamp would make the comm message fail
    for name in ("graph", "iterations", "events", "selected"):
        assert explorer.trait_metadata(name, "sync"), name
    assert explorer.selected is None


def test_graph_is_the_sessions_json(explorer, session):
    assert explorer.graph == session.to_json()
    kinds = {node["kind"] for node in explorer.graph["nodes"]}
    assert {"op", "fetch", "state"} <= kinds
    assert any(edge["kind"] == "flow" for edge in explorer.graph["edges"])


def test_iterations_records(explorer):
    its = explorer.iterations
    assert [it["iteration"] for it in its] == list(range(1, 11))
    assert its[0]["mode"] == "trace" and isinstance(its[0]["mode"], str)
    assert its[6]["mode"] == "fallback" and its[6]["fallbacks"] == 1, "iteration 7 took the abs() branch"
    assert all(it["speedup"] is None for it in its), "no eager baseline: NaN speedups become None"
    assert all(isinstance(it["wall_ms"], float) and it["wall_ms"] > 0 for it in its)
    assert pd.Timestamp(its[0]["time"]).tzinfo is not None, "times are ISO strings with their zone"


def test_fallback_location_is_in_events_and_on_a_node(explorer):
    location = f"<terra-cell-1>:{BRANCH_LINE}"
    fallbacks = [e for e in explorer.events if e["kind"] == "fallback" and e["location"] == location]
    assert len(fallbacks) == 1 and fallbacks[0]["iteration"] == 7
    assert "abs" in fallbacks[0]["reason"]
    flagged = [n for n in explorer.graph["nodes"] if n["location"] == location and n["fallbacks"] > 0]
    assert any(n["op"] == "abs" for n in flagged), flagged
    assert all(n["line"].strip().startswith("loss = out.abs()") for n in flagged)


def test_refresh_shows_later_cells(session):
    widget = GraphExplorer.from_session(session)
    seen = []
    widget.observe(lambda change: seen.append(change["name"]), names=["graph", "iterations", "events"])
    before = len(widget.iterations)
    session.run_cell("for j in range(4):\n    y = torch.relu(x - j)\n", {"torch": torch, "x": torch.ones(3)})
    widget.refresh(session)
    assert len(widget.iterations) > before
    assert {it["cell"] for it in widget.iterations} == {1, 2}
    assert any(n["op"] == "relu" for n in widget.graph["nodes"])
    assert {"graph", "iterations"} <= set(seen)
    json.dumps(widget.get_state(), allow_nan=False)


def test_records_make_any_frame_json_safe():
    frame = pd.DataFrame({
        "n": pd.Series([1, 2], dtype="int64"), "x": [1.5, math.nan], "s": pd.array(["a", pd.NA], dtype="string"),
        "c": pd.Categorical(["eager", None], categories=["eager", "coexec"]), "i": pd.array([3, None], dtype="Int64"),
        "t": pd.to_datetime([1.7e9, None], unit="s", utc=True), "f": np.float32([2.0, np.inf]),
    })
    rows = _records(frame)
    assert rows == [
        {"n": 1, "x": 1.5, "s": "a", "c": "eager", "i": 3, "t": "2023-11-14T22:13:20+00:00", "f": 2.0},
        {"n": 2, "x": None, "s": None, "c": None, "i": None, "t": None, "f": None},
    ]
    json.dumps(rows, allow_nan=False)


def test_bundle_is_shipped_and_loaded_as_esm():
    bundle = ROOT / "terra_nb" / "static" / "graph_explorer.js"
    assert bundle.is_file() and bundle.stat().st_size > 1000, "run: cd extension && npm ci && npm run build"
    assert "export" in bundle.read_text(encoding="utf-8")[-200:], "anywidget needs an ES module with a default export"
    assert (ROOT / "terra_nb" / "static" / "graph_explorer.css").is_file()
    assert GraphExplorer()._esm == bundle.read_text(encoding="utf-8")


def test_import_terra_nb_does_not_import_widget_libraries():
    code = ("import sys, terra_nb; "
            "bad = [m for m in ('anywidget', 'ipywidgets', 'terra_nb.widget') if m in sys.modules]; "
            "assert not bad, bad")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_fallback_stays_on_its_node_after_a_later_cell_runs_the_node():
    """A node the cells share takes the latest cell's line; the widget matched events to nodes by
    that line only, and the first cell's fallback was outlined on no node once the second ran."""
    session = terra_nb.Session()
    namespace: dict = {}
    session.run_cell("import torch\nx = torch.ones(3)\nfor i in range(6):\n    y = x * 2\n    if i == 4:\n        z = y + 1\n",
                     namespace)
    session.run_cell("for i in range(3):\n    y = x * 2\n    if i >= 0:\n        z = y + 1\n", namespace)
    widget = GraphExplorer.from_session(session)
    fallback = next(e for e in widget.events if e["kind"] == "fallback")
    assert fallback["location"] == "<terra-cell-1>:6"
    assert [n["op"] for n in widget.graph["nodes"] if n["fallbacks"] > 0] == ["add"]
