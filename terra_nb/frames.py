"""Session traces to pandas: tidy tables that are pure functions of the event log.

``session.to_pandas(kind)`` for ``kind`` in:

=========== ==========================================================================================
iterations  cell, iteration (int64); mode (category: eager/trace/coexec/fallback); wall_ms, speedup
            (float64; speedup against the median eager iteration of the cell, NaN without one);
            blocks, syncs, fallbacks, ops_traced, ops_coexec (int64); time (datetime64[ns, UTC])
ops         node (int64); op, module, location (string; location is ``file:line`` or
            ``<terra-cell-N>:line``); block (Int64, null for nodes that run synchronously);
            kind (category: op/feed/fetch/state, as in the JSON export); count (int64)
events      cell, iteration (int64); kind (category: sync/fallback/compile/choice/error); reason, location
            (string); duration_ms (float64); time (datetime64[ns, UTC]). Syncs: the first
            ``SYNCS_KEPT`` (100) of each line of each cell; ``syncs`` of ``iterations`` counts all
blocks      block (int64); nodes (int64: how many); backend (category); compile_ms, mean_ms
            (float64); runs (int64)
=========== ==========================================================================================

``export(path)`` writes all four: ``iterations`` to ``path`` itself and the others beside it as
``<stem>.<kind><suffix>`` (``run.csv`` -> ``run.csv``, ``run.ops.csv``, ``run.events.csv``,
``run.blocks.csv``). The suffix chooses the format: ``.csv`` or ``.parquet`` (needs pyarrow).
"""

from __future__ import annotations

import math
import os

from .graph.export import EXPORT_KIND
from .runtime.events import MODES, EventLog

KINDS = ("iterations", "ops", "events", "blocks")


def speedups(iterations: list) -> list[float]:
    """Each iteration's speedup against the median eager iteration of its cell (NaN without one)."""
    eager = sorted(it.wall_ms for it in iterations if it.mode == "eager")
    if not eager:
        return [math.nan] * len(iterations)
    base = eager[len(eager) // 2]
    return [base / it.wall_ms if it.wall_ms > 0 else math.nan for it in iterations]


def to_pandas(session, kind: str = "iterations"):
    if kind not in KINDS:
        raise ValueError(f"unknown table {kind!r}: choose one of {', '.join(KINDS)}")
    return {"iterations": iterations_frame, "ops": ops_frame, "events": events_frame,
            "blocks": blocks_frame}[kind](session.log)


def iterations_frame(log: EventLog):
    import pandas as pd

    rows = []
    by_cell: dict[int, list] = {}
    for it in log.iterations:
        by_cell.setdefault(it.cell, []).append(it)
    for its in by_cell.values():
        for it, ratio in zip(its, speedups(its)):
            rows.append((it.cell, it.iteration, it.mode, it.wall_ms, ratio, it.blocks, it.syncs, it.fallbacks,
                         it.ops_traced, it.ops_coexec, it.time))
    columns = ["cell", "iteration", "mode", "wall_ms", "speedup", "blocks", "syncs", "fallbacks",
               "ops_traced", "ops_coexec", "time"]
    frame = pd.DataFrame(rows, columns=columns)
    frame = frame.astype({c: "int64" for c in ("cell", "iteration", "blocks", "syncs", "fallbacks",
                                                "ops_traced", "ops_coexec")})
    frame = frame.astype({"wall_ms": "float64", "speedup": "float64"})
    frame["mode"] = pd.Categorical(frame["mode"], categories=list(MODES))
    frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
    return frame


def ops_frame(log: EventLog):
    import pandas as pd

    nodes = {e.block: e for e in log.events if e.kind == "node"}
    counts: dict[int, tuple] = {}
    for event in log.events:
        if event.kind == "counts":  # (a node's count only grows: the @coexecute calls' event may come first)
            for nid, count, kind in event.nodes:
                if count >= counts.get(nid, (0,))[0]:
                    counts[nid] = (count, kind)
    block_of: dict[int, int] = {}
    for event in log.events:
        if event.kind == "block":
            for nid in event.nodes:
                block_of.setdefault(nid, event.block)
    rows = []
    for nid, event in sorted(nodes.items()):
        count, kind = counts.get(nid, (0, event.backend))
        rows.append((nid, event.reason, event.nodes[0] if event.nodes else "", event.location,
                     block_of.get(nid), EXPORT_KIND.get(kind, "op"), count))
    frame = pd.DataFrame(rows, columns=["node", "op", "module", "location", "block", "kind", "count"])
    frame = frame.astype({"node": "int64", "op": "string", "module": "string", "location": "string",
                          "block": "Int64", "count": "int64"})
    frame["kind"] = pd.Categorical(frame["kind"], categories=["op", "feed", "fetch", "state"])
    return frame


def events_frame(log: EventLog):
    import pandas as pd

    kinds = ["sync", "fallback", "compile", "choice", "error"]
    rows = [(e.cell, e.iteration, e.kind, e.reason, e.location, e.duration_ms, e.time)
            for e in log.events if e.kind in kinds]
    frame = pd.DataFrame(rows, columns=["cell", "iteration", "kind", "reason", "location", "duration_ms", "time"])
    frame = frame.astype({"cell": "int64", "iteration": "int64", "reason": "string", "location": "string",
                          "duration_ms": "float64"})
    frame["kind"] = pd.Categorical(frame["kind"], categories=kinds)
    frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
    return frame


def blocks_frame(log: EventLog):
    import pandas as pd

    blocks: dict[int, dict] = {}
    for e in log.events:
        if e.kind == "block":
            blocks[e.block] = {"block": e.block, "nodes": len(e.nodes), "backend": e.backend,
                               "compile_ms": 0.0, "runs": 0, "total": 0.0}
        elif e.kind == "compile" and e.block in blocks:
            blocks[e.block]["compile_ms"] = e.duration_ms
    for block, (runs, total) in list(log.block_runs.items()):  # (the runner thread may add meanwhile)
        if block in blocks:
            blocks[block]["runs"] += runs
            blocks[block]["total"] += total
    rows = [(b["block"], b["nodes"], b["backend"], b["compile_ms"], b["runs"],
             b["total"] / b["runs"] if b["runs"] else math.nan) for b in blocks.values()]
    frame = pd.DataFrame(rows, columns=["block", "nodes", "backend", "compile_ms", "runs", "mean_ms"])
    frame = frame.astype({"block": "int64", "nodes": "int64", "compile_ms": "float64", "runs": "int64",
                          "mean_ms": "float64"})
    frame["backend"] = pd.Categorical(frame["backend"], categories=["eager", "inductor", "cudagraphs", "auto"])
    return frame


def export_problem(path: str) -> str | None:
    """Why the tables cannot be written to ``path``, before anything runs; None where they can."""
    suffix = os.path.splitext(path)[1]
    if suffix not in (".csv", ".parquet"):
        return f"cannot export to {path!r}: the file name must end in .csv or .parquet"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"cannot export to {path!r}: no folder {folder!r}; create it, or export to a path in an existing folder"
    if not os.access(folder, os.W_OK):
        return f"cannot export to {path!r}: the folder {folder!r} is not writable; export to another path"
    if suffix == ".parquet":
        import importlib.util

        if importlib.util.find_spec("pyarrow") is None:
            return "writing parquet needs pyarrow: pip install 'terra-nb[parquet]', or export to a .csv path"
    return None


def export(session, path: str) -> list[str]:
    """Write every table; returns the paths written. See the module docstring for the layout."""
    problem = export_problem(path)
    if problem:
        raise ValueError(problem)
    stem, suffix = os.path.splitext(path)
    written = []
    for kind in KINDS:
        target = path if kind == "iterations" else f"{stem}.{kind}{suffix}"
        frame = to_pandas(session, kind)
        if suffix == ".csv":
            frame.to_csv(target, index=False)
        else:  # (export_problem found pyarrow)
            frame.to_parquet(target, index=False)
        written.append(target)
    return written


def read_export(path: str, kind: str = "iterations"):
    """Read back a table written by :func:`export`, with its dtypes."""
    import pandas as pd

    stem, suffix = os.path.splitext(path)
    target = path if kind == "iterations" else f"{stem}.{kind}{suffix}"
    if suffix == ".parquet":
        return pd.read_parquet(target)
    frame = pd.read_csv(target, keep_default_na=True)
    if "time" in frame:
        frame["time"] = pd.to_datetime(frame["time"], utc=True)
    for column, categories in (("mode", list(MODES)), ("kind", None), ("backend", None)):
        if column in frame:
            frame[column] = pd.Categorical(frame[column], categories=categories)
    for column in ("op", "module", "location", "reason"):
        if column in frame:
            frame[column] = frame[column].astype("string").fillna("")
    if "block" in frame and kind == "ops":
        frame["block"] = frame["block"].astype("Int64")
    return frame


def plot(session, kind: str = "iterations"):
    """Per-iteration wall time coloured by mode, or mean block times; returns the matplotlib Axes."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("terra_nb.plot needs matplotlib: pip install 'terra-nb[plot]'") from exc
    colors = {"eager": "#64748b", "trace": "#f59e0b", "coexec": "#2563eb", "fallback": "#dc2626"}
    fig, ax = plt.subplots(figsize=(8, 3))
    if kind == "iterations":
        frame = to_pandas(session, "iterations")
        x = range(len(frame))
        ax.bar(x, frame["wall_ms"], color=[colors[m] for m in frame["mode"].astype(str)])
        ax.set_xlabel("iteration")
        ax.set_ylabel("wall ms")
        for mode, color in colors.items():
            ax.bar([], [], color=color, label=mode)
        ax.legend()
    elif kind == "blocks":
        frame = to_pandas(session, "blocks")
        ax.bar(frame["block"].astype(str), frame["mean_ms"], color="#2563eb")
        ax.set_xlabel("block")
        ax.set_ylabel("mean ms per run")
    else:
        raise ValueError(f"unknown plot {kind!r}: use 'iterations' or 'blocks'")
    fig.tight_layout()
    return ax
