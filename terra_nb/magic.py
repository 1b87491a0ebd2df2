"""The IPython extension: ``%%terra`` runs a cell co-executed; ``%terra`` inspects the session.

A thin shell over :class:`terra_nb.Session` (one per kernel, ``terra_nb.session()``)::

    %load_ext terra_nb

    %%terra --baseline 5
    for x, y in batches:
        ...

    %terra status | graph | table | export run.csv | reset | backend inductor
"""

from __future__ import annotations

import keyword
import time

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

try:
    from IPython.core.magic import output_can_be_silenced
except ImportError:  # IPython < 8.8: there a closing ``;`` silences no cell magic's value (%%time's neither)
    def output_can_be_silenced(magic_func):  # type: ignore[misc]
        return magic_func

from .runtime.backends import BACKENDS, BackendError, check_backend
from .session import session
from .table import IterationTable
from .trace.location import drop_engine_frames

_LINE_COMMANDS = ("status", "graph", "table", "export PATH", "reset", "backend NAME")
_BARE_COMMANDS = ("status", "graph", "table", "reset")  # the commands that take no arguments


def _check_cell_options(args) -> None:
    """Refuse the ``%%terra`` options that cannot be applied, before the cell applies any of them."""
    if args.trace is not None and args.trace < 1:
        raise UsageError(f"--trace {args.trace}: a node is traced at least once; give 1 or more")
    if args.baseline < 0:
        raise UsageError(f"--baseline {args.baseline}: give 0 (no eager baseline) or more iterations")
    if args.output is not None and not (args.output.isidentifier() and not keyword.iskeyword(args.output)):
        raise UsageError(f"-o {args.output}: not a Python name to store the cell's report in; give one such as report")
    if args.backend:
        try:
            check_backend(args.backend)
        except BackendError as exc:  # (cudagraphs with no CUDA: said as %terra backend says it)
            raise UsageError(str(exc)) from exc


@magics_class
class TerraMagics(Magics):
    """``%%terra`` and ``%terra``."""

    def __init__(self, shell=None, **kwargs) -> None:
        super().__init__(shell=shell, **kwargs)
        self._cell_runs: dict[str, int] = {}  # notebook cell id -> the session cell that ran it last

    @magic_arguments()
    @argument("--backend", choices=BACKENDS, default=None, help="how blocks run, for this cell and the later ones (as %%terra backend NAME): "
                   "auto (the session's default), eager, inductor, cudagraphs")
    @argument("--baseline", type=int, default=0, metavar="N",
              help="run N iterations plain eager first (once the loop is found): with auto's eager ones, the speedup denominator")
    @argument("--always-coexec", action="store_true",
              help="with the auto backend on a CPU: co-execute this cell even where eager measured faster")
    @argument("--trace", type=int, default=None, metavar="N",
              help="times each node is traced before it is deferred, for this cell only (the session's count after it)")
    @argument("--device", default=None, choices=("cpu", "cuda"), help="default device for tensors the cell creates")
    @argument("--no-widget", action="store_true", help="do not show the graph explorer after the cell")
    @argument("--quiet", action="store_true", help="show nothing (use -o to keep the report)")
    @argument("-o", dest="output", default=None, metavar="NAME", help="store the cell's CellReport in NAME")
    @cell_magic("terra")  # type: ignore[arg-type]
    @output_can_be_silenced  # (a closing ``;`` in the cell hides its value, as in a plain cell)
    def terra(self, line: str, cell: str):
        """Run the cell co-executed: Python runs for real, tensor operations run as graph blocks."""
        __tracebackhide__ = True
        args = parse_argstring(self.terra, line)
        _check_cell_options(args)  # every option, before any is applied: a refused cell changes nothing
        sess = session()
        device = self._device(args.device)
        if args.backend:
            sess.set_backend(args.backend)
        shell = self.shell
        assert shell is not None, "%%terra runs inside IPython"
        # IPython's own syntax in the cell (``%time``, ``!ls``, ``files = !ls``) becomes Python, as
        # in a plain cell; each line stays on its line, so tracebacks point at the user's.
        raw, cell = cell, shell.transform_cell(cell)
        filename = shell.compile.cache(cell, _input_number(shell), raw_code=raw)
        cell_number = sess.cells + 1
        handle, listener, cleared = None, None, _ClearWatch(shell.display_pub)
        if not args.quiet:
            view = IterationTable(sess, cell_number, live=True)
            handle = display(view, display_id=True)
            listener = _throttled(lambda _it: cleared.show(handle, view))
            sess.log.listeners.append(listener)
        # --always-coexec and --trace are the cell's own: the session's are put back after it
        always_coexec, trace_iters = sess.executor.always_coexec, sess.executor.trace_iters
        sess.executor.always_coexec = always_coexec or args.always_coexec
        if args.trace is not None:
            sess.executor.trace_iters = args.trace
        try:
            with device:
                report = sess.run_cell(cell, shell.user_ns, filename=filename, baseline=args.baseline)
        except Exception as exc:
            drop_engine_frames(exc)  # the cell's traceback, as a plain cell's would read
            raise
        finally:
            sess.executor.always_coexec, sess.executor.trace_iters = always_coexec, trace_iters
            if listener is not None:
                sess.log.listeners.remove(listener)
            if handle is not None:
                cleared.show(handle, IterationTable(sess, cell_number))
            cleared.close()
        self._retire_previous_run(sess, cell_number)
        if args.output:
            shell.user_ns[args.output] = report
        if not args.quiet and not args.no_widget:
            self._show_graph(sess)
        return report.value

    @line_magic("terra")  # type: ignore[arg-type]
    def terra_line(self, line: str):
        """``%terra status | graph | table | export PATH | reset | backend NAME``"""
        words = line.split()
        command = words[0] if words else "status"
        if command in _BARE_COMMANDS and len(words) > 1:  # (``reset now``: not done on a guess at what was meant)
            raise UsageError(f"usage: %terra {command} (it takes no arguments: {' '.join(words[1:])!r} is not one)")
        sess = session()
        if command == "status":
            executor = sess.executor
            compiled = [b.state for b in executor.compiled.values()]
            print(f"terra_nb session: backend {sess.backend}, {len(sess.graph.nodes) - 1} nodes, "
                  f"{len(compiled)} blocks ({compiled.count('compiled')} compiled, "
                  f"{compiled.count('compiling')} compiling), {sess.cells} cells run")
            if sess.cells:
                print(f"last cell: {sess.summary()}")
        elif command == "graph":
            self._show_graph(sess, force=True)
        elif command == "table":
            if not sess.cells:
                raise UsageError("no %%terra cell has run yet: there is no table to show")
            display(IterationTable(sess, sess.cells))
        elif command == "export":
            path = line.strip()[len(command):].strip()  # (the rest of the line: a name may have spaces)
            if not path:
                raise UsageError("usage: %terra export PATH (a .csv or .parquet file name)")
            from .frames import export_problem

            problem = export_problem(path)  # (a missing folder, no pyarrow: not a traceback)
            if problem:
                raise UsageError(problem)
            written = sess.export(path)
            print("wrote " + ", ".join(written))
        elif command == "reset":
            sess.reset()
            print("terra_nb session reset: graph, compiled blocks and log cleared")
        elif command == "backend":
            if len(words) != 2 or words[1] not in BACKENDS:
                raise UsageError(f"usage: %terra backend NAME, with NAME one of {', '.join(BACKENDS)}")
            try:
                sess.set_backend(words[1])
            except ValueError as exc:
                raise UsageError(str(exc)) from exc
            print(f"terra_nb backend: {words[1]}")
        else:
            raise UsageError(f"unknown %terra command {command!r}: use one of {', '.join(_LINE_COMMANDS)}")

    def _retire_previous_run(self, sess, cell_number: int) -> None:
        """When this notebook cell ran before (JupyterLab sends its id), retire what only that run made."""
        cell_id = _notebook_cell_id(self.shell)
        if cell_id is None:
            return
        previous = self._cell_runs.get(cell_id)
        self._cell_runs[cell_id] = cell_number
        if previous is not None:
            sess.retire_cell(previous)

    def _device(self, name: str | None):
        import contextlib

        import torch

        if name is None:
            return contextlib.nullcontext()
        if name == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda: CUDA is not available on this machine; use --device cpu")
        return torch.device(name)

    def _show_graph(self, sess, force: bool = False) -> None:
        try:
            from .widget import GraphExplorer
        except ImportError:  # the widget's dependencies are missing: show the graph as data
            if force:
                from IPython.display import JSON

                display(JSON(sess.to_json()))
            return
        display(GraphExplorer.from_session(sess))


def _input_number(shell) -> int:
    """The number of the cell that runs the magic, its ``In[N]``: the one IPython named its code by,
    kept in the run's result. ``shell.execution_count`` is the next cell's by then where the cell is
    kept in the history (IPython counts a cell before it runs it)."""
    result = shell.displayhook.exec_result  # (None outside a cell's run: a direct run_cell_magic)
    if result is not None and result.execution_count is not None:
        return result.execution_count
    return shell.execution_count


def _notebook_cell_id(shell) -> str | None:
    kernel = getattr(shell, "kernel", None)
    try:
        return kernel.get_parent().get("metadata", {}).get("cellId") if kernel is not None else None
    except (AttributeError, TypeError):
        return None


class _ClearWatch:
    """Notes the cell's ``clear_output()`` calls (a training loop's live printout), which remove
    the table's output: a display update then reaches no output, and the cell ended with no table.
    After one, the table is displayed anew (same display id) instead of updated."""

    def __init__(self, publisher) -> None:
        self.publisher = publisher
        self.cleared = False
        self.had = "clear_output" in vars(publisher)  # (an instance's own, put back as it was)
        self.original = publisher.clear_output

        def clear_output(*args, **kwargs):
            self.cleared = True
            return self.original(*args, **kwargs)

        publisher.clear_output = clear_output

    def show(self, handle, view) -> None:
        if self.cleared:
            self.cleared = False
            handle.display(view)
        else:
            handle.update(view)

    def close(self) -> None:
        if self.had:
            self.publisher.clear_output = self.original
        else:
            del self.publisher.clear_output


def _throttled(fn, interval: float = 0.25):
    last = [0.0]

    def call(arg):
        now = time.monotonic()
        if now - last[0] >= interval:
            last[0] = now
            fn(arg)

    return call


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(TerraMagics)


def unload_ipython_extension(ipython) -> None:
    magics = ipython.magics_manager.magics
    magics["line"].pop("terra", None)
    magics["cell"].pop("terra", None)
    ipython.magics_manager.registry.pop("TerraMagics", None)
