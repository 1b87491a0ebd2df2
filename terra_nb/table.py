"""The per-iteration speedup table: a rich-display view over a session's event log.

``IterationTable(session, cell)`` renders, for one cell, each iteration's mode, wall time,
speedup against the cell's median eager iteration, blocks, syncs and fallbacks, ending in the
one-line summary. It is HTML (a pandas Styler) in Jupyter, plain text elsewhere; the same data
is ``IterationTable.frame()``. ``live=True`` shows the latest rows and a status line while the
cell runs.
"""

from __future__ import annotations

COLUMNS = ["iteration", "mode", "wall_ms", "speedup", "blocks", "syncs", "fallbacks"]
_MODE_COLORS = {"eager": "#e2e8f0", "trace": "#fde68a", "coexec": "#bfdbfe", "fallback": "#fecaca"}


class IterationTable:
    """A view of one cell's iterations; re-rendered from the log on every display."""

    def __init__(self, session, cell: int, live: bool = False, max_rows: int = 60) -> None:
        self.session = session
        self.cell = cell
        self.live = live
        self.max_rows = max_rows

    def frame(self):
        frame = self.session.to_pandas("iterations")
        return frame[frame["cell"] == self.cell][COLUMNS].reset_index(drop=True)

    def status(self) -> str:
        compiling = sum(1 for block in self.session.executor.compiled.values() if block.state == "compiling")
        frame = self.frame()
        last = frame["mode"].iloc[-1] if len(frame) else "starting"
        text = f"running: iteration {len(frame) + 1}, last iteration {last}"
        if compiling:
            text += f"; {compiling} block{'s' if compiling != 1 else ''} compiling in the background"
        return text

    def _shown(self):
        frame = self.frame()
        limit = 30 if self.live else self.max_rows
        if len(frame) > limit:
            head = 0 if self.live else limit // 4
            frame = frame.iloc[list(range(head)) + list(range(len(frame) - (limit - head), len(frame)))]
        return frame

    def _footer(self) -> str:
        return self.status() if self.live else self.session.summary(self.cell)

    def _repr_html_(self) -> str:
        import html

        frame = self._shown()
        styler = (frame.style.hide(axis="index")
                  .format({"wall_ms": "{:.3f}", "speedup": lambda v: "" if v != v else f"{v:.2f}x"})
                  .map(lambda mode: f"background-color: {_MODE_COLORS.get(str(mode), '')}", subset=["mode"]))
        return f"{styler.to_html()}<p><code>{html.escape(self._footer())}</code></p>"

    def __repr__(self) -> str:
        frame = self._shown()
        text = frame.to_string(index=False, float_format=lambda v: f"{v:.3f}") if len(frame) else "(no iterations)"
        return f"{text}\n{self._footer()}"
