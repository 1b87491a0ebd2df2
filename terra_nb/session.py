"""Session: the live state of co-execution across cells, and the event log every view reads.

A :class:`Session` owns one TraceGraph (through its co-executor), one GraphRunner and one
:class:`~terra_nb.runtime.events.EventLog`. Cells run through :meth:`Session.run_cell`; scripts
through :meth:`Session.run_path`; functions through :func:`coexecute`. Because the graph lives
on, a later cell that runs the same operations co-executes at once.

Example::

    >>> import terra_nb
    >>> s = terra_nb.Session(backend="eager")
    >>> ns = {}
    >>> report = s.run_cell("import torch\\nx = torch.ones(3)\\nfor i in range(5):\\n    x = x * 2\\nprint(x)", ns)
    tensor([32., 32., 32.])
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import contextlib
import functools
import importlib.machinery
import inspect
import linecache
import os
import sys
import threading
import time
import types
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.utils._pytree import tree_map

from .runtime.coexec import CoExecutor
from .runtime.events import EventLog, Iteration
from .runtime.future import FutureTensor
from .trace import loops


@dataclass
class CellReport:
    """What one cell did: its iterations, and a one-line summary."""

    cell: int
    iterations: list[Iteration] = field(default_factory=list)
    value: object = None
    summary: str = ""

    def __repr__(self) -> str:
        return f"<CellReport cell={self.cell}: {self.summary}>"


class Session:
    """Co-execution state that lives across cells.

    Args:
        backend: ``eager`` (default; the FX graph replayed op by op), ``inductor``,
            ``cudagraphs`` or ``auto``.
        trace_iters: how many times a node is traced before the skeleton may defer it.
        runner: where blocks run: ``auto`` (default: a CPU block in the program's thread when the
            skeleton hands it over, a CUDA block on the GraphRunner's thread), ``thread`` (always
            the GraphRunner's thread) or ``inline`` (always the program's thread).
        always_coexec: with the ``auto`` backend on a CPU, a cell's loop is measured co-executed
            and eagerly, and the faster goes on (measured again from time to time; a ``choice``
            event says what was chosen and why). True co-executes whatever the measurement.
    """

    def __init__(self, backend: str = "eager", trace_iters: int = 1, runner: str = "auto",
                 always_coexec: bool = False) -> None:
        self.log = EventLog()
        self.executor = CoExecutor(self.log, backend=backend, trace_iters=trace_iters, runner=runner,
                                   always_coexec=always_coexec)
        self.cells = 0
        # The GraphRunner's thread holds its runner: a session dropped, or reset, left it running
        # (a thread per Session() and per %terra reset, for the life of the process).
        self._runner = [self.executor.runner]
        weakref.finalize(self, _stop_runner, self._runner)

    # -- running -------------------------------------------------------------------------------

    @property
    def graph(self):
        """The TraceGraph (read-only use: the views go through the event log and exports)."""
        return self.executor.graph

    @property
    def backend(self) -> str:
        return self.executor.backend

    def set_backend(self, name: str) -> None:
        from .runtime.backends import check_backend

        backend = check_backend(name)
        if backend != self.executor.backend:  # (the same one named again keeps its compiled blocks)
            self.executor.backend = backend
            self.executor.compiled.clear()

    def run_cell(self, source: str, namespace: dict | None = None, mode: str = "auto",
                 filename: str | None = None, baseline: int = 0, top_level_await: bool = True) -> CellReport:
        """Run ``source`` in ``namespace`` under co-execution (``mode``: auto, trace or eager).

        ``baseline`` iterations run eagerly first: the table's speedups are against the median of the
        cell's eager iterations (these, and auto's).
        ``await`` at the cell's top level runs as in a plain IPython cell (``top_level_await``;
        a script's, as ``python`` does, is a SyntaxError).

        The value of a final expression, as in a notebook cell, is returned as ``report.value``.
        Exceptions propagate as eager execution would raise them, after every operation that
        ran before them has taken effect.
        """
        __tracebackhide__ = True
        self.cells += 1
        cell = self.cells
        if filename is None:  # our own name: (re)register its source; IPython registers its cells itself
            filename = f"<terra-cell-{cell}>"
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        elif filename not in linecache.cache and not os.path.exists(filename):
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        body, last = _split_last_expression(source, filename, top_level_await)
        namespace = namespace if namespace is not None else {"__name__": "__main__"}
        executor = self.executor
        namespace[loops.TICK] = executor.tick  # the cell's loops call them (trace/loops.py)
        namespace[loops.SKIP] = executor.skip
        executor.begin_cell(cell)
        value = None
        running = _running()
        running.append(self)  # (a function decorated with @coexecute and no session joins this one)
        try:
            with executor.active(body, mode, baseline, last):
                _finish(eval(body, namespace))  # (exec's, but a cell with top-level await gives its coroutine)
                if last is not None:
                    value = _finish(eval(last, namespace))
        except BaseException as exc:
            self._log_error(exc, cell, filename)
            raise
        finally:
            running.pop()
            executor.end_cell()
            _make_real(namespace)
        value = _real_value(value)
        iterations = [it for it in self.log.iterations if it.cell == cell]
        return CellReport(cell, iterations, value, self.summary(cell))

    def run_path(self, path: str, argv: list[str] | None = None, mode: str = "auto", baseline: int = 0) -> CellReport:
        """Run a script as ``__main__`` (as ``python path`` would), co-executed wherever its loops are."""
        with open(path, encoding="utf-8") as f:
            source = f.read()
        with _as_main(path, argv) as module:
            return self.run_cell(source, module.__dict__, mode=mode, filename=module.__file__, baseline=baseline,
                                 top_level_await=False)

    def call(self, fn, *args, **kwargs):
        """Call ``fn`` as one iteration (what ``@coexecute`` does). Inside a cell this session runs,
        the call is an iteration of that cell."""
        code = _code_of(fn)
        executor = self.executor
        if executor._depth:
            executor.mark_iteration()
            return fn(*args, **kwargs)
        self.cells += 1
        cell = self.cells
        executor.begin_cell(cell)
        executor.mark_iteration()
        running = _running()
        running.append(self)
        try:
            with executor.active(code):
                out = fn(*args, **kwargs)
        except BaseException as exc:
            self._log_error(exc, cell, code.co_filename)
            raise
        finally:
            running.pop()
            executor.end_cell()
        return _real_value(out)

    def _log_error(self, exc: BaseException, cell: int, filename: str) -> None:
        """An error event for the exception a cell (or a call) ends with, at the user's line in
        ``filename``; not for one the engine logged already, nor for ``SystemExit`` (a script's
        ``sys.exit(0)`` is no error)."""
        from .runtime.events import Event
        from .trace.location import SourceLine

        if getattr(exc, "_tn_logged", False) or isinstance(exc, SystemExit):
            return
        where = _user_frame_line(exc.__traceback__, filename)
        self.log.add(Event("error", cell, self.executor.iter_index, f"{type(exc).__name__}: {exc}",
                           str(SourceLine(filename, where, "")) if where else ""))

    def trace(self, fn, *args, **kwargs):
        """Call ``fn`` once, traced, and return its :class:`~terra_nb.runtime.replay.Trace`.

        ``trace.replay()`` then runs the same iteration again as blocks, with no Python between
        them (graph-only replay).
        """
        from .runtime.replay import Trace

        executor = self.executor
        records: list = []
        self.cells += 1
        executor.begin_cell(self.cells)
        executor.recording = records
        try:
            with executor.active(fn.__code__, mode="trace"):
                fn(*args, **kwargs)
        finally:
            executor.recording = None
            executor.end_cell()
        return Trace(records, backend=executor.backend)

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Wait until every block whose compilation started has a compiled (or eager) form."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for block in list(self.executor.compiled.values()):
            if block.state in ("compiling", "measure", "compiled") or block.done.is_set():
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not block.done.wait(left):
                    return False
        return True

    def retire_cell(self, cell: int) -> int:
        """Retire the nodes an earlier run ``cell`` created that nothing has run since.

        The magic calls this when a notebook cell is edited and run again: the nodes of the
        lines that changed are stale. Returns how many nodes were retired.
        """
        created = {e.block for e in self.log.events if e.kind == "node" and e.cell == cell}
        counts_then = next((dict((nid, c) for nid, c, _k in e.nodes) for e in self.log.events
                            if e.kind == "counts" and e.cell == cell), {})
        stale = [n for n in self.graph.nodes[1:] if n.id in created and n.kind != "retired"
                 and n.count == counts_then.get(n.id, n.count)]
        self.graph.retire(stale)
        self.executor.compiled.clear()
        return len(stale)

    def sync(self) -> None:
        """Wait until every deferred operation has run."""
        self.executor.materialize()

    def reset(self) -> None:
        """Forget the graph, the compiled blocks and the log (``%terra reset``)."""
        self.sync()
        backend, trace_iters = self.executor.backend, self.executor.trace_iters
        self.log.clear()
        self.executor.runner.stop()
        self.executor = CoExecutor(self.log, backend=backend, trace_iters=trace_iters,
                                   runner=self.executor.runner.placement, always_coexec=self.executor.always_coexec)
        self._runner[0] = self.executor.runner

    # -- views ---------------------------------------------------------------------------------

    def to_json(self) -> dict:
        """The TraceGraph as a JSON-able dict (see :mod:`terra_nb.graph.export`)."""
        from .graph.export import graph_to_json

        return graph_to_json(self.graph, self.log)

    def to_dot(self):
        """The TraceGraph as a ``graphviz.Digraph`` (rendering it to SVG needs the ``dot`` binary)."""
        from .graph.export import graph_to_dot

        return graph_to_dot(self.graph, self.log)

    def to_pandas(self, kind: str = "iterations"):
        """A tidy DataFrame of the session: ``iterations``, ``ops``, ``events`` or ``blocks``."""
        from .frames import to_pandas

        return to_pandas(self, kind)

    def export(self, path: str) -> list[str]:
        """Write the session's tables to ``path`` (``.csv`` or ``.parquet``); returns the files written."""
        from .frames import export

        return export(self, path)

    def summary(self, cell: int | None = None) -> str:
        cell = self.cells if cell is None else cell
        return summarize([it for it in self.log.iterations if it.cell == cell], self.log.of_kind("fallback"), cell,
                         [e for e in self.log.of_kind("choice") if e.cell == cell])


def _stop_runner(holder: list) -> None:
    holder[0].stop()


def summarize(iterations: list[Iteration], fallbacks: list, cell: int, choices: Sequence = ()) -> str:
    """One line: the steady-state speedup over eager, auto's last choice and where fallbacks happened."""
    if not iterations:
        return "no iterations"
    from .frames import speedups

    ratios = speedups(iterations)
    coexec = [r for it, r in zip(iterations, ratios) if it.mode == "coexec" and r == r]
    falls = [e for e in fallbacks if e.cell == cell]
    text = f"{len(iterations)} iterations"
    if coexec:
        coexec.sort()
        text = f"steady state {coexec[len(coexec) // 2]:.2f}x eager over {len(coexec)} co-executed iterations"
        if choices:
            text += f"; auto: {choices[-1].reason}"
    else:
        modes = sorted({it.mode for it in iterations})
        text += f" ({', '.join(modes)})"
    if falls:
        places = sorted({e.location for e in falls if e.location})
        text += f"; {len(falls)} fallback{'s' if len(falls) != 1 else ''}"
        if places:
            text += f" at {', '.join(places[:3])} ({falls[0].reason})"
    return text


_default: Session | None = None


def session() -> Session:
    """The process-wide session (one per kernel), created on first use.

    Its backend is ``auto``, as a user running ``%%terra`` wants it: compiled blocks on a GPU, and on
    a CPU whichever of co-execution and eager measures faster (``%terra backend eager`` co-executes
    with the oracle's backend).
    """
    global _default
    if _default is None:
        _default = Session(backend="auto")
    return _default


def coexecute(fn=None, *, session_: Session | None = None):
    """Decorator: each call of ``fn`` is one co-executed iteration, of ``session_`` (or the
    session running the cell it is called from, else the process's default session).

    Example::

        >>> @coexecute
        ... def step(x):
        ...     return (x * 2).sum().item()

    ``@coexecute(session)`` names the session.
    """
    if isinstance(fn, Session):
        return functools.partial(coexecute, session_=fn)
    if fn is None:
        return functools.partial(coexecute, session_=session_)
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn) or inspect.iscoroutinefunction(fn):
        kind = "coroutine" if inspect.iscoroutinefunction(fn) else "generator"
        raise TypeError(f"coexecute: {fn.__qualname__} is a {kind} function: a call only makes the {kind}, "
                        "and its body would run later, outside co-execution; decorate the function "
                        "that consumes it, or a function its body calls")
    _code_of(fn)  # (a callable with no Python code: said here, where it is decorated)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        running = _running()
        return (session_ or (running[-1] if running else session())).call(fn, *args, **kwargs)

    return wrapper


_RUNNING = threading.local()


def _running() -> list:
    """The sessions running a cell or a call in this thread, innermost last."""
    stack = getattr(_RUNNING, "stack", None)
    if stack is None:
        stack = _RUNNING.stack = []
    return stack


def _code_of(fn) -> types.CodeType:
    """The Python code a call of ``fn`` runs (the root of its co-execution): a function's, a
    partial's function's, a method's, a module's ``forward``, a callable object's ``__call__``."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    if isinstance(target, (staticmethod, classmethod)):
        target = target.__func__
    if isinstance(target, torch.nn.Module):
        target = type(target).forward
    code = getattr(target, "__code__", None)
    if code is None and callable(target) and not isinstance(target, type):
        code = getattr(type(target).__call__, "__code__", None)
    if not isinstance(code, types.CodeType):
        module, name = getattr(fn, "__module__", None), getattr(fn, "__name__", None)
        named = f"{module}.{name}" if module and name else repr(fn)
        raise TypeError(f"terra_nb co-executes Python code, and {named} has none (a builtin or compiled "
                        "function): call it from a Python function and co-execute that")
    return code


def script_filename(path: str) -> str:
    """The name ``python path`` gives a script, its ``__file__`` and its code's filename: absolute
    (since Python 3.11), the path as typed after the working directory (``./a.py`` is ``/cwd/./a.py``)."""
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def run_script(path: str, argv: list[str] | None = None) -> None:
    """Run a script as ``__main__`` as ``python path`` does, with no co-execution (``terra-nb run --eager``)."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    with _as_main(path, argv) as module:
        # (dont_inherit: this module's ``from __future__ import annotations`` is not the script's)
        exec(compile(source, module.__file__, "exec", dont_inherit=True), module.__dict__)


@contextlib.contextmanager
def _as_main(path: str, argv: list[str] | None):
    """A module that is ``__main__`` while the script runs in it, with what ``python path`` gives:
    ``sys.argv[0]`` as typed, the script's folder first on ``sys.path``, and the module's globals."""
    filename = script_filename(path)
    old_argv = sys.argv
    sys.argv = [path, *(argv or [])]
    # (Python resolves symbolic links for it: a linked script imports beside its target)
    folder = os.path.dirname(os.path.realpath(filename))
    sys.path.insert(0, folder)
    # The script's namespace is the __main__ module while it runs, as under ``python path``:
    # pickle finds the script's classes there (a DataLoader's spawned workers need them), and a
    # spawned process runs the script, not terra-nb, as its main.
    module = types.ModuleType("__main__")
    module.__dict__.update(__file__=filename, __cached__=None, __annotations__={}, __builtins__=builtins,
                           __loader__=importlib.machinery.SourceFileLoader("__main__", filename))
    old_main = sys.modules.get("__main__")
    sys.modules["__main__"] = module
    try:
        yield module
    finally:
        if old_main is not None:
            sys.modules["__main__"] = old_main
        else:
            sys.modules.pop("__main__", None)
        sys.argv = old_argv
        if sys.path and sys.path[0] is folder:  # (by identity: where the folder was first already, it stays)
            sys.path.pop(0)


def _user_frame_line(tb, filename: str) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _split_last_expression(source: str, filename: str, top_level_await: bool):
    # ``await`` at a cell's top level, as IPython allows it in a plain cell: the code is then a
    # coroutine's (run by _finish)
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if top_level_await else 0
    tree = loops.instrument(ast.parse(source, filename), filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        statement = tree.body.pop()
        assert isinstance(statement, ast.Expr)
        expr = ast.Expression(statement.value)
        last = compile(expr, filename, "eval", flags=flags, dont_inherit=True)
    # (dont_inherit: this module's ``from __future__ import annotations`` is not the program's)
    return compile(tree, filename, "exec", flags=flags, dont_inherit=True), last


def _finish(value):
    """``value``; where it is the coroutine of a cell with top-level ``await``, what it returns,
    run to its end in this thread (the engine's mode is this thread's), on an event loop of its own.

    A Jupyter kernel runs its cells from its own event loop, which a cell magic cannot await: that
    loop waits while the cell's runs, as it waits for any cell that does not await, and is the
    running loop again after. (A future of the kernel's loop, awaited in the cell, cannot complete
    while its loop waits: await such things in a plain cell.)"""
    if not inspect.iscoroutine(value):
        return value
    outer = asyncio._get_running_loop()
    loop = asyncio.new_event_loop()
    asyncio._set_running_loop(None)
    try:
        return loop.run_until_complete(value)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            asyncio._set_running_loop(outer)


def _real_value(x):
    """``x`` with the futures in it (in its lists, tuples and dicts, any pytree) made real."""
    if type(x) is FutureTensor:
        return x.value()
    if type(x) in (list, tuple):
        return type(x)(_real_value(v) for v in x)
    if type(x) is dict:
        return {k: _real_value(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, dict)):
        return tree_map(lambda v: v.value() if type(v) is FutureTensor else v, x)
    return x


def _make_real(namespace: dict) -> None:
    """Replace futures the cell left in its namespace (and in its lists and dicts) by real tensors."""
    for name, value in list(namespace.items()):
        if type(value) is FutureTensor:
            try:
                namespace[name] = value.value()
            except RuntimeError:
                pass
        elif type(value) is list:
            for i, v in enumerate(value):
                if type(v) is FutureTensor and v._tn_val is not None:
                    value[i] = v._tn_val
        elif type(value) is dict:
            for k, v in value.items():
                if type(v) is FutureTensor and v._tn_val is not None:
                    value[k] = v._tn_val


__all__ = ["Session", "CellReport", "session", "coexecute"]
