"""The event log: what the engine did, appended as it happens, read by every view.

The speedup table, the pandas export, the CLI summary and the graph explorer are functions of
this log alone. Two record types:

* :class:`Iteration` -- one pass of the dominant loop: its mode and wall time;
* :class:`Event` -- something worth a user's attention, with its reason and source line:
  ``sync`` (Python waited for the GraphRunner), ``fallback`` (co-execution switched to
  tracing), ``compile`` (a block got a compiled form), ``block`` (a new block was generated),
  ``error`` (an exception ended a cell), ``node`` (a
  node joined the TraceGraph: ``block`` holds its id, ``reason`` its op, ``location`` its line,
  ``backend`` its kind, ``nodes`` its module path) and ``counts`` (at a cell's end, ``nodes``
  holds ``(node id, count)`` pairs).

Block runs are counted, not logged one by one: ``block_runs[block] = [runs, total ms]`` (a
program runs thousands of blocks a second; an event each cost time and grew without bound). So
are the syncs at one line of one cell beyond its first ``SYNCS_KEPT`` (a ``loss.item()`` each
iteration, for hours): ``sync_counts[(cell, location, reason)] = [syncs, total ms]``; the
iterations' ``syncs`` count them all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

MODES = ("eager", "trace", "coexec", "fallback")
SYNCS_KEPT = 100  # sync events kept per cell and line; the rest are counted (EventLog.sync_counts)
EVENT_KINDS = ("sync", "fallback", "compile", "block", "error", "node", "counts")


@dataclass(slots=True)
class Iteration:
    """One iteration of a cell's dominant loop."""

    cell: int
    iteration: int
    mode: str
    wall_ms: float
    blocks: int
    syncs: int
    fallbacks: int
    ops_traced: int
    ops_coexec: int
    time: float = field(default_factory=time.time)


@dataclass(slots=True)
class Event:
    """A sync, fallback, compile, block or error, with its reason and location."""

    kind: str
    cell: int
    iteration: int
    reason: str = ""
    location: str = ""
    duration_ms: float = 0.0
    block: int = -1
    nodes: tuple = ()
    backend: str = ""
    time: float = field(default_factory=time.time)


class EventLog:
    """Append-only lists of iterations and events (appends are atomic under the GIL)."""

    def __init__(self) -> None:
        self.iterations: list[Iteration] = []
        self.events: list[Event] = []
        self.listeners: list = []  # called with each new Iteration (the live table)
        self.block_runs: dict[int, list] = {}  # block id -> [runs, total ms]
        self.sync_counts: dict[tuple, list] = {}  # (cell, location, reason) -> [syncs past SYNCS_KEPT, total ms]
        self._syncs_seen: dict[tuple, int] = {}  # (cell, location) -> sync events added

    def add_iteration(self, iteration: Iteration) -> None:
        self.iterations.append(iteration)
        for listener in list(self.listeners):
            listener(iteration)

    def add(self, event: Event) -> None:
        if event.kind == "sync":
            place = (event.cell, event.location)
            seen = self._syncs_seen.get(place, 0)
            if seen >= SYNCS_KEPT:
                acc = self.sync_counts.setdefault((event.cell, event.location, event.reason), [0, 0.0])
                acc[0] += 1
                acc[1] += event.duration_ms
                return
            self._syncs_seen[place] = seen + 1
        self.events.append(event)

    def syncs_by_location(self) -> dict[str, int]:
        """Every sync, kept or counted, by source line."""
        syncs: dict[str, int] = {}
        for event in self.events:
            if event.kind == "sync":
                syncs[event.location] = syncs.get(event.location, 0) + 1
        for (_cell, location, _reason), (n, _ms) in list(self.sync_counts.items()):
            syncs[location] = syncs.get(location, 0) + n
        return syncs

    def add_run(self, block: int, ms: float) -> None:
        acc = self.block_runs.get(block)
        if acc is None:
            self.block_runs[block] = [1, ms]
        else:
            acc[0] += 1
            acc[1] += ms

    def of_kind(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def clear(self) -> None:
        self.iterations.clear()
        self.events.clear()
        self.block_runs.clear()
        self.sync_counts.clear()
        self._syncs_seen.clear()
