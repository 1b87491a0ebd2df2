"""The per-iteration speedup table: a rich-display view over a session's event log.

``IterationTable(session, cell)`` renders, for one cell, each iteration's mode, wall time,
speedup against the cell's median eager iteration, blocks, syncs and fallbacks, ending in the
one-line summary. It is HTML in Jupyter, plain text elsewhere; the same data is
``IterationTable.frame()`` (pandas). ``live=True`` shows the latest rows and a status line while
the cell runs.

Rendering reads the log's records, not pandas: pandas enters ``warnings.catch_warnings`` on
many calls, which changes the warning filters, and every module's record of the warnings it has
shown is then forgotten. A live table re-rendered during a loop made a warning the loop raises
once per line show again after each update, as a plain cell's never does.
"""

from __future__ import annotations

import html
import math

from .frames import speedups

COLUMNS = ["iteration", "mode", "wall_ms", "speedup", "blocks", "syncs", "fallbacks"]
_MODE_COLORS = {"eager": "#e2e8f0", "trace": "#fde68a", "coexec": "#bfdbfe", "fallback": "#fecaca"}


class IterationTable:
    """A view of one cell's iterations; re-rendered from the log on every display."""

    def __init__(self, session, cell: int, live: bool = False, max_rows: int = 60, head: int = 15) -> None:
        self.session = session
        self.cell = cell
        self.live = live
        self.max_rows = max_rows  # a longer cell shows its first ``head`` rows and its latest ones
        self.head = head

    def frame(self):
        frame = self.session.to_pandas("iterations")
        return frame[frame["cell"] == self.cell][COLUMNS].reset_index(drop=True)

    def _rows(self) -> list[tuple]:
        """The cell's iterations, one tuple of COLUMNS each."""
        its = [it for it in self.session.log.iterations if it.cell == self.cell]
        return [(it.iteration, it.mode, it.wall_ms, ratio, it.blocks, it.syncs, it.fallbacks)
                for it, ratio in zip(its, speedups(its))]

    def status(self, rows: list[tuple] | None = None) -> str:
        rows = self._rows() if rows is None else rows
        compiling = sum(1 for block in self.session.executor.compiled.values() if block.state == "compiling")
        last = rows[-1][1] if rows else "starting"
        text = f"running: iteration {len(rows) + 1}, last iteration {last}"
        if compiling:
            text += f"; {compiling} block{'s' if compiling != 1 else ''} compiling in the background"
        return text

    def _footer(self, rows: list[tuple]) -> str:
        return self.status(rows) if self.live else self.session.summary(self.cell)

    def _shown(self, rows: list[tuple]) -> list[tuple | int]:
        """The rows shown: the first and the latest of a long cell, the number left out between
        them in their place."""
        limit = 30 if self.live else self.max_rows
        if len(rows) <= limit:
            return list(rows)
        head = 0 if self.live else self.head
        return rows[:head] + [len(rows) - limit] + rows[len(rows) - (limit - head):]

    def _repr_html_(self) -> str:
        rows = self._rows()
        header = "".join(f"<th>{name}</th>" for name in COLUMNS)
        body = []
        for row in self._shown(rows):
            if isinstance(row, int):
                body.append(f'<tr><td colspan="{len(COLUMNS)}">&hellip; {_left_out(row)}</td></tr>')
                continue
            cells = []
            for name, value in zip(COLUMNS, row):
                style = f' style="background-color: {_MODE_COLORS[value]}"' if name == "mode" and value in _MODE_COLORS else ""
                cells.append(f"<td{style}>{html.escape(_cell(name, value, html=True))}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        return (f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"
                f"<p><code>{html.escape(self._footer(rows))}</code></p>")

    def __repr__(self) -> str:
        rows = self._rows()
        return f"{_text(self._shown(rows))}\n{self._footer(rows)}"

    def text(self) -> str:
        """The rows as text, a column each, under a header line (the footer apart)."""
        return _text(self._shown(self._rows()))


def _text(shown: list[tuple | int]) -> str:
    if not shown:
        return "(no iterations)"
    cells = [COLUMNS] + [[_cell(name, value) for name, value in zip(COLUMNS, row)]
                         for row in shown if not isinstance(row, int)]
    widths = [max(len(line[k]) for line in cells) for k in range(len(COLUMNS))]
    lines = [" ".join(value.rjust(width) for value, width in zip(line, widths)) for line in cells]
    for at, row in enumerate(shown, 1):
        if isinstance(row, int):
            lines.insert(at, f"... {_left_out(row)}")
    return "\n".join(lines)


def _left_out(count: int) -> str:
    return f"{count} iteration{'s' if count != 1 else ''} not shown"


def _cell(name: str, value, html: bool = False) -> str:
    if name == "wall_ms":
        return f"{value:.3f}"
    if name == "speedup":
        if math.isnan(value):
            return "" if html else "NaN"
        return f"{value:.2f}x" if html else f"{value:.3f}"
    return str(value)
