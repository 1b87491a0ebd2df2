"""The GraphRunner: a thread that runs validated blocks, in order.

The skeleton hands it a :class:`BlockRun` only once every node of the block has been
validated, so the runner never runs ahead of the program. When a block raises, the runner
keeps the exception (with the op that raised it), drops the blocks queued behind it -- as eager
execution would never have reached them -- and the skeleton re-raises it in the user's frame
at its next interaction.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

import torch

from ..graph.blocks import any_autocast, autocast_as, failing_op
from .future import FutureTensor, ValueLostError

_RUNNERS: weakref.WeakSet = weakref.WeakSet()
# Where blocks run: "auto" (a CPU block in the program's thread, a CUDA block on the runner's),
# "thread" (always the runner's thread), "inline" (always the program's thread).
PLACEMENTS = ("auto", "thread", "inline")


@atexit.register
def _stop_runners() -> None:
    for runner in list(_RUNNERS):
        runner.stop()


class BlockRun:
    """One execution of a compiled block: its inputs, floats and the futures its outputs fill.

    It holds its output futures strongly until it has run: the skeleton recycles a future only
    when nothing but its node's pool refers to it (see ``CoExecutor._defer``).
    """

    __slots__ = ("block", "block_id", "inputs", "floats", "out_futs", "cell", "iteration")

    def __init__(self, block, block_id: int, inputs: list, floats: list, out_futs: list, cell: int,
                 iteration: int = 0) -> None:
        self.block = block
        self.block_id = block_id
        self.inputs = inputs
        self.floats = floats
        self.out_futs = out_futs
        self.cell = cell
        self.iteration = iteration


class BlockError:
    """An exception a block raised, with the node it came from."""

    def __init__(self, exc: BaseException, run: BlockRun, op_index: int | None) -> None:
        self.exc = exc
        self.run = run
        self.node = run.block.spec.ops[op_index][0] if op_index is not None else None


class GraphRunner:
    """Executes :class:`BlockRun` items on a daemon thread; ``wait()`` is the only sync point."""

    def __init__(self, on_run=None, placement: str = "auto") -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown runner placement {placement!r}: choose one of {', '.join(PLACEMENTS)}")
        self.placement = placement
        # thread CPU time of the blocks run in the program's thread, kept while measure_inline is
        # set (by the benchmark's ProfilingMode: a thread-time read is a system call)
        self.inline_seconds = 0.0
        self.measure_inline = False
        self._queue: deque[BlockRun] = deque()
        self._cv = threading.Condition()
        self._pending = 0
        self.error: BlockError | None = None
        self.on_run = on_run
        # called with (run, output index, its shape) where an output's shape is not the one its
        # future was given: the op's shape depends on its inputs' values (CoExecutor._on_shape)
        self.on_shape: Callable[[BlockRun, int, torch.Size], None] | None = None
        self.captured: deque | None = None  # the last iterations' block runs, for graph-only replay
        self.capture_last: tuple | None = None  # (cell, iteration): later runs are not captured
        self._stopped = False
        self._threads = torch.get_num_threads()
        self._applied = -1  # the runner thread sets its own count at its first block
        self._thread = threading.Thread(target=self._loop, daemon=True, name="terra-graph-runner")
        self._thread.start()
        _RUNNERS.add(self)

    @property
    def busy(self) -> bool:
        return self._pending > 0

    def submit(self, run: BlockRun) -> None:
        if self._inline(run):
            # In the program's thread, now: the skeleton hands a block over only once every op of
            # it is validated, so this is the same order the runner's thread would keep.
            self._run_in_caller(run)
            return
        with self._cv:
            if self.error is not None:
                return
            self._queue.append(run)
            self._pending += 1
            self._cv.notify_all()

    def _inline(self, run: BlockRun) -> bool:
        """Whether ``run`` runs in the calling (program's) thread rather than on the runner's.

        On a CPU the runner's thread only adds GIL hand-overs: the skeleton and the block's
        Python both need the GIL, every op of the block gives it up for its kernel, and taking it
        back waits for the skeleton to drop it (the switch interval). ``terra-nb run P --backend
        auto --runner thread|auto`` measured gpt2 19.9 -> 14.0 ms per iteration, lstm_lm 6.0 ->
        3.3, dcgan 13.1 -> 7.1 (docs/benchmarks.md). A CUDA block is a sequence of asynchronous launches: there the runner's thread overlaps
        their launch cost with the skeleton. Never while a block is queued (order), after an
        error, under another torch-function mode or in inference mode (the block must see the
        state the runner's thread has).
        """
        if self.placement == "thread" or self._pending or self.error is not None:
            return False
        if self.placement == "auto" and run.block.on_cuda:
            return False
        return not torch._C._len_torch_function_stack() and not torch.is_inference_mode_enabled()

    def run_here(self, run: BlockRun) -> None:
        """Run a block in the calling thread, once the queue is empty (the caller waits anyway)."""
        if self._pending:
            self.submit(run)
        elif self.error is None:
            self._run_in_caller(run)

    def _run_in_caller(self, run: BlockRun) -> None:
        """Run a block in the calling thread, with its thread count (switching it per run cost more
        than the run) and grad mode on, as on the runner's thread (the graph sets its own)."""
        grad = torch.is_grad_enabled()
        t0 = time.thread_time() if self.measure_inline else 0.0
        try:
            torch._C._set_grad_enabled(True)
            self._run_one(run)
        finally:
            torch._C._set_grad_enabled(grad)
            if self.measure_inline:
                self.inline_seconds += time.thread_time() - t0

    def _threads_for(self, run: BlockRun) -> int:
        """Intra-op threads for a block: all of them with the ``eager`` backend, whose results must
        equal eager's to the bit (reductions split by thread count); one fewer with the others,
        since the program's own thread keeps a core busy with the skeleton (on 2 cores, two teams
        of two threads made conv2d 3x slower)."""
        return self._threads if run.block.backend == "eager" else max(1, self._threads - 1)

    def capture_now(self, key: tuple, step, args: list, outs: list) -> None:
        """Capture an op the skeleton ran itself (after waiting: the blocks before it have run)."""
        self._capture(key, (step, args, outs))

    def _capture(self, key: tuple, run: tuple) -> None:
        captured = self.captured
        if captured is None or (self.capture_last is not None and key > self.capture_last):
            return  # (a loop after the benchmark's training: gpt2's sampling)
        if not captured or captured[-1][0] != key:
            captured.append((key, []))
        captured[-1][1].append(run)

    def capture(self, iterations: int) -> None:
        """Keep the block runs (inputs and outputs) of the last ``iterations`` iterations."""
        self.captured = deque(maxlen=iterations)

    def replay_captured(self) -> tuple[list[float], int]:
        """Run the captured iterations' blocks again, back to back: seconds per iteration, and how
        many iterations could not be replayed.

        Outputs of a block feed the later blocks that consumed them originally (across iterations
        too), so a backward block differentiates the graph its replayed forward blocks just built.
        An iteration whose backward reaches a graph built before the window (reinforce: an
        episode's loss sums the log-probabilities of steps before it) cannot run again: autograd
        freed that graph. It is left out of the times and counted.
        """
        times, failed = [], 0
        env: dict[int, object] = {}
        for _key, runs in list(self.captured or ()):
            t0 = time.perf_counter()
            lost = False
            for block, args, outs in runs:
                try:
                    new = block(*[env.get(id(a), a) for a in args])
                except (RuntimeError, TypeError) as exc:
                    if not lost and "backward through the graph a second time" not in str(exc):
                        raise
                    # The rest of the iteration still runs, as far as it can (after a lost
                    # backward, a step may find no gradient): an iteration that begins at its
                    # backward, where the anchor is loss.backward(), builds the next one's graph.
                    lost = True
                    continue
                finally:
                    torch._C._set_grad_enabled(True)
                for old, value in zip(outs, new):
                    env[id(old)] = value
            if lost:
                failed += 1
            else:
                times.append(time.perf_counter() - t0)
        return times, failed

    def wait(self) -> BlockError | None:
        """Block until every submitted block ran (or one raised); return the error, if any."""
        if self._pending:
            with self._cv:
                while self._pending:
                    self._cv.wait()
        return self.error

    def take_error(self) -> BlockError | None:
        error, self.error = self.error, None
        return error

    def stop(self) -> None:
        """End the thread (at interpreter exit: torch's C++ state must not die under a live thread)."""
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:  # (a collection in it can drop a session)
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        torch.set_grad_enabled(True)
        while True:
            with self._cv:
                while not self._queue and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    return
            # No local of this loop holds the run: its futures become recyclable once it is done.
            # (Only this thread takes from the queue.)
            if not self._run_one(self._queue.popleft()):
                continue
            with self._cv:
                self._pending -= 1
                if not self._pending:
                    self._cv.notify_all()

    def _run_one(self, run: BlockRun) -> bool:
        try:
            self._execute(run)
            return True
        except BaseException as exc:  # surfaces in the user's frame, see Skeleton.raise_block_error
            op = failing_op(run.block.gm, exc.__traceback__)
            with self._cv:
                self.error = BlockError(exc, run, op)
                self._pending = 0
                self._queue.clear()
                self._cv.notify_all()
            return False

    def _execute(self, run: BlockRun) -> None:
        if threading.get_ident() == self._thread.ident:  # per thread: the program's keeps its own
            want = self._threads_for(run)
            if want != self._applied:
                torch.set_num_threads(want)
                self._applied = want
        args = [_resolved(x) for x in run.inputs]
        args.extend(run.floats)
        t0 = time.perf_counter()
        if any_autocast():
            # The program's thread is inside a ``with torch.autocast``: a block's nodes run as their
            # trace saw them (those traced under autocast enter it themselves: blocks._in_autocast).
            with autocast_as():
                outs = run.block(*args)
        else:
            outs = run.block(*args)
        elapsed = time.perf_counter() - t0
        torch._C._set_grad_enabled(True)
        for i, (fut, val) in enumerate(zip(run.out_futs, outs)):
            fut._tn_val = val
            if val.shape != fut._tn_meta[0] and self.on_shape is not None:
                self.on_shape(run, i, val.shape)
        if self.captured is not None:  # (the benchmark's graph-only capture; no call per block otherwise)
            self._capture((run.cell, run.iteration), (run.block, args, outs))
        if self.on_run is not None:
            self.on_run(run, elapsed)


def _resolved(x):
    if type(x) is FutureTensor:
        val = x._tn_val
        if val is None:
            raise ValueLostError("a block's input was never computed: the block that produces it did not run")
        return val
    return x
