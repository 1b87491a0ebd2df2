"""``GraphExplorer``: an anywidget over a session's JSON export and tables.

The front end is ``extension/src/index.ts``, bundled into ``terra_nb/static/graph_explorer.js``
(``cd extension && npm ci && npm run build``). It receives plain JSON and never imports torch.
"""

from __future__ import annotations

import datetime
import math
import pathlib

import anywidget
import pandas as pd
import traitlets

_STATIC = pathlib.Path(__file__).resolve().parent.parent / "static"


class GraphExplorer(anywidget.AnyWidget):
    """The TraceGraph of a :class:`~terra_nb.Session` as an interactive graph.

    Shows op nodes grouped by block (nodes where Python forced a sync or a fallback outlined in
    red), a list of those places, and one bar per iteration coloured by mode. Clicking a node
    shows its source line and events, and sets :attr:`selected` to its id.

    Example::

        import terra_nb
        from terra_nb.widget import GraphExplorer

        session = terra_nb.Session()
        session.run_cell(source, namespace)
        explorer = GraphExplorer.from_session(session)
        explorer                       # display it (last expression of a cell)
        explorer.selected              # the op node clicked last, e.g. 11
        explorer.refresh(session)      # after running more cells
    """

    _esm = _STATIC / "graph_explorer.js"
    _css = _STATIC / "graph_explorer.css"

    graph = traitlets.Dict().tag(sync=True)
    """``Session.to_json()``: nodes, edges and blocks."""
    iterations = traitlets.List(traitlets.Dict()).tag(sync=True)
    """Records of ``session.to_pandas("iterations")``, JSON-safe (NaN as None, times as ISO strings)."""
    events = traitlets.List(traitlets.Dict()).tag(sync=True)
    """Records of ``session.to_pandas("events")``, JSON-safe."""
    selected = traitlets.Int(None, allow_none=True).tag(sync=True)
    """Id of the op node clicked last (None before a click, or after clicking a state/feed input)."""

    @classmethod
    def from_session(cls, session, **kwargs) -> GraphExplorer:
        """A widget showing ``session``'s graph, iterations and events as they are now."""
        return cls(**_session_state(session), **kwargs)

    def refresh(self, session) -> None:
        """Show ``session``'s current state (after more cells ran), keeping the widget on screen."""
        state = _session_state(session)
        with self.hold_sync():
            self.graph, self.iterations, self.events = state["graph"], state["iterations"], state["events"]


def _session_state(session) -> dict:
    return {
        "graph": _jsonable(session.to_json()),
        "iterations": _records(session.to_pandas("iterations")),
        "events": _records(session.to_pandas("events")),
    }


def _records(frame) -> list[dict]:
    """A DataFrame as a list of JSON-safe dicts: NaN/NA -> None, timestamps -> ISO strings,
    categoricals -> their labels, numpy scalars -> Python numbers."""
    return [_jsonable(row) for row in frame.astype(object).to_dict("records")]


def _jsonable(value):
    # Recursion covers session.to_json() too: it is JSON-able today, but a numpy int or a NaN
    # slipping into it later would break the comm silently (the front end would get nothing).
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if pd.api.types.is_scalar(value) and pd.isna(value):  # NaN, pd.NA, pd.NaT (NaT is also a datetime)
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None  # inf is not JSON either
    if isinstance(value, (datetime.datetime, datetime.date)):  # pandas.Timestamp is a datetime
        return value.isoformat()
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    return str(value)
