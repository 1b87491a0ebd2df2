"""Co-execution: the TorchFunctionMode that traces, validates and defers every tensor operation.

Per intercepted call the :class:`CoExecutor` is in one of two states:

* **trace** -- run the op for real, merge it into the TraceGraph, tag its outputs with their
  producer. When the node just traced and all its known successors were traced
  ``trace_iters`` times, switch to the skeleton.
* **skeleton** -- do not run the op: find its node (same op, location, constants, input
  metadata, grad mode; a new producer of an input is recorded), answer with future tensors and
  append it to the pending block. The block goes to the GraphRunner at a fetch (which then waits
  and runs for real), at an iteration end, or when it holds ``max_block`` ops; blocks are keyed by
  their node sequence, so a Python branch just makes another sequence.
  An op the graph does not know is a **fallback**: flush, wait, trace from here on.

Iterations need no marks: the first node a cell runs twice is its *anchor*, and each pass
through the anchor starts an iteration (``@coexecute`` marks them explicitly instead).
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import functools
import gc
import itertools
import os
import signal
import statistics
import sys
import threading
import time
import types
import warnings
import weakref
from array import array
from typing import Any

import torch
import torch.utils.checkpoint
import torch.utils.dlpack
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.overrides import TorchFunctionMode

from ..graph.blocks import AMP_DEVICES, BlockSpec, any_autocast, code_key, ignore_block_warnings, produces
from ..graph.tracegraph import DEFERRED, EXTERNAL, Node, TraceGraph
from ..trace import location, loops
from ..trace.location import (
    RootRegistry,
    call_from_program,
    catches,
    caught_here,
    frame_offset,
    location_key,
    loop_headers,
    module_path,
    user_line,
)
from ..trace.ops import (
    FN,
    MUT,
    NONE,
    NUMPY_SCALARS,
    PLAIN_TYPES,
    TENSOR,
    F,
    G,
    OpInfo,
    T,
    Tensor,
    build_out,
    feedable_ints,
    fill,
    floats_decide_shape,
    generalize,
    interned_meta,
    literal_spec,
    meta_of,
    op_info,
    out_structure,
    out_tensors,
    plain_meta,
    rule_shapes,
    scan,
    spec_ints,
    template,
    values_decide_shape,
    with_floats,
    without_ints,
)
from . import native
from .backends import COMPILE_THREAD, CompiledBlock, check_backend, stays_eager
from .events import Event, EventLog, Iteration
from .future import FutureTensor, ValueLostError, real
from .runner import BlockRun, GraphRunner

TRACE, SKELETON = "trace", "skeleton"
_is_grad_enabled = torch.is_grad_enabled
_is_inference = torch.is_inference_mode_enabled
_perf = time.perf_counter
_thread_time = time.thread_time
_getframe = sys._getframe
_make_wrapper = torch.Tensor._make_wrapper_subclass
_getrefcount = sys.getrefcount
_getweakrefcount = weakref.getweakrefcount
_NO_SCALARS: list = []  # never appended to: the fast path's scalars for a call with tensors only
_len_mode_stack = torch._C._len_torch_function_stack
_get_ident = threading.get_ident
# The grad-mode part of a node key, one object per state so that the fast path compares by identity.
_GRAD = {g: {i: (g, i) for i in (False, True)} for g in (False, True)}
_WITH_AMP: dict[tuple, tuple] = {}
# The saved-tensor hooks on top of this thread's stack (None without): pack hooks run inside the
# ops that save tensors for backward, in the program's thread, so those ops cannot be deferred.
_saved_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", lambda ignore_tracing: None)
SAVED_HOOKS = "saved_tensors_hooks"
_STRIDED = torch.strided
_functorch_level = torch._C._functorch.maybe_current_level  # None outside torch.func's transforms
_dispatch_modes = torch._C._len_torch_dispatch_stack  # 0 outside a TorchDispatchMode's region
_disable_current_modes = torch.utils._python_dispatch._disable_current_modes
_get_default_dtype = torch.get_default_dtype
_FLOAT32 = torch.float32


def _grad_key() -> tuple:
    """The mode part of a node key: (grad enabled, inference mode), and where autocast is on, a
    third item: ((device, dtype) for each device it is on for, its weight cache on). Inside a
    ``torch.autograd.graph.saved_tensors_hooks`` region a fourth item, ``SAVED_HOOKS`` (the
    third None when autocast is off): its ops run for real (see ``_new_node``). Where the default
    dtype is not float32 (``torch.set_default_dtype``: factories, and Python floats with integer
    tensors, make it) a fifth, that dtype (the fourth None without the hooks). Interned: the
    paths compare it by identity."""
    grad = _GRAD[_is_grad_enabled()][_is_inference()]
    hooks = _saved_hooks(False) is not None
    amp_on = any_autocast()
    dtype = _get_default_dtype()
    if not hooks and not amp_on and dtype is _FLOAT32:
        return grad
    amp = None
    if amp_on:
        amp = (tuple([(d, torch.get_autocast_dtype(d)) for d in AMP_DEVICES if torch.is_autocast_enabled(d)]),
               torch.is_autocast_cache_enabled())
    if dtype is not _FLOAT32:
        key: tuple = (grad[0], grad[1], amp, SAVED_HOOKS if hooks else None, dtype)
    else:
        key = (grad[0], grad[1], amp, SAVED_HOOKS) if hooks else (grad[0], grad[1], amp)
    return _WITH_AMP.setdefault(key, key)


def _under_saved_hooks(grad: tuple) -> bool:
    return len(grad) > 3 and grad[3] is SAVED_HOOKS


class PendingBlock:
    """The validated ops the skeleton has not handed to the GraphRunner yet."""

    __slots__ = ("ops", "inputs", "input_ids", "floats", "futs", "kind")

    def __init__(self) -> None:
        # What its ops do with .grad, for the cuts in _defer: 0 nothing yet, 1 pure compute,
        # 2 only sets .grad (zero_grad), 3 reads .grad (an optimizer step): only 1 compiles.
        self.kind = 0
        self.ops: list[tuple[Node, tuple]] = []
        self.inputs: list = []
        self.input_ids: dict[int, int] = {}
        self.floats: list = []
        self.futs: list = []  # every future the block's ops answered with, by value index

    def input(self, t, snapshot: bool | None = None) -> int:
        """``t``'s index among the block's inputs; ``snapshot``: whether it is memory numpy shares
        (None: as the tensor's mark says, see CoExecutor._shares_python_memory)."""
        k = self.input_ids.get(id(t))
        if k is None:
            if snapshot if snapshot is not None else getattr(t, "_tn_numpy", False) is True:
                # Memory numpy shares may change before the block runs: each read takes a snapshot
                # of its own (Python may change it between two ops of the block).
                self.inputs.append((t._tn_val if type(t) is FutureTensor else t).clone())  # type: ignore[union-attr]
                return len(self.inputs) - 1
            k = self.input_ids[id(t)] = len(self.inputs)
            self.inputs.append(t)
            if type(t) is not FutureTensor and t.__dict__.get("_tn_local"):
                t._tn_local = False  # a block may write it now: Python must wait before reading it
        return k


class TerraMode(TorchFunctionMode):
    """Routes every torch API call of the user's thread to the CoExecutor.

    Where the C fast path is built (see :mod:`.native`), the mode's ``__torch_function__`` is
    the C one; it hands every call it does not take to this Python method.
    """

    def __init__(self, executor: CoExecutor) -> None:
        super().__init__()
        self.executor = executor
        self.native = _native_path(executor, self)
        if self.native is not None:
            self.__torch_function__ = types.MethodType(self.native, self)  # type: ignore[method-assign]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        __tracebackhide__ = True
        return self.executor.on_op(func, args, kwargs)


class ProfilingMode(TerraMode):
    """TerraMode that also adds up the skeleton's own CPU time per deferred op, by iteration.

    Thread CPU time, not wall time: the time the skeleton waits for the GIL while the
    GraphRunner holds it is not the skeleton's cost; nor is the time of the blocks that run in the
    program's thread (``GraphRunner.inline_seconds``). (For the benchmark; the C path keeps the
    same account itself.)
    """

    def __init__(self, executor: CoExecutor) -> None:
        super().__init__(executor)
        self.by_iteration: dict[int, list] = {}  # iteration -> [seconds, deferred ops]
        executor.runner.measure_inline = True
        if self.native is not None:
            self.native.profile = self.by_iteration

    def __torch_function__(self, func, types, args=(), kwargs=None):
        __tracebackhide__ = True
        executor = self.executor
        before = executor.deferred_total
        blocks = executor.runner.inline_seconds
        t0 = _thread_time()
        out = executor.on_op(func, args, kwargs)
        if executor.deferred_total != before:
            acc = self.by_iteration.setdefault(executor.iter_index, [0.0, 0])
            acc[0] += _thread_time() - t0 - (executor.runner.inline_seconds - blocks)
            acc[1] += 1
        return out

    def us_per_op(self, steady: set | None = None) -> float | None:
        """Mean µs per deferred op in steady state: over the ``steady`` iterations where given (the
        benchmark gives the co-executed ones of its training's second half: an iteration that fell
        back pays for tracing and for its first compiles), else over the second half of them all."""
        if steady is None:
            first = max(self.by_iteration, default=0) // 2
            steady = {k for k in self.by_iteration if k > first}
        spans = [v for k, v in self.by_iteration.items() if k in steady]
        ops = sum(n for _, n in spans)
        return sum(t for t, _ in spans) / ops * 1e6 if ops else None


def _native_path(executor: CoExecutor, mode: TerraMode | None):
    """The C fast path for ``mode`` (for the executor's own use when None), or None where it is not built."""
    module = native.load()
    if module is None:
        return None
    constants = {
        "Node": Node, "PendingBlock": PendingBlock, "OpInfo": OpInfo, "Generator": torch.Generator, "NUMPY_SCALARS": NUMPY_SCALARS, "Size": torch.Size, "FutureTensor": FutureTensor, "Tensor": Tensor, "Parameter": torch.nn.Parameter,
        "SKELETON": SKELETON, "auto": "auto", "eager": "eager", "op": "op", "effect": "effect", "fetch": "fetch",
        "grad00": _GRAD[False][False], "grad01": _GRAD[False][True],
        "grad10": _GRAD[True][False], "grad11": _GRAD[True][True],
        "TENSOR": TENSOR, "NONE": NONE, "EXTERNAL": EXTERNAL, "T": T, "F": F, "G": G, "FN": FN, "MUT": MUT,
        "make_future": executor._make_future, "build_out": build_out,
        "is_grad_enabled": _is_grad_enabled, "is_inference": _is_inference, "any_autocast": any_autocast, "run_meta": _run_meta,
        "saved_hooks": _saved_hooks, "functorch_level": _functorch_level,
        "dispatch_modes": _dispatch_modes, "zero": 0, "GRAD_READ": GRAD_READ, "CHECK_INDEX": CHECK_INDEX,
        "shares_memory": executor._shares_python_memory,
        "CHECK_VIEW": CHECK_VIEW, "CHECK_SCALARS": CHECK_SCALARS,
        "UNFOLLOWED": _UNFOLLOWED,
        "CANON": location._CANON, "canonical_offsets": location.canonical_offsets, "BlockRun": BlockRun,
    }
    # The Python path, bound to the mode: the calls the C path does not take go there.
    slow = TerraMode.__torch_function__.__get__(mode) if mode is not None else None
    return module.FastPath(executor, slow, constants)


class CoExecutor:
    """The engine: one TraceGraph, one GraphRunner, the per-op trace and skeleton paths."""

    # The attributes the C fast path reads and writes (by offset: _fastpath.c's EXECUTOR_SLOTS);
    # every other attribute lives in the instance dict.
    __slots__ = ("state", "mode", "cursor", "block", "anchor", "explicit_iterations", "_cell_token", "op_counter",
                 "_anchor_limit", "_anchor_first", "ops_coexec", "_validated", "deferred_total", "max_block",
                 "_root_codes", "_ok_parent", "_ok_lasti", "_ok_tail", "graph", "iter_index", "meta_funcs",
                 "passthrough", "runner", "compiled", "iter_blocks", "block_ids", "cell", "_memory_epoch", "_grad_objs",
                 "__dict__",
                 "__weakref__")

    _ticks: dict[int, int]  # auto's choice (see _reset_choice)
    _once: dict[int, int]
    _anchor_loop: int
    _reanchor_at: int
    _tick_seen: dict[int, list[int]]  # loop id -> [iterations it ticked 0 times, >1 times]
    _probing: bool
    _ended_at_tick: bool
    _ticked_row: tuple[float, int] | None
    iter_start: float

    def __init__(self, log: EventLog, backend: str = "eager", trace_iters: int = 1, max_block: int = 64,
                 runner: str = "auto", always_coexec: bool = False) -> None:
        self.log = log
        _keep_marks_out_of_pickles()
        self.always_coexec = always_coexec  # auto's choice off: co-execute even where eager is faster
        self._on_cuda = False  # a block touched CUDA: auto's choice is for CPU programs
        self.backend = check_backend(backend)
        self.trace_iters = max(1, int(trace_iters))
        self.max_block = max_block
        self.graph = TraceGraph()
        self.roots = RootRegistry()
        self._root_codes = self.roots._keys
        self.runner = GraphRunner(on_run=self._on_run, placement=runner)
        self.runner.on_shape = self._on_shape
        self.compiled: dict[tuple, CompiledBlock] = {}
        self._code: dict[tuple, Any] = {}  # code_key -> GraphModule, for blocks never compiled
        self.block_ids: dict[int, int] = {}
        self.passthrough: set = set()  # funcs traced with no tensor in or out: run at once
        self.meta_funcs: set = set()  # funcs classified "meta" (x.dtype, torch.is_complex)
        self.mode = "auto"
        self.state = TRACE
        self.cursor: Node = self.graph.root
        self.block = PendingBlock()
        # id of a real tensor -> [a weak reference to it, the object the program got for its .grad,
        # the pending block where the skeleton recorded that object (None: the real .grad is it)];
        # see _grad_object
        self._grad_objs: dict[int, list] = {}
        self._regrads: set = set()  # the families of backward(create_graph=True): it replaces .grad
        self.recording: list | None = None
        self.cell = 0
        self._memory_epoch = object()  # see _shares_python_memory
        self.deferred_total = 0
        self.profiler: ProfilingMode | None = None  # set by the benchmark
        self._depth = 0
        self._validated = 0  # 1 once an op was validated since the skeleton (re)started: a fallback is then an event
        self.anchor: Node | None = None
        self.op_counter = 0
        self._anchor_first = self._anchor_last = self._anchor_period = 0
        self._anchor_limit = -1  # past this op count without the anchor, its loop has ended
        self._anchor_trains = False  # a backward ran in the anchor's first period
        self._turn_at: dict[int, int] = {}  # loop id -> the op count at its last tick, in this cell
        self._first_tick: dict[int, int] = {}  # loop id -> the op count at its first tick, in this cell
        self._kept_rows = 0  # this cell's rows kept as they are (a loop's that ended): never merged again
        # Where the anchor's function is called from two places of the cell in each turn: the
        # root's offset of the calls that start the turns (None: every run of the anchor does), and
        # the anchor's runs seen to find it, (root offset, a loop ticked since the last run)
        self._turn_root: int | None = None
        self._root_runs: list[tuple[int, bool]] = []
        self._turns: dict[int, int] = {}  # loop id -> its ticks in this cell
        # Op counts, in order (8 bytes each: a run of a million iterations keeps 8 MB): the
        # anchor's runs, every backward's (autograd.grad's too) and each optimizer's steps (a GAN's
        # critic steps several times per step of its generator). Never trimmed, since the rules
        # count them since a node's previous run, which may be an epoch of many turns ago.
        self._anchor_hits = array("q")
        self._turn_ends: set = set()  # the nodes the anchor has run right after (see _advance)
        self._turn_starts: set = set()  # the anchor and the variants of its op that took its place
        self._backward_at = array("q")
        self._steps_of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # optimizer -> array
        self._mark_turns: dict[int, list] = {}  # id of one of those arrays -> (cell, loops' ticks, anchor runs) at its last marks
        self._interrupted = False  # an interrupt waits for the user's code (see _catch_interrupts)
        self._interrupt_handler: Any = None
        self._sync_text: dict[tuple[Node, str], tuple[str, str]] = {}  # a sync event's reason and location, per node and line
        self._line_root: Any = None  # the root code of the running cell (see _advance)
        self._cell_mode = "auto"
        self.baseline = self._baseline_asked = 0
        self.explicit_iterations = False
        self._call_counts: Event | None = None  # the counts event of @coexecute calls (see end_cell)
        self._cell_token: object = object()
        self.iter_index = 0
        self._hold_trace = False
        self._ok_parent: object = None
        self._locals: list = []  # weak references to the tensors marked skeleton-local
        self._forgotten: list = []  # (weak reference, referents) of the marks eager iterations cleared
        self._ok_lasti = -1
        self._ok_tail: tuple = ()
        self._reset_iteration(0, _perf())
        self._reset_choice()
        self._hooked = True  # the mode is on the stack while a cell runs (auto's eager stretches take it off)
        self._mode_obj: TerraMode | None = None
        self._owner = -1  # the thread running a cell; -1 between cells
        # Another thread needs a value the program's pending block will produce (see
        # value_elsewhere): while _held, the program's thread waits at its next entry to the engine.
        self._held = False
        self._held_cv = threading.Condition()
        self._elsewhere = threading.Lock()
        self._tick_reanchors = 0
        self._anchor_runs = 0  # the anchors' runs, all told (see _marks_within_turns)
        self._ticks_at_anchor: dict[int, int] = {}  # _turn_at when the anchor was set
        self._restless: dict[int, int] = {}  # loop id -> its last turns in a row with no anchor that lasts (_note_restless)
        self._turn_loop = -1  # a loop whose turns are the iterations, by its ticks (see tick)
        self._turn_loop_next = -1  # a loop whose next turn's first op anchors (see tick)
        self._turn_first = 0  # the op count of that loop's last turn's first op
        self._eager_limit = 0.0  # seconds an eager iteration may last before the anchor is given up
        self._unhooked_at = 0  # the mode stack's depth below our mode, when it was taken off
        self._native = _native_path(self, None)  # the C take_run, where built

    # -- entering and leaving ------------------------------------------------------------------

    @contextlib.contextmanager
    def active(self, root_code, mode: str = "auto", baseline: int = 0, last_code=None):
        """Run the block of a ``with`` under co-execution; ``root_code`` roots the locations (and
        ``last_code``, a cell's last expression, compiled apart for its value, where there is one).

        With ``baseline`` > 0 the first ``baseline`` iterations run plain eager (the speedup
        denominator), then ``mode`` takes over.
        """
        __tracebackhide__ = True
        if mode not in ("auto", "trace", "eager"):
            raise ValueError(f"unknown mode {mode!r}: use 'auto', 'trace' or 'eager'")
        if self._depth:
            yield self
            return
        self._depth += 1
        roots = (root_code,) if last_code is None else (root_code, last_code)
        self._line_root = root_code  # (see _advance)
        for code in roots:
            self.roots.add(code)
        mode = sys.intern(mode)  # the C path recognises "eager" by identity
        self._cell_mode = mode
        self.baseline = max(0, int(baseline)) if mode != "eager" else 0
        self._baseline_asked = self.baseline
        self._tick_reanchors = 0  # re-anchorings by loop ticks in this cell (see _count_ticks)
        self.mode = mode
        if mode == "eager":
            self._forget_locals()
        else:
            self._restore_locals()  # (the marks the last cell left, where no code since took them)
        self.state = SKELETON if mode == "auto" else TRACE
        self._validated = 0
        self.cursor = self.graph.root
        self._grad_objs.clear()  # (plain code since the last cell may have set any .grad)
        if not self.graph.python_hooks and any(_has_hooks(t) for t in list(self.graph.grad_leaves.values())):
            self._hooks_registered()  # a hook registered on a parameter since the last cell
        patches = self._patch_torch()
        ignore_block_warnings()
        # Every deferred op allocates a few small objects; with the default thresholds the
        # collector would run every ~100 ops and cost more than the op. Collect rarely instead.
        thresholds = gc.get_threshold()
        gc.set_threshold(max(thresholds[0], 50000), *thresholds[1:])
        self._mode_obj = self.profiler or TerraMode(self)
        self._owner = _get_ident()  # the thread whose loops tick (see tick)
        self._interrupted = False
        self._route()
        previous_handler = self._catch_interrupts()
        step_hook = register_optimizer_step_post_hook(self._on_optimizer_step)
        raised = False
        try:
            with self._mode_obj:
                try:
                    yield self
                except BaseException:
                    raised = True
                    raise
                finally:
                    self._hook(cell_ends=True)  # (an eager stretch may have taken the mode off: see tick)
        finally:
            try:
                self.flush()
                error = self.runner.wait()
                self._grad_objs.clear()  # (plain code comes next: nothing follows its .grad)
                self._realize_optimizer_state()  # (for the plain code after the cell)
            finally:
                if previous_handler is not None and signal.getsignal(signal.SIGINT) is self._interrupt_handler:
                    # (a handler the program installed meanwhile stays)
                    signal.signal(signal.SIGINT, previous_handler)
                gc.set_threshold(*thresholds)
                step_hook.remove()
                for owner, name, original in patches:
                    setattr(owner, name, original)
                for code in roots:
                    self.roots.remove(code)
                self._ok_parent = None
                # Code outside co-execution is not watched: the marks go, remembered with what
                # refers to each tensor, and the next cell restores those nothing new refers to
                # (an optimizer's step counters: cleared for good, each read in a later cell
                # waited for the blocks, a sync per parameter per step).
                self._forget_locals(remember=True)
                self._depth -= 1
                self._owner = -1
                self.cursor = self.graph.root
            if error is not None:
                if raised:  # (its op came first: eager raised it, and never reached the program's error)
                    error.exc.__suppress_context__ = True
                self.raise_block_error()
            if self._interrupted:
                self._interrupted = False
                if not raised:  # it came after the cell's last operation: every one has run
                    raise KeyboardInterrupt

    # -- interrupts ----------------------------------------------------------------------------

    def _catch_interrupts(self):
        """While a cell runs, an interrupt (Ctrl-C, a kernel's interrupt) that lands in the engine
        (a block running, the skeleton's own code) waits for the next call or loop turn of the
        user's code; one that lands in the user's code is raised there at once, as without
        co-execution. A block is never stopped halfway, so the state is eager's at the point where
        the interrupt is raised. Returns the handler to put back (None where none was replaced)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        try:
            previous = signal.getsignal(signal.SIGINT)
        except ValueError:
            return None
        if not callable(previous):
            return None  # ignored, or the system default: nothing to raise

        def on_interrupt(signum, frame):
            if _in_engine(frame):
                self._interrupted = True
                self._route()
                return
            previous(signum, frame)

        signal.signal(signal.SIGINT, on_interrupt)
        self._interrupt_handler = on_interrupt
        return previous

    def _raise_interrupt(self):
        __tracebackhide__ = True
        self._interrupted = False
        self._route()
        raise KeyboardInterrupt

    def begin_cell(self, cell: int) -> None:
        self.cell = cell
        self._memory_epoch = object()  # (a plain cell before may have given numpy a tensor's memory)
        self._filters_at_start = warnings.filters  # (see _shown_every_time)
        self.anchor = None
        self._turn_ends, self._turn_starts = set(), set()
        self._anchor_limit = -1
        self.explicit_iterations = False
        self._cell_token = object()
        self._turn_at = {}
        self._first_tick = {}
        self._kept_rows = 0
        self._turn_root, self._root_runs = None, []
        self._turns = {}
        self._restless = {}
        self._turn_loop = self._turn_loop_next = -1
        self._reset_iteration(0, _perf())
        self._reset_choice()

    def end_cell(self) -> None:
        if self.iter_index:
            self._close_iteration(_perf())
        self.iter_index = 0
        nodes = tuple((n.id, n.count, n.kind) for n in self.graph.nodes[1:])
        if self.explicit_iterations and self._call_counts is not None:
            # a @coexecute call: one event for all the calls, the latest counts (an event per call,
            # each naming every node, grew the log by the graph's size at each training step)
            self._call_counts.cell, self._call_counts.nodes = self.cell, nodes
            return
        event = Event("counts", self.cell, 0, nodes=nodes)
        self.log.add(event)
        if self.explicit_iterations:
            self._call_counts = event

    def mark_iteration(self) -> None:
        """Start a new iteration here (``@coexecute`` calls this on every call)."""
        self.explicit_iterations = True
        now = _perf()
        if self.iter_index:
            self._close_iteration(now)
        self._reset_iteration(self.iter_index + 1, now)

    def _patch_torch(self) -> list:
        """Python-level torch calls that touch state the GraphRunner owns must wait for it first."""
        # The patches are process-wide; only the co-executing thread may act on them (Dynamo, in a
        # background compile thread, reads the RNG state: materialising from there stole blocks).
        owner_thread = threading.get_ident()
        # Dynamo registers its stand-ins for torch functions when it is first imported: with the
        # originals, not the wrappers below.
        import torch._dynamo.eval_frame as eval_frame

        def syncing(original):
            restores = original.__name__ in ("set_rng_state", "manual_seed", "seed")

            def wrapper(*args, **kwargs):
                if threading.get_ident() == owner_thread:
                    self.materialize()
                elif restores and threading.current_thread().name == COMPILE_THREAD:
                    # Dynamo saves and restores the global RNG state around tracing; the program
                    # draws from it meanwhile, and a restore would replay those draws. Our
                    # compiles draw nothing (blocks with random ops are not compiled): skip it.
                    return None
                return original(*args, **kwargs)
            return wrapper

        def retyping(original):
            def wrapper(*args, **kwargs):
                if threading.get_ident() != owner_thread:
                    return original(*args, **kwargs)
                self.materialize()  # the blocks before run under the default they were checked with
                try:
                    return original(*args, **kwargs)
                finally:
                    self._route()
            return wrapper

        patches: list[tuple[Any, str, Any]] = []
        for name in ("set_default_dtype", "set_default_tensor_type"):
            patches.append((torch, name, getattr(torch, name)))
            setattr(torch, name, retyping(getattr(torch, name)))
        for owner in (torch, torch.random):
            for name in ("manual_seed", "seed", "get_rng_state", "set_rng_state"):
                original = getattr(owner, name)
                patches.append((owner, name, original))
                setattr(owner, name, syncing(original))
        # Global numeric settings: an op runs under those the program had set at its line, so the
        # pending ops run before a setting changes (a ``with torch.backends.mkldnn.flags(...)``
        # or ``sdpa_kernel(...)`` region's, ``torch.set_num_threads``: reductions split by thread
        # count). Deferred, an op ran under the settings of its block's time, not bitwise eager's.
        # The pending blocks run in the program's thread, with this mode off the stack: some of
        # these are the thread's own (flush-denormal, the thread count), which the runner's
        # thread would not have.
        def settling(original):
            def wrapper(*args, **kwargs):
                if _get_ident() == owner_thread and (self.block.ops or self.runner.busy):
                    depth = _len_mode_stack()
                    if depth and isinstance(torch._C._get_function_stack_at(depth - 1), TerraMode):
                        with torch.overrides._pop_mode_temporarily():
                            self.materialize()
                    else:
                        self.materialize()
                return original(*args, **kwargs)
            return wrapper

        for owner, name in _NUMERIC_SETTERS:
            original = getattr(owner, name, None)
            if original is not None:
                patches.append((owner, name, original))
                setattr(owner, name, settling(original))
        # The default generator's own methods read or set the stream the pending blocks draw from
        # (``torch.default_generator.get_state()`` came before the draws the program made above it;
        # ``torch.cuda``'s RNG functions call them on the device's default generator).
        # Its type is a static one: its methods are set in the dict behind its mappingproxy.
        generators = _StaticTypeDict(torch._C.Generator)
        for name in ("get_state", "set_state", "manual_seed", "seed", "clone_state",
                     "graphsafe_get_state", "graphsafe_set_state"):
            original = torch._C.Generator.__dict__.get(name)
            if original is not None and generators.writable:
                patches.append((generators, name, original))
                setattr(generators, name, _default_generator_syncs(original, self, owner_thread))
        # (torch.from_numpy's tensors need no mark of their own: their storage is one torch cannot
        # resize, which _shares_python_memory reads.) Tensor.numpy gives numpy the tensor's memory (torch makes its storage one it cannot
        # resize): every tensor found not to share memory with Python is asked again.
        raw_numpy = torch.Tensor.numpy

        def numpy(tensor, *args, **kwargs):
            self._memory_epoch = object()
            out = raw_numpy(tensor, *args, **kwargs)
            if type(tensor) is FutureTensor and tensor._tn_val is not None:
                tensor._tn_val._tn_numpy = True  # (its value's: the future stays a future)
            return out

        patches.append((torch.Tensor, "numpy", raw_numpy))
        torch.Tensor.numpy = numpy  # type: ignore[method-assign, assignment]
        # nn.Parameter wraps its data in C++, past the mode: give it the real tensor.
        raw_new = torch.nn.Parameter.__dict__["__new__"]  # the staticmethod itself, restored as it was
        parameter_new = torch.nn.Parameter.__new__

        def new_parameter(cls, data=None, requires_grad=True):
            if type(data) is FutureTensor and threading.get_ident() == owner_thread:
                data = data.value()
            return parameter_new(cls, data, requires_grad)

        patches.append((torch.nn.Parameter, "__new__", raw_new))
        torch.nn.Parameter.__new__ = staticmethod(new_parameter)  # type: ignore[method-assign, assignment]
        # Tensor.as_subclass does not pass the mode either, and on a future made its alias in
        # __torch_dispatch__, which already had a Python object: a RuntimeError. The real tensor.
        raw_as_subclass = torch.Tensor.as_subclass

        def as_subclass(self, cls):
            if type(self) is FutureTensor and threading.get_ident() == owner_thread:
                self = self.value()
            return raw_as_subclass(self, cls)

        patches.append((torch.Tensor, "as_subclass", raw_as_subclass))
        torch.Tensor.as_subclass = as_subclass  # type: ignore[method-assign, assignment]
        # Tensor._make_subclass, which libraries call to make their subclass's instances, likewise.
        raw_make_subclass = torch.Tensor._make_subclass

        def make_subclass(*args, **kwargs):  # (Dynamo's polyfill of it checks the signature)
            if len(args) > 1 and type(args[1]) is FutureTensor and threading.get_ident() == owner_thread:
                args = (args[0], args[1].value(), *args[2:])
            return raw_make_subclass(*args, **kwargs)

        patches.append((torch.Tensor, "_make_subclass", raw_make_subclass))
        torch.Tensor._make_subclass = staticmethod(make_subclass)  # type: ignore[method-assign, assignment]
        # Tensor.set_ does not pass torch-function modes either (its binding has no check): on a
        # real tensor it repointed the memory at once, ahead of a pending block that read the old
        # memory; on a future it reached only __torch_dispatch__, and the wrapper kept its shape.
        # Through the mode it is an op like resize_.
        raw_set = torch.Tensor.set_

        def set_(tensor, *args, **kwargs):
            if _get_ident() == owner_thread and torch._C._is_torch_function_mode_enabled():
                return torch.overrides.handle_torch_function(raw_set, (tensor,), tensor, *args, **kwargs)
            return raw_set(tensor, *args, **kwargs)

        patches.append((torch.Tensor, "set_", raw_set))
        torch.Tensor.set_ = set_  # type: ignore[method-assign, assignment]

        def on_real_tensors(raw):
            def wrapper(*args, **kwargs):
                if threading.get_ident() == owner_thread and torch._C._is_torch_function_mode_enabled():
                    self.materialize()
                    args, kwargs = real((args, kwargs))
                return raw(*args, **kwargs)
            return wrapper

        # TorchScript functions and methods (torch.jit.script, torch.jit.trace) run their ops in
        # C++, past the mode: on a future, autograd recorded them against the wrapper, and the
        # gradient never reached the model (its .grad stayed None). They run on real tensors,
        # after the pending blocks (a scripted module reads its parameters itself).
        for script_type in (torch._C.ScriptFunction, torch._C.ScriptMethod):
            patches.append((script_type, "__call__", script_type.__call__))
            script_type.__call__ = on_real_tensors(script_type.__call__)  # type: ignore[method-assign]
        # DLPack export reads a tensor's memory in C++, past the mode too: on a future it made a
        # capsule around no memory, and the first read of what came out of it crashed the process.
        for owner, name in ((torch._C, "_to_dlpack"), (torch._C, "_to_dlpack_versioned"),
                            (torch.utils.dlpack, "to_dlpack"), (torch, "to_dlpack")):
            raw = getattr(owner, name, None)
            if raw is not None:
                patches.append((owner, name, raw))
                setattr(owner, name, on_real_tensors(raw))
        # A custom autograd Function's apply does not pass the mode: the ops of its forward (run
        # with grad off) were traced instead, and the replay lost the Function's backward. Through
        # the mode, each apply is one node, run as a whole.
        raw_apply = torch.autograd.Function.__dict__["apply"]

        def apply(cls, *args, **kwargs):
            if threading.get_ident() == owner_thread and torch._C._is_torch_function_mode_enabled():
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                if tensors:
                    return torch.overrides.handle_torch_function(cls.apply, tensors, *args, **kwargs)
            return raw_apply.__func__(cls, *args, **kwargs)

        patches.append((torch.autograd.Function, "apply", raw_apply))
        torch.autograd.Function.apply = classmethod(apply)  # type: ignore[method-assign, assignment]
        # A torch.compile'd model or function that the cell calls runs as its Python, its ops
        # co-executed with the rest: Dynamo, compiling it under this mode, traced the mode and
        # crashed on the engine's state (an InternalTorchDynamoError). Dynamo's own "force_eager"
        # stance, for the program's thread while this mode is on top; the engine's compiled
        # blocks run with the mode off the stack and compile as before.
        from_stance = getattr(eval_frame, "_callback_from_stance", None)  # (private: absent, not patched)
        if from_stance is not None:
            def callback_from_stance(callback):
                depth = _len_mode_stack()
                if (depth and _get_ident() == owner_thread
                        and isinstance(torch._C._get_function_stack_at(depth - 1), TerraMode)):
                    return None
                return from_stance(callback)

            patches.append((eval_frame, "_callback_from_stance", from_stance))
            eval_frame._callback_from_stance = callback_from_stance
        # zero_grad(set_to_none=True) reads every p.grad only to skip the ones already None: a
        # sync per parameter. Setting None unconditionally has the same effect and reads nothing.
        holders: tuple[tuple[Any, Any], ...] = ((torch.optim.Optimizer, _optimizer_params), (torch.nn.Module, _module_params))
        for holder, params_of in holders:
            original = holder.__dict__["zero_grad"]
            patches.append((holder, "zero_grad", original))
            setattr(holder, "zero_grad", _unconditional_zero_grad(original, params_of))
        # clip_grad_norm_ and clip_grad_value_ (foreach=None) take their foreach path only for
        # tensors whose type is torch.Tensor: a future, a .grad read, sent them down the
        # per-tensor path, an op per parameter where eager runs one (and, with CUDA, other kernels).
        import torch.utils._foreach_utils as foreach_utils

        patches.append((foreach_utils, "_foreach_supported_types", foreach_utils._foreach_supported_types))
        foreach_utils._foreach_supported_types = [*foreach_utils._foreach_supported_types, FutureTensor]
        # An attention or encoder module in eval with grad off takes torch's native fast path
        # (nested tensors for a padding mask, fused attention) only when no argument has a torch
        # function: never under this mode. Its results differ from the path it takes instead (zeros
        # at padded positions against computed rows; rounding), so it runs for real, mode off.
        for module_type in (torch.nn.MultiheadAttention, torch.nn.TransformerEncoderLayer, torch.nn.TransformerEncoder):
            original = module_type.__dict__["forward"]
            patches.append((module_type, "forward", original))
            setattr(module_type, "forward", self._fast_path_runs_eagerly(original, owner_thread))
        return patches

    def _fast_path_runs_eagerly(self, original, owner_thread: int):
        """``original`` (a module's forward), run with this mode off where torch's fast path may
        apply: the module in eval, no gradient to record, the fast path enabled. The blocks before
        it run first (a sync, in the event log); its outputs are real tensors."""

        @functools.wraps(original)
        def forward(module, *args, **kwargs):
            __tracebackhide__ = True
            layer = module.layers[0] if isinstance(module, torch.nn.TransformerEncoder) and len(module.layers) else module
            if (_get_ident() != owner_thread or layer.training or not torch.backends.mha.get_fastpath_enabled()
                    or (torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters()))
                    or not isinstance(torch.overrides._get_current_function_mode(), TerraMode)):
                return original(module, *args, **kwargs)
            t0 = _perf()
            self.materialize()
            self.iter_syncs += 1
            self.log.add(Event("sync", self.cell, self.iter_index,
                               f"{type(module).__name__}: its eval fast path runs eagerly",
                               str(user_line(sys._getframe(1)) or ""), (_perf() - t0) * 1e3))
            args, kwargs = real((args, kwargs))
            with torch.overrides._pop_mode_temporarily():
                return original(module, *args, **kwargs)
        return forward

    # -- the per-op entry ----------------------------------------------------------------------

    def on_op(self, func, args, kwargs):
        __tracebackhide__ = True
        if self._held:
            self._wait_held()
        if self._interrupted:
            self._raise_interrupt()
        if _functorch_level() is not None or _dispatch_modes():
            # Inside a torch.func transform (vmap, grad, jvp...): its tensors are the transform's
            # wrappers, valid only until it returns, so its ops run now, as eager runs them;
            # what it returns is a real tensor, fed to the ops after it. The blocks before run
            # first (with the transform's dispatch off): its random ops draw after theirs. So do
            # the ops inside a TorchDispatchMode of the program's (FlopCounterMode counts the ops of
            # its region, and none of the blocks before: they run with it off).
            if self.block.ops or self.runner.busy:
                with torch._C._DisableFuncTorch(), _disable_current_modes():
                    self.materialize()
            return func(*real(args), **real(kwargs) if kwargs else {})
        if self.state is SKELETON and self.mode == "auto":
            # The fast path: a successor of the cursor validated before, found by the frame that
            # calls it. Checks the same key as the graph index (op, site, constants, input
            # metadata, grad mode) without building it.
            frame = _getframe(2)
            code = frame.f_code
            pair = self.cursor.fast.get((func, id(code), frame.f_lasti))
            if pair is not None and pair[0] is code:
                entries = pair[1]
                spec = entries[0].key[2]
                if not kwargs and entries[0].flat == len(args) and all([isinstance(a, Tensor) for a in args]):
                    tensors: list = list(args)  # tensors only: the spec is (T, ..., T), no scan needed
                    scalars: list = _NO_SCALARS
                else:
                    tensors = []
                    scalars = []
                    spec = scan(args, kwargs, tensors, scalars)
                grad = _grad_key()
                for node in entries:
                    if node.grad is not grad or (generalize(spec, node.mask) if node.mask else spec) != node.key[2]:
                        continue
                    tail = node.tail
                    if tail:
                        parent = frame.f_back
                        if not (parent is self._ok_parent and tail is self._ok_tail and parent.f_lasti == self._ok_lasti) \
                                and not self._tail_ok(parent, tail):
                            continue
                    elif code not in self._root_codes:
                        continue
                    for t, m in zip(tensors, node.in_meta):
                        if type(t) is FutureTensor:
                            tm = t._tn_meta
                            if tm is not m and tm != m or _value_shared(t):
                                break
                        elif type(t) not in PLAIN_TYPES or plain_meta(t) != m or self._shares_python_memory(t):
                            break  # (a subclass of the program's: its metadata names its type)
                    else:
                        if node.kind in DEFERRED and not node.immediate:
                            return self._defer(node, tensors, scalars)
                        return self._validated_op(node, func, args, kwargs, tensors, scalars, frame)
        return self._on_op(func, args, kwargs)

    def _tail_ok(self, parent, tail: tuple) -> bool:
        """Whether the frames above the op's caller stand where ``tail`` (a node's site) says."""
        f = parent
        for code, lasti in tail[:-1]:
            if f is None or f.f_code is not code or frame_offset(f) != lasti:
                return False
            f = f.f_back
        if f is None or f.f_code not in self._root_codes:
            return False
        # While ``parent`` runs, the frames above it cannot move: remember it for the next ops.
        self._ok_parent, self._ok_lasti, self._ok_tail = parent, parent.f_lasti, tail
        return True

    def _validated_op(self, node: Node, func, args, kwargs, tensors: list, scalars: list, frame):
        __tracebackhide__ = True
        if node.kind in DEFERRED and not (node.immediate and _all_local(tensors)) and not self._reaches_python_memory(node, tensors):
            if node.immediate is CHECK_INDEX:
                name = node.info.name
                out: bool | None
                if node.mask and name in _INDEX_INTS and _ints_out_of_range(name, args, kwargs or {}):
                    out = True
                else:
                    idx = _index_of(name, tensors) if _checks_index(name, tensors) else None
                    out = _out_of_range(name, args, kwargs or {}, tensors, idx)
                    if node.caught and out is False and not self._unwritten(idx):
                        out = None  # (a block may write it yet: its values are not known without waiting)
                if (out is False or (out is None and not node.caught)) and _scalars_known(node, scalars):
                    return self._defer(node, tensors, scalars)  # (None: not known without waiting)
            elif node.immediate is CHECK_VIEW:
                views = _views(node, func, args, kwargs or {}, tensors)
                if views or (views is None and not node.raised):
                    return self._defer(node, tensors, scalars)
                if views is False:
                    self._raised_at(node.func, node.site)
            elif node.immediate is CHECK_SCALARS:
                if _scalars_known(node, scalars):
                    return self._defer(node, tensors, scalars)
            elif node.immediate is not GRAD_READ:
                return self._defer(node, tensors, scalars)
            elif not self._no_grad_yet(tensors[0]):
                out = self._defer(node, tensors, scalars)
                owner = tensors[0]
                if type(owner) is FutureTensor:
                    return out
                return self._grad_object(owner, out, None if self.runner.busy else owner.grad)
        sources = node.sources
        for slot, t in enumerate(tensors):
            src = t._tn_src if type(t) is FutureTensor else getattr(t, "_tn_src", EXTERNAL)
            if src not in sources[slot]:
                sources[slot].add(src)
        if node.kind == "fetch" and node.info.prop == "grad" and self._grad_known(tensors):
            out = call_from_program(func, args, kwargs or {})
            return self._ran_now(node, node.info, tensors, frame, scalars, out)
        out = self._run_now(node, func, node.info, args, kwargs or {}, tensors, frame, scalars)
        if node.scalars_ok is not None:
            _scalars_ran(node, scalars)
        return out

    def _shares_python_memory(self, t) -> bool:
        """Whether real tensor ``t``'s memory is Python's too: a numpy array's (``torch.from_numpy``,
        ``torch.as_tensor``, ``t.numpy()``), a buffer's (``torch.frombuffer``). torch marks such a
        storage as one it cannot resize. Python reads and writes that memory where the engine does
        not see it: a block reads a snapshot of it (PendingBlock.input), and an op that writes it,
        or returns a view of it, runs at once (_reaches_python_memory). The answer is kept on the
        tensor: True, or the epoch it was found not to be shared in (a new cell, or a numpy export
        since, asks again). The C path asks the same, and takes no op on such a tensor."""
        mark = t.__dict__.get("_tn_numpy")
        if mark is True:
            return True
        epoch = self._memory_epoch
        if mark is epoch:
            return False
        try:
            shared = not t.untyped_storage().resizable()
        except (RuntimeError, NotImplementedError, TypeError, AttributeError):
            shared = False  # (no storage: a subclass of the program's, a sparse tensor)
        t._tn_numpy = True if shared else epoch
        return shared

    def _mark_shared(self, out) -> None:
        """A feed's tensor may be a Python object's memory (``torch.as_tensor(array)``), as in eager:
        found now, its reads are snapshots from then on."""
        if type(out) is torch.Tensor:
            self._shares_python_memory(out)

    def _reaches_python_memory(self, node: Node, tensors: list) -> bool:
        """Whether the op writes into, or returns a view of, a real tensor whose memory Python
        shares (_shares_python_memory): Python may read or write it right after, so it runs now."""
        k = node.alias if node.alias >= 0 else node.views
        if k < 0 and _writes_into(node.info):
            k = 0
        if not 0 <= k < len(tensors):
            return False
        t = tensors[k]
        return _value_shared(t) if type(t) is FutureTensor else self._shares_python_memory(t)

    def _unwritten(self, t) -> bool:
        """Whether no block still to run may write tensor ``t``: no block is queued, and the one
        the skeleton builds does not take it (an in-place op on a real tensor takes it as input)."""
        return not self.runner.busy and id(t) not in self.block.input_ids

    def _on_op(self, func, args, kwargs):
        __tracebackhide__ = True
        if kwargs is None:
            kwargs = {}
        if self.mode == "eager":
            anchor = self.anchor
            boundary = (anchor is not None and func == anchor.func and self._is_anchor(anchor, args, kwargs, sys._getframe(3))
                        and self._starts_a_turn())  # (not a second call of the anchor's function in a turn)
            out = call_from_program(func, args, kwargs)  # (its warnings: eager's)
            if boundary:
                self._eager_boundary()
            return out
        info = op_info(func)
        if info.kind == "meta":
            try:
                self.meta_funcs.add(func)  # the C path runs these at once
            except TypeError:
                pass
            return _run_meta(func, args, kwargs)
        tensors: list = []
        scalars: list = []
        spec = scan(args, kwargs, tensors, scalars)
        if scalars and floats_decide_shape(info.name):
            spec = with_floats(spec, scalars)  # (the C path's spec has markers there: it hands these calls here)
        if not tensors and func in self.passthrough:
            return call_from_program(func, args, kwargs)
        frame = sys._getframe(3)
        if _from_outside(frame, self.roots):
            return func(*real(args), **real(kwargs))
        site = location_key(frame, self.roots)
        grad = _grad_key()
        if info.kind == "feed":
            spec = "feed"
        kspec = spec
        if scalars and self.graph.int_masks:
            mask = self.graph.int_masks.get((func, site))
            if mask:
                kspec = generalize(spec, mask)
                if (func, site) in self.graph.shape_keyed:
                    kspec = (kspec, _out_shapes(func, args, kwargs, tensors, scalars))
        if self.state is SKELETON:
            in_meta = _in_meta(tensors)
            try:
                node = self.graph.index.get((func, site, kspec, in_meta, grad))
            except TypeError:
                node = None
            if node is None and scalars:
                node = self._generalize(func, site, spec, in_meta, grad, frame, call=(args, kwargs, tensors, scalars))
            if node is None:
                node = self._synthesize_variant(func, info, site, kspec, in_meta, grad, args, kwargs, scalars, tensors)
            if node is None or (node.count < self.trace_iters and not node.synthesized):
                return self._fallback(f"{info.name}: an operation the trace has not seen here", frame,
                                      func, info, args, kwargs, tensors, scalars, spec, kspec, site, grad)
            if not self._known_edge(self.cursor, node):
                # A known op, but never seen after the last one: the program took a path the trace
                # has not (a leaf-only tree in a recursive model). What the path does to autograd
                # is not known (which parameters get a .grad, read next by the optimizer), so the
                # rest of the iteration is traced.
                return self._fallback(f"{info.name}: an operation the trace has not seen after "
                                      f"{self.cursor.info.name if self.cursor.info else 'the start'}", frame,
                                      func, info, args, kwargs, tensors, scalars, spec, kspec, site, grad)
            if self.mode == "auto" and info.kind != "feed":
                # keyed by the code's id (a code object hashes slowly); the pair holds the code,
                # so that id is never another code's while the entry lives
                code = frame.f_code
                key = (func, id(code), frame.f_lasti)
                pair = self.cursor.fast.get(key)
                if pair is None or pair[0] is not code:
                    pair = self.cursor.fast[key] = (code, [])
                    self.cursor.hot = None
                if node not in pair[1]:
                    pair[1].append(node)
            return self._validated_op(node, func, args, kwargs, tensors, scalars, frame)
        return self._trace(func, info, args, kwargs, tensors, scalars, spec, kspec, site, grad, frame)

    def _known_edge(self, prev: Node, node: Node) -> bool:
        """Whether ``node`` after ``prev`` is a path the trace took: the edge itself, or one
        between their families (a variant of an op in shapes or ints, ``x * i``, or a shape made
        by ``_synthesize_variant``, is the same path). A cell's first op follows nothing."""
        if node in prev.succ or prev is self.graph.root:
            return True
        by_site = self.graph.by_site
        return any(n.family == node.family for p in by_site.get((prev.func, prev.site), ())
                   if p.family == prev.family for n in p.succ)

    # -- skeleton ------------------------------------------------------------------------------

    def _defer(self, node: Node, tensors: list, scalars: list):
        # The hot path of co-execution: everything here runs once per deferred op.
        blk = self.block
        grad_op = node.grad_op
        kind = blk.kind
        if blk.ops and (node is self.anchor or node.barrier or (grad_op and kind == 1) or (not grad_op and kind == 2)):
            # Blocks end at iteration ends; autograd runs in a block of its own; and pure compute
            # is kept apart from the ops that touch .grad, so that it can be compiled.
            self.flush()
            blk = self.block
            kind = 0
        if kind == 0:
            blk.kind = (1, 2, 3)[grad_op]
        elif grad_op == 2:
            blk.kind = 3
        # Producers are recorded, not enforced: values bind by object and the output metadata
        # follows from the key, so a new producer (an optimizer buffer made in another
        # iteration, a layer of an nn.Sequential) is a new data edge, not a reason to trace.
        sources = node.sources
        wiring = []
        slot = 0
        for t in tensors:
            if type(t) is FutureTensor:
                src = t._tn_src
                if t._tn_blk is blk:
                    wiring.append(t._tn_vidx)
                else:
                    k = blk.input_ids.get(id(t))
                    wiring.append(-1 - (blk.input(t, node.info.prop is None and _value_shared(t)) if k is None else k))
            else:
                src = getattr(t, "_tn_src", EXTERNAL)
                k = blk.input_ids.get(id(t))
                # (a property, its .grad, is the tensor's own, not a snapshot's)
                wiring.append(-1 - (blk.input(t, node.info.prop is None and self._shares_python_memory(t))
                                    if k is None else k))
            if src not in sources[slot]:
                sources[slot].add(src)
            slot += 1
        op, wired = node.last_op, tuple(wiring)
        if not op or op[1] != wired:  # (one op tuple while the wiring repeats: block keys compare by identity)
            op = node.last_op = (node, wired)
        blk.ops.append(op)
        passed = node.passed
        if passed:
            blk.floats.extend([scalars[k] for k in passed])
        if node.alias >= 0:
            out = tensors[node.alias]
        elif node.out_struct is NONE:
            out = None
        else:
            getter_src = _out_src(node, tensors) if node.info.prop is not None else None
            futs = blk.futs
            pool = node.pool or _new_pool(node)
            values = []
            for j in range(len(node.out_meta)):
                # Recycle the future the ring's position names when nothing but the ring holds it
                # (three references: the ring, ``fut`` and getrefcount's argument): a block that
                # is queued or running holds its outputs, so its value is never overwritten.
                ring = pool[j]
                pos = ring[0]
                fut = ring[1 + pos] if len(ring) > 1 else None
                if fut is not None and _getrefcount(fut) == 3 and not _getweakrefcount(fut):
                    ring[0] = (pos + 1) % (len(ring) - 1)
                    fut._tn_val = None
                    if getter_src is not None:
                        fut._tn_src = getter_src
                else:
                    fut = None  # (not held here while _make_future looks at the ring)
                    fut = self._make_future(node, j, getter_src)
                fut._tn_blk = blk
                fut._tn_vidx = len(futs)
                futs.append(fut)
                values.append(fut)
            out = values[0] if node.out_struct is TENSOR else build_out(node.out_struct, values)  # type: ignore[arg-type]
        node.count += 1
        # _advance's common case, inline: count the edge, move the cursor.
        cursor = self.cursor
        succ = cursor.succ
        if node in succ:
            succ[node] += 1
            node.pred[cursor] += 1
        else:
            self.graph.step(cursor, node)
        self.cursor = node
        self.op_counter = now_op = self.op_counter + 1
        anchor = self.anchor
        if node is anchor or self.explicit_iterations or node.cell_mark is not self._cell_token \
                or now_op > self._anchor_limit or node.seen_at < self._anchor_first \
                or (anchor is not None and node.family == anchor.family):
            self.cursor = cursor
            self.op_counter -= 1
            self._advance(node, stepped=True)
        else:
            node.seen_at = now_op
        self.ops_coexec += 1
        self._validated = 1
        self.deferred_total += 1
        if len(blk.ops) >= self.max_block or node.barrier:
            self.flush()
        if grad_op == 1 and type(tensors[0]) is not FutureTensor:
            self._grad_set(tensors)  # (p.grad = x: the table follows)
        return out

    def _make_future(self, node: Node, j: int, getter_src):
        """A new future for output ``j`` of ``node``, put in its ring where the position stands.

        The ring grows (up to ``_RING``) while the future at its position is still held: a node
        that runs many times an iteration (``p.grad`` in a loop over parameters, with all the
        results kept in a list) gets one future per run, each reused at the next iteration.
        ``y = f(x)`` in a loop settles at two, since the last ``y`` is held while the next is made.
        """
        ring = node.pool[j]
        pos, n = ring[0], len(ring) - 1
        fut = self._pooled_future(node.out_meta[j], getter_src or (node.family, j))
        if n and _getrefcount(ring[1 + pos]) == 2 and _getweakrefcount(ring[1 + pos]):
            # Only the ring holds it, and the program keeps a weak reference (a
            # WeakValueDictionary of results): reused, it would name another value. It goes.
            ring[1 + pos]._tn_pooled = False
            ring[1 + pos] = fut
            ring[0] = (pos + 1) % n
        elif n < _RING:
            ring.insert(1 + pos, fut)  # before the held one: the position still names it next
            ring[0] = (pos + 1) % (n + 1)
        else:
            ring[1 + pos]._tn_pooled = False  # evicted: only the program holds it now
            ring[1 + pos] = fut
            ring[0] = (pos + 1) % n
        return fut

    def _pooled_future(self, meta: tuple, src) -> FutureTensor:
        """A future with ``meta``, not yet computed, for a node's ring (the caller places it in its block)."""
        fut = _make_wrapper(FutureTensor, meta[0], dtype=meta[1], device=meta[2], requires_grad=meta[3])
        fut._tn_meta = meta
        fut._tn_src = src
        fut._tn_val = None
        fut._tn_owner = self
        fut._tn_pooled = True
        fut._tn_blk, fut._tn_vidx = None, -1
        return fut

    def _run_now(self, node: Node, func, info, args, kwargs, tensors: list, frame, scalars: list):
        """A fetch, a data-dependent op or a feed: run it for real, after the blocks before it."""
        __tracebackhide__ = True
        has_future = any(type(t) is FutureTensor for t in tensors)
        waited_ms = -1.0
        # Wait for the blocks before it, unless it is a feed or reads only skeleton-local tensors
        # (no block ever took them: see _all_local).
        if (self.block.ops or self.runner.busy) and (has_future or (node.kind != "feed" and not _all_local(tensors))):
            t0 = _perf()
            self.materialize()
            waited_ms = (_perf() - t0) * 1e3
        if has_future:
            args, kwargs = real((args, kwargs))
        out = call_from_program(func, args, kwargs)
        return self._ran_now(node, info, tensors, frame, scalars, out, has_future, waited_ms)

    def _ran_now(self, node: Node, info, tensors: list, frame, scalars: list, out,
                 has_future: bool = False, waited_ms: float = -1.0):
        """The rest of _run_now, once the op ran: its output's provenance, its node, the cursor, the
        sync event. (The C path runs ops of skeleton-local tensors itself and comes here for an
        output it does not take.)"""
        __tracebackhide__ = True
        struct = out_structure(out)
        if struct != node.out_struct:
            node.kind = "fetch"  # its output kind depends on state: always run it for real
        elif node.alias >= 0 and has_future and type(tensors[node.alias]) is FutureTensor:
            out = self._follow_in_place(tensors[node.alias], out)
        elif _writes_into(info) and tensors and type(tensors[0]) is FutureTensor:
            self._follow_in_place(tensors[0], tensors[0]._tn_val)  # (see _new_node)
        if node.kind == "feed":
            self._mark_shared(out)
        if struct is not None:
            self._track_locals(node, tensors, out_tensors(out, struct))
            getter_src = _out_src(node, tensors)
            for j, t in enumerate(out_tensors(out, struct)):
                if not any(t is x for x in tensors):  # an input returned (in place) keeps its provenance
                    t._tn_src = getter_src or (node.family, j)
        if self.runner.captured is not None and node.kind != "feed" and struct is not None:
            self.runner.capture_now((self.cell, self.iter_index), _Immediate(node, scalars),
                                    [t.value() if type(t) is FutureTensor else t for t in tensors],
                                    out_tensors(out, struct))
        node.count += 1
        self._advance(node)
        self.ops_coexec += 1
        self._validated = 1
        if waited_ms >= 0:
            self.iter_syncs += 1
            # (the line it runs at: a node called from two lines of a cell has one ``line``)
            where = str(user_line(frame) or node.line or "")
            text = self._sync_text.get((node, where))
            if text is None:  # one reason and one location string per node and line, for its events
                text = self._sync_text[(node, where)] = (f"{info.name}: Python needs a value", where)
            self.log.add(Event("sync", self.cell, self.iter_index, text[0], text[1], waited_ms))
        if (node.grad_op or info.name == "__delete__") and tensors and type(tensors[0]) is not FutureTensor:
            out = self._grad_ran(node, tensors, out)
        elif info.prop == "_base" and out is not None and tensors:
            out = self._held_base(tensors[0], out)
        return out

    def _no_grad_yet(self, t) -> bool:
        """Whether a ``.grad`` the trace saw as a tensor is None now, with nothing queued that could
        set it: then it is None, and the read runs for real (its node becomes a ``fetch``).

        The trace's answer is a prediction: a later iteration, or cell, whose backward does not
        reach the parameter (an optimizer that also holds a head the loop no longer uses) left it
        None, and the optimizer's deferred step received None. On a CPU, blocks run at each
        backward, so the real ``.grad`` is known here; while blocks are queued on the
        GraphRunner's thread, the prediction stands."""
        # (busy first: while a block runs on the GraphRunner's thread, its backward may be writing
        # this .grad, and reading it meanwhile races with the autograd engine)
        return not self.runner.busy and type(t) is not FutureTensor and t.grad is None

    def _grad_known(self, tensors: list) -> bool:
        """Whether a ``.grad`` read of real tensor ``tensors[0]`` (a getter: one tensor) is answered by
        the real ``.grad`` without waiting: no block is queued (on a CPU, blocks run at each
        backward), and the pending one sets no ``.grad`` of it (the gradient table's object was not
        recorded there). A read the trace first saw as None (``zero_grad(set_to_none=False)``
        before the first backward) is a fetch, and waited for the blocks before it at each
        iteration, for each parameter. (What the gradient's values will be, the pending block may
        still write: ops on it are deferred after those writes, and a read of its values waits.)"""
        if len(tensors) != 1 or type(tensors[0]) is FutureTensor or self.runner.busy:
            return False
        entry = self._grad_entry(tensors[0])
        return entry[1] is not _UNFOLLOWED and entry[2] is not self.block

    def _grad_entry(self, owner) -> list:
        """The gradient table's entry of real tensor ``owner`` (see ``_grad_object``), made where it
        has none. A non-leaf's ``.grad`` is not followed: retain_grad's hook makes a new tensor at
        each backward, which no op the skeleton sees would say. (The C path calls this where it
        finds no entry.)"""
        table = self._grad_objs
        key = id(owner)
        entry = table.get(key)
        if entry is not None and entry[0]() is owner:
            return entry

        def forget(ref, key=key):  # (the tensor is gone: so is its entry, and what it kept)
            if (e := table.get(key)) is not None and e[0] is ref:
                del table[key]

        entry = table[key] = [weakref.ref(owner, forget), None if owner.is_leaf else _UNFOLLOWED, None]
        return entry

    def _grad_object(self, owner, out, real):
        """What a deferred read of real tensor ``owner``'s ``.grad`` returns: the object the program
        got for that gradient last (a future, or the tensor itself) while the gradient is still that
        object, as eager's reads return one object until a setter (``p.grad = None``: zero_grad) or
        a backward with nothing to sum into makes a new one (backward sums into an existing
        ``.grad`` in place); else ``out``, the read's new future, which the table keeps. A future per
        read made ``w.grad is w.grad`` False, and a gradient kept from an earlier iteration was
        never the one read now. ``real``: the real ``.grad`` where no block is queued (None where
        one is): unless the table's object was recorded in the pending block, it must be that
        tensor, or a future of it; where blocks are queued, the table's account stands.
        (_fastpath.c's grad_object does the same.)"""
        entry = self._grad_entry(owner)
        obj = entry[1]
        if obj is _UNFOLLOWED:
            return out
        if obj is not None and (real is None or entry[2] is self.block or obj is real
                                or (type(obj) is FutureTensor and obj._tn_val is real)):
            return obj
        entry[1], entry[2] = out, self.block
        return out

    def _grad_set(self, tensors: list) -> None:
        """A deferred ``p.grad = x`` (``x`` or None) of real tensor ``p``: the table's object is
        ``x`` (eager's ``p.grad is x``), recorded in the pending block. (_fastpath.c's grad_set.)"""
        entry = self._grad_entry(tensors[0])
        if entry[1] is not _UNFOLLOWED:
            entry[1], entry[2] = tensors[1] if len(tensors) > 1 else None, self.block

    def _grad_ran(self, node: Node, tensors: list, out):
        """A ``.grad`` of real tensor ``tensors[0]`` read, set or deleted for real (traced, or run
        now): the table's object is what the program holds for it. A read returns the table's
        object where that is a future of this very tensor (the program got it before)."""
        entry = self._grad_entry(tensors[0])
        obj = entry[1]
        if obj is _UNFOLLOWED:
            return out
        if node.grad_op == 2:
            if out is not None and obj is not None and (obj is out or (type(obj) is FutureTensor and obj._tn_val is out)):
                return obj
            entry[1] = out
        elif node.grad_op == 1:
            entry[1] = tensors[1] if len(tensors) > 1 else None
        elif _descriptor_name(node.func) == "grad":  # del p.grad
            entry[1] = None
        entry[2] = None
        return out

    def _held_base(self, view: Tensor, base: Tensor) -> Tensor:
        """``view._base``, read for real (``base``): the object the program holds for that tensor,
        the future whose value it is where there is one, else ``base``. Searched among the futures
        that the producers of the view's input (its base, or a view of it: theirs in turn) keep in
        their rings: a ``_base`` read is rare, and this is where its base came from."""
        src = view._tn_src if type(view) is FutureTensor else getattr(view, "_tn_src", None)
        if type(src) is not tuple or len(src) != 2:
            return base
        by_family: dict = {}
        for node in self.graph.nodes:
            by_family.setdefault(node.family, []).append(node)
        seen = {src[0]}
        families = [src[0]]
        while families:
            producers = {p for family in families for node in by_family.get(family, ()) if node.sources
                         for p in node.sources[0] if type(p) is tuple and len(p) == 2 and p[0] not in seen}
            for family, j in producers:
                for node in by_family.get(family, ()):
                    ring = node.pool[j] if j < len(node.pool) else ()
                    for fut in ring[1:]:
                        if fut._tn_val is base:
                            return fut
            families = list({family for family, _ in producers})
            seen.update(families)
        return base

    def _follow_in_place(self, fut: FutureTensor, out):
        """An op that changed a future's value in place ran for real (``k.requires_grad_()``,
        ``h.detach_()``, ``h.unsqueeze_(0)``): the future is still what the program holds, so it
        takes the value's new ``requires_grad``, shape and strides, and the op returns it, as
        eager returns its input. (It leaves its node's ring, a fresh future in its place: a
        recycled future keeps its metadata.) Where the wrapper cannot take the value's shape as a
        view of itself (more elements: ``resize_``, ``x.data = y`` of another size) or the value
        has another dtype (``x.data = y.double()``), the future takes the metadata of a new
        wrapper made for it (``Tensor.data``'s setter, which swaps a tensor's metadata for
        another's of the same kind)."""
        value = fut._tn_val
        meta = fut._tn_meta
        if out is not value or value is None:
            return out
        if value.shape == meta[0] and value.requires_grad == meta[3] and value.dtype == meta[1] \
                and value.device == meta[2]:
            return fut
        if fut._tn_pooled:
            self._leave_ring(fut)
        with torch._C.DisableTorchFunctionSubclass():
            if value.shape != meta[0] or value.dtype != meta[1] or value.device != meta[2]:
                viewed = value.dtype == meta[1] and value.device == meta[2]
                if viewed:
                    try:
                        _restride(fut, value)
                    except RuntimeError:  # out of the wrapper's bounds
                        viewed = False
                if not viewed:
                    other = FutureTensor((value.shape, value.dtype, value.device, False), fut._tn_src, None)
                    with torch._C.DisableTorchFunction():
                        torch._C.TensorBase.data.__set__(fut, other)  # type: ignore[attr-defined]
                        if value.dim() and value.stride() != fut.stride():
                            _restride(fut, value)
            if value.requires_grad != meta[3]:
                torch._C.TensorBase.requires_grad_(fut, value.requires_grad)
        fut._tn_meta = interned_meta((value.shape, value.dtype, value.device, value.requires_grad))
        return fut

    def _leave_ring(self, fut: FutureTensor) -> None:
        """Take ``fut`` out of its node's ring of futures, a fresh one in its place."""
        family = fut._tn_src[0] if type(fut._tn_src) is tuple else None
        for node in self.graph.nodes:
            if node.family == family:
                for j, ring in enumerate(node.pool):
                    for k in range(1, len(ring)):  # (by identity: == on tensors is an op)
                        if ring[k] is fut:
                            ring[k] = self._pooled_future(node.out_meta[j], fut._tn_src)
        fut._tn_pooled = False

    def flush(self) -> None:
        """Hand the pending block to the GraphRunner."""
        if self.cursor.barrier:  # (the C path and _validated_op flush after a backward)
            self._note_backward()
        run = self._take_run()
        if run is not None:
            self.runner.submit(run)

    def _take_run(self) -> BlockRun | None:
        """The pending block as a run of its compiled block; a new pending block begins."""
        if self._native is not None:
            return self._native.take_run()  # the same, in C
        blk = self.block
        if not blk.ops:
            return None
        self._ok_parent = None  # a frame kept for the fast path must not keep the user's tensors alive
        futs = blk.futs
        # A future is an output when the program still holds it: more references than the block's
        # list, getrefcount's argument and (while its node's ring keeps it) the ring.
        outputs = _live_outputs(futs)
        blk.futs = []
        key = (tuple(blk.ops), len(blk.inputs), outputs)
        compiled = self.compiled.get(key)
        if compiled is None:
            compiled = self._new_block(key)
        self.block = PendingBlock()
        self.iter_blocks += 1
        run = BlockRun(compiled, self.block_ids[id(compiled)], blk.inputs, blk.floats,
                       [futs[i] for i in outputs], self.cell, self.iter_index)
        # The old block lives on as the identity its futures name (``_tn_blk``): it holds nothing.
        blk.inputs, blk.input_ids, blk.floats, blk.ops = [], {}, [], []
        return run

    def _new_block(self, key: tuple) -> CompiledBlock:
        ops, n_inputs, outputs = key
        spec = BlockSpec(ops, n_inputs, outputs)
        # A block that is never compiled shares its generated code with the blocks that differ from
        # it in shapes and ints only (FX's code generation cost faster_rcnn ~3 ms a block, 3-4
        # blocks an iteration; a sampler whose length grows each step, a new block every step); a
        # compiled one keeps its own (Dynamo would count shapes as recompiles).
        eager = stays_eager(spec, self.backend)
        code = code_key(spec) if eager else None
        gm = self._code.get(code) if code is not None else None
        compiled = CompiledBlock(spec, self.backend, on_compiled=self._on_compiled, gm=gm, ints=eager)
        if code is not None and gm is None:
            self._code[code] = compiled.gm
        self.compiled[key] = compiled
        self._on_cuda = self._on_cuda or compiled.on_cuda
        block_id = self.block_ids[id(compiled)] = len(self.block_ids)
        self.log.add(Event("block", self.cell, self.iter_index, block=block_id,
                           nodes=tuple(node.id for node, _ in ops), backend=self.backend))
        return compiled

    def _on_compiled(self, compiled: CompiledBlock, problem: str) -> None:
        self.log.add(Event("compile", self.cell, self.iter_index, problem, "", compiled.compile_ms,
                           block=self.block_ids.get(id(compiled), -1), backend=compiled.backend))

    def _on_run(self, run: BlockRun, elapsed: float) -> None:
        self.log.add_run(run.block_id, elapsed * 1e3)

    def _on_shape(self, run: BlockRun, index: int, shape) -> None:
        """A block's output came out another shape than its future said: the op's output shape
        depends on its inputs' values (``torch.arange(n)`` with a tensor ``n``), which no list of
        such ops (``ops._DATA_DEPENDENT``, ``values_decide_shape``) names. The value is right;
        the program may have read the wrong shape once. From now on the node runs for real."""
        spec = run.block.spec
        value, start = spec.outputs[index], 0
        for node, _ in spec.ops:
            n = produces(node)
            if value < start + n:
                break
            start += n
        else:
            return
        if node.kind in DEFERRED:
            node.kind = "sync"
            predicted = tuple(node.out_meta[value - start][0]) if value - start < len(node.out_meta) else ()
            self.log.add(Event("fallback", run.cell, run.iteration,
                               f"{node.info.name}: its output's shape depends on its inputs' values ({predicted} "
                               f"predicted, {tuple(shape)} computed); it runs for real from now on",
                               str(node.line or "")))

    def sync(self) -> None:
        """Wait for the GraphRunner; re-raise here what a block raised."""
        __tracebackhide__ = True
        if self.runner.wait() is not None:
            self.raise_block_error()

    def materialize(self) -> None:
        """Make every future the program holds real: flush, then wait.

        The program waits anyway, so once the GraphRunner has run the blocks before it, the
        pending block runs right here: two thread hand-overs fewer per sync point. (Not where
        another torch-function mode or inference mode is active: the block must see the state
        the GraphRunner's thread has.)
        """
        __tracebackhide__ = True
        if self._held and _get_ident() == self._owner:
            self._wait_held()
        if self.block.ops and not _len_mode_stack() and not _is_inference():
            run = self._take_run()
            self.sync()
            if run is not None:
                self.runner.run_here(run)
        else:
            self.flush()
        self.sync()

    def value_elsewhere(self, fut: FutureTensor) -> torch.Tensor:
        """The value of ``fut`` for a thread other than the program's (a logging thread, a thread
        pool computing metrics): it must not touch the skeleton while the program runs it.

        Where ``fut``'s block was handed over, wait for the GraphRunner. Where it is still the
        program's pending block, hold the program's thread out of the engine (its next op, loop
        tick or sync waits) once it is outside (in the user's code, or blocked: waiting for this
        very thread, say), and hand the block over from here. An error a block raised stays the
        program's, raised in its thread; here the value is lost.
        """
        with self._elsewhere:
            while fut._tn_val is None:
                if self._owner != -1 and getattr(fut, "_tn_blk", None) is self.block:
                    if self._hold_program():
                        try:
                            self.flush()
                        finally:
                            self._release_program()
                        continue
                else:
                    self.runner.wait()
                    # handed over: run by the GraphRunner, or by the program's thread (inline),
                    # which is then inside the engine; or dropped after an error
                    if fut._tn_val is not None or self.runner.error is not None or not self._program_in_engine():
                        break
                time.sleep(0.0005)  # the program is inside the engine: it leaves it soon
        val = fut._tn_val
        if val is None:
            raise ValueLostError("this tensor was never computed: an earlier operation of the same "
                                 "co-executed program raised an exception. Re-run the cell to recompute it.")
        return val

    def _hold_program(self) -> bool:
        """Hold the program's thread at its next entry to the engine; False (and released) where
        it is inside it now: in the C path, or in this package's code (``_in_engine``)."""
        with self._held_cv:
            self._held = True
        self._route()  # every call goes to on_op, which waits
        if self._program_in_engine():
            self._release_program()
            return False
        return True

    def _program_in_engine(self) -> bool:
        """Whether the program's thread is inside the engine: in the C path, or in this package's
        code (``_in_engine``), as opposed to the user's code or between cells."""
        if self._owner == -1:
            return False
        native = getattr(self._mode_obj, "native", None)
        frame = sys._current_frames().get(self._owner)
        return (native is not None and native.in_op) or (frame is not None and _in_engine(frame))

    def _release_program(self) -> None:
        with self._held_cv:
            self._held = False
            self._held_cv.notify_all()
        self._route()

    def _route(self) -> None:
        """Send every call to the Python path (the C one takes none) while an interrupt waits,
        another thread holds the program (``_hold_program``), or the default dtype is not float32
        (the C path's keys do not hold it: see ``_grad_key``)."""
        native = getattr(self._mode_obj, "native", None)
        if native is not None:
            native.interrupt = self._interrupted or self._held or _get_default_dtype() is not _FLOAT32

    def _wait_held(self) -> None:
        with self._held_cv:
            while self._held:
                self._held_cv.wait()

    def raise_block_error(self) -> None:
        __tracebackhide__ = True
        error = self.runner.take_error()
        if error is None:
            return
        self.block = PendingBlock()
        self.state = TRACE
        self._validated = 0
        exc = error.exc
        if error.node is not None and error.node.line is not None:
            exc.add_note(f"terra_nb: raised by {error.node.name} at {error.node.line}: {error.node.line.text}")
        self.log.add(Event("error", self.cell, self.iter_index, f"{type(exc).__name__}: {exc}",
                           str(error.node.line) if error.node is not None and error.node.line else ""))
        exc._tn_logged = True  # type: ignore[attr-defined]
        if error.node is not None and error.node.line is not None:
            error.node.line.raise_here(exc)
        raise exc.with_traceback(None)

    def _fallback(self, reason: str, frame, func, info, args, kwargs, tensors, scalars, spec, kspec, site, grad):
        __tracebackhide__ = True
        self.materialize()
        if self._validated:
            self.iter_fallbacks += 1
            self.log.add(Event("fallback", self.cell, self.iter_index, reason, str(user_line(frame) or "")))
            self._hold_trace = True  # the rest of this iteration runs traced; resume at the next one
        self.state = TRACE
        return self._trace(func, info, args, kwargs, tensors, scalars, spec, kspec, site, grad, frame)

    # -- trace ---------------------------------------------------------------------------------

    def _trace(self, func, info, args, kwargs, tensors: list, scalars: list, spec, kspec, site: tuple, grad: tuple, frame):
        __tracebackhide__ = True
        sources = [t._tn_src if type(t) is FutureTensor else getattr(t, "_tn_src", EXTERNAL) for t in tensors]
        given = tensors
        if any(type(t) is FutureTensor for t in tensors):
            self.materialize()
            tensors = [t.value() if type(t) is FutureTensor else t for t in tensors]
            args, kwargs = real((args, kwargs))
        # before the call: an op that changes its input's metadata in place (requires_grad_,
        # unsqueeze_, resize_) is keyed by what the skeleton will see when it comes again
        in_meta = tuple([meta_of(t) for t in tensors])
        shown = _SHOWN[0]
        try:
            out = call_from_program(func, args, kwargs)  # (its warnings: eager's)
        except Exception:
            self._raised((func, site, kspec, in_meta, grad), spec, info, args, kwargs, tensors, scalars, sources, frame)
            raise
        struct = out_structure(out)
        if not tensors and (struct is None or struct is NONE):
            try:
                self.passthrough.add(func)
            except TypeError:
                pass
            return out
        key = (func, site, kspec, in_meta, grad)
        try:
            node = self.graph.index.get(key)
        except TypeError:
            return out  # an unhashable constant (a numpy array argument): runs eagerly, untracked
        outs = out_tensors(out, struct) if struct is not None else []
        if node is None and scalars:
            node = self._generalize(func, site, spec, in_meta, grad, frame, struct, outs)
        if node is None:
            node = self._new_node(key, spec, func, info, args, kwargs, tensors, scalars, struct, outs, frame)
        elif struct != node.out_struct:
            node.kind = "fetch"
        elif node.kind == "op" and node.alias < 0 and [meta_of(t) for t in outs] != node.out_meta:
            node.kind = "sync"  # same inputs, another output shape: the shape depends on data
        if _SHOWN[0] != shown and node.kind in DEFERRED and _shown_every_time(_SHOWN[1], self._filters_at_start):
            node.kind = "sync"  # (see _SHOWN)
        if node.kind == "feed":
            self._mark_shared(out)
        self._track_locals(node, tensors, outs)
        if node.alias < 0:
            getter_src = _out_src(node, tensors, sources)
            for j, t in enumerate(outs):
                if not any(t is x for x in tensors):  # (an input returned keeps its provenance, as in _ran_now)
                    t._tn_src = getter_src or (node.family, j)
        known_edge = self._known_edge(self.cursor, node)
        self.graph.observe(node, self.cursor, tensors, scalars, sources)
        self._advance(node)
        if not known_edge:
            self._hold_trace = True
        self.ops_traced += 1
        if self.recording is not None:
            self.recording.append((node, tensors, scalars, outs))
        if (self.mode == "auto" and not self._hold_trace and known_edge
                and self.graph.mature(node, self.trace_iters)):
            # (after a path the trace had not taken, co-execution resumes only where the trace
            # knows what follows: see the skeleton's edge check in _on_op)
            self.state = SKELETON
            self._validated = 0
        if (node.grad_op or info.name == "__delete__") and given and type(given[0]) is not FutureTensor:
            out = self._grad_ran(node, given, out)
        elif info.prop == "_base" and out is not None and given:
            out = self._held_base(given[0], out)
        return out

    def _raised(self, key: tuple, spec, info, args, kwargs, tensors, scalars, sources, frame) -> None:
        """A traced call raised (``x.view(-1)`` of a transposed ``x`` inside the program's try): where
        a node has its key (the call succeeded elsewhere), the edge to it is a path the program
        takes, and the skeleton checks the call there as anywhere else. Without it, the view after
        ``base.t()`` was never seen after ``t``, and fell back every time it came (every other
        iteration, forever, where the program alternates). Inside the program's try, a call with no
        node of its key becomes one that runs for real (a ``fetch``: its output, none so far, is not
        predicted), so that the skeleton raises it there as eager does and goes on with the except
        clause; a call that raised every time (``try: x.view(3, 2)``) fell back every iteration.
        The cursor stays: the op did nothing."""
        func, site = key[0], key[1]
        self._raised_at(func, site)
        try:
            node = self.graph.index.get(key)
        except TypeError:
            return
        if node is None and caught_here(frame, self.roots):
            node = self._new_node(key, spec, func, info, args, kwargs, tensors, scalars, None, [], frame)
            self.graph.observe(node, self.cursor, tensors, scalars, sources)
        elif node is not None:
            self.graph.step(self.cursor, node)

    def _raised_at(self, func, site: tuple) -> None:
        """A call at this site raised: its nodes, and those made there later, say so (``raised``:
        a view of a future there waits for its value from now on, see CHECK_VIEW)."""
        self.graph.raised_sites.add((func, site))
        for node in self.graph.by_site.get((func, site), ()):
            node.raised = True

    def _track_locals(self, node: Node, tensors: list, outs: list) -> None:
        """Keep the skeleton-local mark (see _all_local) true: set it, pass it on, or clear it."""
        if not tensors:
            if outs and all(_is_small_cpu(t) for t in outs):  # made from Python data: local
                self._mark_local(outs)
                if len(self._locals) > 4096:
                    self._locals = [r for r in self._locals if r() is not None]
        elif (node.immediate and node.immediate is not CHECK_INDEX and node.immediate is not CHECK_VIEW) \
                or node.kind == "fetch":
            if node.immediate and _all_local(tensors):
                self._mark_local([t for t in outs if not t.__dict__.get("_tn_local")])
        else:  # any other use (a view, a setter like ``p.grad = t``) may let a block write it
            for t in tensors:
                if type(t) is not FutureTensor and t.__dict__.get("_tn_local"):
                    t._tn_local = False

    def _mark_local(self, tensors: list) -> None:
        for t in tensors:
            t._tn_local = True
            self._locals.append(weakref.ref(t))

    def _forget_locals(self, remember: bool = False) -> None:
        """Plain eager execution does not keep the marks: clear them all.

        With ``remember`` (eager iterations within a cell: a baseline, auto's probe or stretch; a
        cell's end) the tensors are kept with what refers to them, for ``_restore_locals``, and so
        are those an eager stretch the cell ended in still keeps (the end found no mark to remember).
        """
        forgotten = self._forgotten if remember else []
        for ref in self._locals:
            t = ref()
            if t is not None:
                if remember and t.__dict__.get("_tn_local"):
                    forgotten.append((ref, _referents(t)))
                t._tn_local = False
        self._locals = []
        self._forgotten = forgotten

    def _restore_locals(self) -> None:
        """Co-execution resumes after eager iterations: a tensor that was skeleton-local before them
        is again if nothing new refers to it (as many Python references, as many users of its
        storage). Eager code that stored it elsewhere (``p.grad = t``), viewed it or shared it with
        numpy shows in one of the two, and the tensor stays unmarked (its reads then wait). Without
        this, an optimizer's step counters made a sync each once eager iterations had run (gpt2
        under auto: 29 syncs an iteration instead of 1).
        """
        for ref, before in self._forgotten:
            t = ref()
            if t is not None and before is not None and _is_small_cpu(t) and _referents(t) == before:
                self._mark_local([t])
        self._forgotten = []

    def _generalize(self, func, site, spec, in_meta, grad, frame, struct=None, outs=None, call=None) -> Node | None:
        """An int that differs from a sibling node's where the output cannot depend on it: a feed.

        Traced calls (``struct``, ``outs`` given) also check that the output matches the sibling's.
        In the skeleton (``xs[step]`` first varying after an eager baseline) the op's rule alone
        decides; without it every new ``step`` made a shape variant and a new block. A window's
        bounds (``data[i:i + n]``: ``ops.feedable_ints``) become feeds where the output's shape is the
        sibling's (on meta tensors in the skeleton: ``call`` is the call's arguments), and the
        site's nodes are keyed by their output shapes from then on: a window clamped at the end of
        its dimension is another node. Before, each new window was a variant, a node and a block.
        An index that varies can be out of range: where the program catches that (``try: x = xs[i]
        except IndexError: break``) the node runs for real from then on, so that the error is
        raised at the call, as eager raises it.
        """
        name = op_info(func).name
        feedable, slices = feedable_ints(name, spec)
        if not feedable and not slices:  # (a size: no sibling can differ only where feeds may)
            return None
        only_shaped = not feedable  # (every int that may become a feed does so keyed by shape)
        feedable = feedable | slices
        out_meta = [meta_of(t) for t in outs] if outs is not None else None
        shapes = [meta[0] for meta in out_meta] if out_meta is not None else None
        if only_shaped and shapes is None and call is not None:
            shapes = list(_out_shapes(func, *call) or ())
        ints = spec_ints(spec)
        if only_shaped and shapes is not None:
            # Only a sibling with these output shapes can be one node with this call. Compared in
            # full, each new step of ``data[:step]`` or ``torch.arange(step)`` compared every
            # earlier step's node (30 s over 1500 steps).
            siblings = self.graph.shaped(func, site, shapes)
        else:
            siblings = self.graph.by_site.get((func, site), [])
        for sibling in siblings:
            if sibling.in_meta != in_meta or sibling.grad != grad or sibling.kind not in _GENERALIZED or (
                    out_meta is not None and (sibling.out_struct != struct or sibling.out_meta != out_meta)):
                continue
            theirs = spec_ints(sibling.spec)
            if len(theirs) != len(ints):
                continue
            differ = frozenset(i for i, (a, b) in enumerate(zip(ints, theirs)) if a != b)
            if differ and differ <= feedable \
                    and generalize(spec, differ) == generalize(sibling.spec, differ):
                by_shape = bool(differ & slices)
                if by_shape:
                    if shapes is None and call is not None:
                        shapes = list(_out_shapes(func, *call) or ())
                    if shapes != [meta[0] for meta in sibling.out_meta]:
                        continue
                self.flush()  # a pending block's ops recorded their floats without this int
                if name in _INDEX_INTS and differ - slices and sibling.kind != "sync" and caught_here(frame, self.roots):
                    sibling.kind = "sync"
                self.graph.generalize_ints(func, site, differ, by_shape)
                if caught_here(frame, self.roots):
                    # ints fed from now on, in the program's try: a new one may make the op raise
                    for node in self.graph.by_site.get((func, site), ()):
                        if node.kind in DEFERRED and not node.immediate:
                            node.immediate, node.scalars_ok = CHECK_SCALARS, set()
                        elif node.immediate is CHECK_INDEX and node.scalars_ok is None:
                            node.scalars_ok = set()
                if name in _INDEX_INTS and differ - slices:
                    # a feed that indexes a dimension may be out of range where the trace's were not
                    self.graph.index_ints.add((func, site))
                    for node in self.graph.by_site.get((func, site), ()):
                        if node.kind in DEFERRED and not node.immediate:
                            node.immediate = CHECK_INDEX
                self.compiled.clear()  # blocks that baked the old ints are stale
                return sibling
        return None

    def _synthesize_variant(self, func, info, site, kspec, in_meta, grad, args, kwargs, scalars, tensors) -> Node | None:
        """A known op with new input shapes: derive the variant's output metadata on meta tensors.

        A sibling at the same site must differ from this call only in shapes and int arguments
        (``affine_grid(theta, [n, c, h, w])`` for a new ``n``); the meta run computes the exact
        output for this call. Synchronous siblings (``x[mask]``) run for real anyway: their
        variants need no prediction.
        """
        sibling = None
        unshaped = self.graph.unshaped
        shape_free = without_ints(unshaped(func, site, kspec))
        length_free = None
        for candidate in self.graph.by_site.get((func, site), ()):
            if candidate.synthesized or info.prop is not None or candidate.grad != grad:
                continue
            theirs = unshaped(func, site, candidate.key[2])
            if (len(candidate.in_meta) == len(in_meta) and without_ints(theirs) == shape_free
                    and all(a[1:] == b[1:] for a, b in zip(candidate.in_meta, in_meta))):
                sibling = candidate
                break
            # a list of tensors of another length (torch.cat of an episode's steps): alike when
            # every tensor, there and here, has one dtype, device and requires_grad
            if length_free is None:
                length_free = _without_lengths(shape_free)
            if (in_meta and candidate.in_meta and length_free != shape_free
                    and _without_lengths(without_ints(theirs)) == length_free
                    and len({m[1:] for m in in_meta} | {m[1:] for m in candidate.in_meta}) == 1):
                sibling = candidate
                break
        if sibling is None:
            return None
        targs, tkwargs = template(args, kwargs)
        outs: list = []
        deferred = sibling.kind in DEFERRED
        ruled = None
        if deferred and sibling.alias < 0 and sibling.out_struct is TENSOR and in_meta and sibling.in_meta \
                and len(in_meta[0][0]) == len(sibling.in_meta[0][0]) and (func in _JOINS or (
                    len(in_meta) == len(sibling.in_meta)
                    and all(len(a[0]) == len(b[0]) for a, b in zip(in_meta, sibling.in_meta)))):
            # (inputs of the sibling's ranks: a dim the sibling's call was given is in range here)
            # The op's own shape rule, where it has one and it holds for the sibling (whose shapes
            # are eager's): a run on meta tensors takes 0.1-19 ms of Python decompositions for an
            # op (layer_norm 1.4, scaled_dot_product_attention 3, grid_sample 19), each new shape
            # of each op.
            if func in _JOINS:  # (its rule reads the call's dim, exactly: no sibling's call to check it on)
                ruled = rule_shapes(info.name, [m[0] for m in in_meta], args, kwargs)
            else:
                ruled = rule_shapes(info.name, [m[0] for m in in_meta])
                if ruled is not None and rule_shapes(info.name, [m[0] for m in sibling.in_meta]) != [
                        tuple(m[0]) for m in sibling.out_meta]:
                    ruled = None
        if ruled is not None:
            struct = sibling.out_struct
        elif deferred and sibling.alias < 0 and sibling.out_struct is not NONE:  # an op returning its input needs no meta run
            try:
                out = _run_on_meta(func, targs, tkwargs, in_meta, scalars, grad[0])
            except _META_ERRORS:
                # An op that reads an index tensor's values on the host (a packed sequence's
                # batch_sizes, for a GRU): once more with the call's own integer tensors
                real = _host_ints(tensors)
                if real is None:
                    return None
                try:
                    out = _run_on_meta(func, targs, tkwargs, in_meta, scalars, grad[0], real)
                except _META_ERRORS:
                    return None  # no meta kernel, or the shapes do not fit: trace it instead
            struct = out_structure(out)
            if struct is None or (struct != sibling.out_struct and not _same_kind_of_sequence(struct, sibling.out_struct)):
                return None
            outs = out_tensors(out, struct)
        node = self.graph.add_node((func, site, kspec, in_meta, grad), func, info)
        node.family = sibling.family
        node.spec, node.kind, node.alias, node.views = sibling.spec, sibling.kind, sibling.alias, sibling.views
        # (the meta run's structure: a sequence as long as this call's, unbind of a new length)
        node.out_struct = struct if deferred and sibling.alias < 0 and sibling.out_struct is not NONE else sibling.out_struct
        node.flat = sibling.flat
        if not deferred:
            node.out_meta = []
        elif sibling.alias >= 0:  # in place: the output is the aliased input
            node.out_meta = [in_meta[sibling.alias]]
        elif ruled is not None:
            node.out_meta = [interned_meta((torch.Size(shape), m[1], m[2], m[3])) for shape, m in zip(ruled, sibling.out_meta)]
        else:
            # (outputs on the meta device: each takes its device from the sibling's output, the
            # first one's where the sequence is longer)
            devices = [m[2] for m in sibling.out_meta] or [in_meta[0][2]]
            node.out_meta = [interned_meta((t.shape, t.dtype, devices[min(j, len(devices) - 1)], t.requires_grad))
                             for j, t in enumerate(outs)]
        node.targs, node.tkwargs = targs, tkwargs
        node.passed, node.int_pos, node.scalars_seen = sibling.passed, sibling.int_pos, list(scalars)
        # Layers called from one loop (an nn.Sequential) share a site: trust the producers seen now.
        if len(sibling.sources) == len(tensors):
            known = sibling.sources
        else:  # a list of another length: any slot may come from where any of the sibling's did
            known = [set().union(*sibling.sources)] * len(tensors)
        node.sources = [set(s) | {t._tn_src if type(t) is FutureTensor else getattr(t, "_tn_src", EXTERNAL)}
                        for s, t in zip(known, tensors)]
        node.module, node.line = sibling.module, sibling.line
        if sibling.immediate in (CHECK_INDEX, CHECK_VIEW, GRAD_READ, CHECK_SCALARS):
            # (what the op reads, not its shapes, decides these: an index, a view's strides in the
            # program's try, a .grad, the numbers it is fed there)
            node.immediate, node.caught, node.raised = sibling.immediate, sibling.caught, sibling.raised
            if sibling.scalars_ok is not None:
                node.scalars_ok = set()
        node.synthesized = True
        self.log.add(Event("node", self.cell, self.iter_index, info.name, str(node.line or ""),
                           block=node.id, nodes=(node.module,), backend=node.kind))
        return node

    def _new_node(self, key, spec, func, info, args, kwargs, tensors, scalars, struct, outs, frame) -> Node:
        node = self.graph.add_node(key, func, info)
        _f, site, kspec, in_meta, grad = key
        unshaped = self.graph.unshaped
        shape_free = without_ints(unshaped(func, site, kspec))
        for sibling in self.graph.by_site.get((func, site), ()):  # a shape variant joins its sibling's family
            if (sibling is not node and without_ints(unshaped(func, site, sibling.key[2])) == shape_free
                    and sibling.grad == grad
                    and len(sibling.in_meta) == len(in_meta)
                    and all(a[1:] == b[1:] for a, b in zip(sibling.in_meta, in_meta))):
                node.family = sibling.family
                break
        node.spec = spec
        node.raised = (func, site) in self.graph.raised_sites
        node.flat = len(spec) if type(spec) is tuple and spec and all(x is T for x in spec) else -1
        node.int_pos = tuple(i for i, v in enumerate(scalars) if type(v) is int)
        mask = self.graph.int_masks.get((func, node.site), frozenset())
        node.passed = tuple(i for i, v in enumerate(scalars)
                            if type(v) is not int or node.int_pos.index(i) in mask)
        if info.kind == "feed":
            node.kind = "feed"
        elif struct is None or (struct is NONE and info.prop is not None and not info.setter):
            node.kind = "fetch"
        elif (info.data_dependent or values_decide_shape(info, args, tensors, kwargs) or not literal_spec(spec)
              or _under_saved_hooks(grad) or _runs_programs_python(func)):
            node.kind = "sync"
        elif _may_raise_on_values(info, tensors) and caught_here(frame, self.roots):
            # In the program's try: where the values that may raise are an index whose range the
            # skeleton checks (below, CHECK_INDEX), a real one in range defers and the others run
            # at once; any other op runs at once (each a sync of the blocks before it).
            node.caught = True
            if not _checks_index(info.name, tensors):
                node.kind = "sync"
        elif info.name in _VIEWS and caught_here(frame, self.roots):
            node.caught = True  # (a view its input's strides may refuse: CHECK_VIEW, below)
        elif struct is NONE:
            node.kind = "effect"
        if node.barrier and info.name == "backward" and kwargs.get("create_graph", len(args) > 3 and args[3] is True):
            self._regrads.add(node.family)  # (its .grad are new tensors: see _note_backward)
        if info.prop == "_base" and node.kind in DEFERRED:
            # A view's base: the object the program holds for it, which the value's ``_base`` (its
            # base's value) finds (_held_base). Deferred, each read was a new future, never the
            # tensor the program holds (``out[1:]._base is out`` False).
            node.kind = "sync"
        if info.name == "__delete__" and node.kind in DEFERRED and _descriptor_name(func) == "grad":
            node.kind = "sync"  # ``del p.grad``: run for real, so that the gradient table sees it (_grad_ran)
        if node.barrier and node.kind in DEFERRED and catches(frame, self.roots, RuntimeError):
            # backward (autograd.grad) inside a try of the program's that catches its errors: runs
            # at once (a sync of the blocks before it). Whether it raises depends on the path the
            # program took, not on anything the node's key holds (a tensor it saved, modified in
            # place on one path: the version counter), and a path of known edges may raise where
            # no trace did. Deferred, the error surfaced at a later sync, outside the try. A loop
            # with no such try keeps its backward deferred.
            node.caught = True
            node.kind = "sync"
        if not self.graph.python_hooks and _registers_python_for_backward(func, info, grad, frame):
            self._hooks_registered()
        if node.barrier and not self.graph.python_hooks and _reaches_hooked_leaves(tensors, self.graph.grad_leaves):
            self._hooks_registered()  # (registered before the mode could see it: in another cell)
        if node.barrier and node.kind in DEFERRED and self.graph.python_hooks:
            node.kind = "sync"
        if node.kind in DEFERRED and any(type(t) not in PLAIN_TYPES for t in itertools.chain(tensors, outs)):
            # A tensor subclass of the program's (x.as_subclass(Tagged)): its __torch_function__
            # may do anything, and what eager returns is an instance of it, as a future is not.
            node.kind = "sync"
        if node.kind in DEFERRED and any(t.layout is not _STRIDED or t.is_nested for t in itertools.chain(tensors, outs)):
            # A sparse result (an nn.Embedding(sparse=True)'s .grad): a future is a strided
            # wrapper, and .is_sparse, or SparseAdam's check of it, would be answered wrong. An op
            # on a sparse tensor: what it gives may be as long as the tensor's count of values,
            # which its metadata (the dense shape) does not hold (``sp.values()`` had the traced
            # count). A nested tensor (torch.nested) has no shape a future could carry.
            node.kind = "sync"
        node.out_struct = struct
        node.out_meta = [meta_of(t) for t in outs]
        node.immediate = (node.kind in DEFERRED and info.name in _IMMEDIATE_OPS and bool(tensors)
                          and all(_is_small_cpu(t) for t in tensors) and all(_is_small_cpu(t) for t in outs))
        if node.kind in DEFERRED and info.prop == "grad" and not info.setter and struct is TENSOR:
            node.immediate = GRAD_READ  # (a .grad read: _validated_op looks at the real .grad first)
        elif node.kind in DEFERRED and not node.immediate and (
                _checks_index(info.name, tensors) or (func, site) in self.graph.index_ints):
            node.immediate = CHECK_INDEX
        elif node.kind in DEFERRED and node.caught and info.name in _VIEWS:
            node.immediate = CHECK_VIEW
        elif node.kind in DEFERRED and node.passed and caught_here(frame, self.roots):
            node.immediate, node.scalars_ok = CHECK_SCALARS, set()
        if node.immediate is CHECK_INDEX and node.caught and node.passed:
            node.scalars_ok = set()  # (its numbers too: cross_entropy's label_smoothing)
        _scalars_ran(node, scalars)
        if struct is TENSOR:
            node.alias = next((i for i, t in enumerate(tensors) if t is outs[0]), -1)
            if node.alias >= 0 and _returns_input_only_sometimes(info.name, args, kwargs):
                # Its input itself for this call, a new tensor for another with the same key
                # (dropout at another rate, contiguous of a transposed input): the block computes
                # the output, which is the input itself where eager's is.
                node.alias = -1
            if node.alias < 0:
                node.views = next((i for i, t in enumerate(tensors) if _is_alias_of(outs[0], t)), -1)
            if node.alias >= 0 and node.kind in DEFERRED and node.out_meta[0] != in_meta[node.alias]:
                # It changes its input's metadata in place (x.requires_grad_(), x.unsqueeze_(0)): a
                # future keeps the metadata it was made with, so the op runs for real, on the value.
                node.kind = "sync"
        elif _writes_into(info) and tensors and node.kind in DEFERRED and meta_of(tensors[0]) != in_meta[0]:
            # ``out[:, t] = h`` with ``h`` requiring grad makes ``out`` require grad, and so does
            # ``x.requires_grad = True``: the same, for a call that returns None. Deferred,
            # ``out.requires_grad`` still read False, and the next write matched the node of a
            # target that does not require grad (a fallback every iteration).
            node.kind = "sync"
        node.targs, node.tkwargs = template(args, kwargs)
        node.module = module_path(frame)
        node.line = user_line(frame)
        self.log.add(Event("node", self.cell, self.iter_index, info.name, str(node.line or ""),
                           block=node.id, nodes=(node.module,), backend=node.kind))
        return node

    def _hooks_registered(self) -> None:
        """The program registered an autograd hook: Python code that backward calls. From now on
        ``backward`` and ``autograd.grad`` run for real, in program order, so that a hook's side
        effects (``grads.append(g.norm().item())``) happen where the program reads them, and in its
        thread (a deferred backward could run on the GraphRunner's, after the program read them)."""
        if self.graph.python_hooks:
            return
        self.graph.python_hooks = True
        for node in self.graph.nodes:
            if node.barrier and node.kind in DEFERRED:
                node.kind = "sync"

    def _is_anchor(self, anchor: Node, args, kwargs, frame) -> bool:
        """Whether a call of the anchor's function, run eagerly, is the anchor's node: its site, and
        where other nodes share that site (the layers of an ``nn.Sequential`` all call ``F.linear``
        from one line), its input metadata, constants and grad mode too."""
        site = location_key(frame, self.roots)
        if site != anchor.site:
            return False
        if len(self.graph.by_site.get((anchor.func, site), ())) < 2:
            return True
        tensors: list = []
        scalars: list = []
        spec: Any = scan(args, kwargs, tensors, scalars)
        in_meta = _in_meta(tensors)
        if scalars and floats_decide_shape(anchor.info.name):
            spec = with_floats(spec, scalars)
        if anchor.info.kind == "feed":
            spec = "feed"
        elif anchor.mask:
            spec = generalize(spec, anchor.mask)
            if (anchor.func, site) in self.graph.shape_keyed:
                spec = (spec, _out_shapes(anchor.func, args, kwargs, tensors, scalars))
        grad = _grad_key()
        if in_meta == anchor.in_meta and spec == anchor.key[2] and anchor.grad is grad:
            return True
        # Another shape (a batch of a new length): a variant of the anchor's op that has been the
        # anchor (see _advance), or a shape no node has where every node at the site is a variant
        # of the anchor's op. (A layer of another width at the anchor's line never was the anchor.)
        node = self.graph.index.get((anchor.func, site, spec, in_meta, grad))
        if node is not None:
            return node in self._turn_starts
        return all(n.family == anchor.family for n in self.graph.by_site[(anchor.func, site)])

    def _eager_boundary(self) -> None:
        """The anchor ran eagerly: one baseline iteration ends; after the last, co-execution resumes."""
        now = _perf()
        self._count_ticks()
        if self._ended_at_tick:
            self._ended_at_tick = False  # (the tick right before it ended the stretch's last row)
        else:
            self._close_iteration(now)
            self._reset_iteration(self.iter_index + 1, now)
            self.baseline -= 1
        if self.baseline <= 0 and self._probing and not _enough(self._eager_ms, CHOICE_EAGER):
            self.baseline = CHOICE_EAGER  # short iterations: the probe goes on
            return
        if self.baseline > 0 or (self._probing and self._eager_wins()):
            return
        self._stretch = False
        self._resume_coexec(self.anchor or self.graph.root)

    def _resume_coexec(self, cursor: Node) -> None:
        """Eager iterations end: the cell's mode again, from ``cursor``, with the marks restored."""
        self.mode = self._cell_mode
        self.state = SKELETON if self.mode == "auto" else TRACE
        self.cursor = cursor
        self._validated = 0
        self._restore_locals()
        self._grad_objs.clear()  # (eager iterations set .grad unseen)

    # -- auto's choice: co-execution or eager ---------------------------------------------------

    def tick(self, loop: int) -> None:
        """A loop of the cell starts an iteration (``__terra_tick__``, see trace/loops.py).

        With the mode on, ticks are counted per iteration, to find the loop that ticks once per
        iteration (``_anchor_loop``). In auto's eager iterations (its probe, or a stretch it chose)
        that loop's next tick takes the mode off, so they cost what eager costs; each tick of it
        ends an iteration, and the tick that ends the last puts the mode back: the anchor, the
        next op, decides what follows (``_eager_boundary``).
        """
        if _get_ident() != self._owner:
            return  # a function a cell defined, running in another thread, or outside a cell
        if self._held:
            self._wait_held()
        if self._interrupted:
            self._raise_interrupt()
        if self._hooked:
            ticks = self._ticks
            ticks[loop] = ticks.get(loop, 0) + 1
            last_tick = self._turn_at.get(loop, -1)
            self._turn_at[loop] = self.op_counter
            if last_tick < 0:
                self._first_tick[loop] = self.op_counter
            if self._anchor_loop < 0 and self._turn_loop < 0 and last_tick >= 0 and not self.explicit_iterations:
                self._note_restless(loop, last_tick)
            self._turns[loop] = self._turns.get(loop, 0) + 1
            if self.mode == "eager" and self.baseline and _perf() - self.iter_start > self._eager_limit:
                self._leave_eager()
            elif loop == self._anchor_loop and self._stretch and self.baseline > 1:
                # The stretch's first eager turn, run under the mode from the anchor, ends here
                # (it was one row with the next turn, the first run with the mode off).
                self._unhook()
                self._end_eager_turn()
            elif loop == self._reanchor_at:
                # the anchor recurs within one turn of this loop: the turn's first op anchors
                self._reanchor_at = -1
                self._anchor_limit = -1
                self._tick_reanchors += 1
            elif (loop != self._anchor_loop and self._anchor_limit >= 0 and self._anchor_confirmed()
                    and self._first_tick[loop] > self._turn_at.get(self._anchor_loop, -1)
                    and self.op_counter - self._anchor_last >= self._anchor_period - 1
                    and self._left_anchor_loop(loop, sys._getframe(1))):
                # A loop that first turned after the anchor's loop last did turns, the anchor is
                # due (a turn of its loop would start with it now), and no frame stands in the
                # anchor's loop any more, nor in a loop around this one: that loop ended
                # (training, then an evaluation loop). The next op seen before anchors, and the
                # ended loop's rows stay (see _advance); waiting for ten of the anchor's periods
                # merged the next loop's first turns into one row. (A loop that turned in the
                # anchor's loop's time, around it or inside it, is no sign of its end; nor is one
                # after it in an episode's or an epoch's turn.) The ended loop's last turn ends
                # here: the new loop's first turn, whose ops are new, is a row of its own (its ops
                # re-anchor only where they recur, in its second turn).
                self._anchor_limit = -1
                now = _perf()
                self._close_iteration(now)
                self._reset_iteration(self.iter_index + 1, now)
            elif (ticks[loop] > self._tick_most.get(loop, 0) + 2 and self.anchor is not None
                    and self._anchor_limit >= 0 and self._tick_reanchors < 3 and not self._anchor_confirmed()
                    and not self._anchor_trains
                    and self.op_counter - self._anchor_last > self._anchor_period):
                # The anchor is overdue while this loop turned more often than it ever did within
                # one of the anchor's periods: the anchor was in setup code (a library's, whose
                # site a later call shared) and its loop ended. The next op seen before anchors,
                # as when an anchor is idle for ten of its periods. (A time loop inside a training
                # step turns often within the step's first period too, but that is not overdue.)
                self._anchor_limit = -1
                self._tick_reanchors += 1
            return
        if loop != self._anchor_loop:
            if loop not in self._first_tick and self._anchor_loop >= 0 and self._left_anchor_loop(loop, sys._getframe(1)):
                # A loop that never turned before turns, and no frame stands in the loop the
                # stretch counts, nor in a loop around this one: that loop ended (training, then
                # an evaluation loop). The mode goes back on, so that this loop's turns are found,
                # and measured, as the first loop's were; counted by the ended loop's ticks, they
                # were all one row.
                self._first_tick[loop] = self.op_counter
                self._hook()
                self._leave_eager()
                self._anchor_limit = -1  # (its loop ended: the next op seen before anchors)
            return
        self._end_eager_turn()

    def _left_anchor_loop(self, loop: int, frame) -> bool:
        """Whether loop ``loop``, ticking in ``frame``, runs after the anchor's loop ended: no frame
        of the stack stands in the anchor's loop, nor in a loop (of this cell's) around ``loop``
        (an episode's returns loop after its steps', an epoch's evaluation after its training)."""
        return (not loops.running(self._anchor_loop, frame)
                and not loops.enclosed(loop, frame, self._first_tick))

    def _end_eager_turn(self) -> None:
        """A tick of the stretch's loop ends an eager iteration; the one that ends the last puts the
        mode back, and the anchor, the next op, decides what follows (``_eager_boundary``).
        (Ended at the anchor, the last row was that op alone, and the first one two turns.)"""
        now = _perf()
        self._close_iteration(now)
        start = self.iter_start
        self._reset_iteration(self.iter_index + 1, now)
        self._ticked_row = (start, self.op_counter)  # the ended row's start, and no op since (see skip)
        self.baseline -= 1
        if self.baseline <= 0:
            self._hook()
            self._ended_at_tick = True

    def skip(self, loop: int) -> None:
        """A turn of a cell's loop ends at its head (``__terra_skip__``, before an ``if ...: break``
        or ``continue`` opening the body; see trace/loops.py). In auto's eager turns, whose rows its
        tick begins, that turn ran nothing: the row the tick ended goes on (a step-limited loop's
        last turn was a row of its own). Co-executed, rows begin at a turn's first op, and such a
        turn is part of the row before it already."""
        ticked = self._ticked_row
        if _get_ident() != self._owner or loop != self._anchor_loop or ticked is None or ticked[1] != self.op_counter:
            return  # (an op ran since that tick: the anchor ended that row, or will end this one)
        log = self.log.iterations
        last = log[-1] if log else None
        if last is None or last.cell != self.cell or last.iteration != self.iter_index - 1:
            return
        log.pop()
        if last.mode == "eager" and self._probing and self._eager_ms and self._eager_ms[-1] == last.wall_ms:
            self._eager_ms.pop()
        self._reset_iteration(last.iteration, ticked[0])
        self.iter_blocks, self.iter_syncs, self.iter_fallbacks = last.blocks, last.syncs, last.fallbacks
        self.ops_traced, self.ops_coexec = last.ops_traced, last.ops_coexec
        self.baseline += 1
        if self._ended_at_tick:  # (the turn that ended the stretch did not run: it goes on)
            self._ended_at_tick = False
            self._unhook()

    def _note_restless(self, loop: int, last_tick: int) -> None:
        """A turn of ``loop`` ended with no loop known to tick once per iteration: where the anchor
        ran in none of its last two turns, or was set inside them, the turns are the iterations,
        and the next turn's first op anchors (``_advance``).

        A generation loop whose sequence grows by a token each turn: every op is of a new shape
        each turn, so no op recurs from one turn to the next; two blocks of one model share their
        sites, so an op recurs inside a turn, anchors, and never runs again. Every few turns the
        idle anchor gave way to another such op, the turns merged into one row, and auto never
        saw an iteration to measure.
        """
        # (an anchor set from two runs of its op inside one turn of the loop: ``prev`` after the
        # loop's tick before them. An episode's anchor, set at its backward, spans the steps' turns.)
        inside = self._anchor_first > self._ticks_at_anchor.get(loop, -1)
        anchored_at = self._anchor_hits[1] if len(self._anchor_hits) > 1 else -1  # (the last _reanchor's op count)
        if self.anchor is None or inside and (self._anchor_last <= last_tick or anchored_at > last_tick + 1):
            restless = self._restless[loop] = self._restless.get(loop, 0) + 1
            if restless >= 2:
                self._turn_loop_next = loop
                self._turn_first = last_tick + 1  # (the op count of the last turn's first op)
                self._restless[loop] = 0
        else:
            self._restless[loop] = 0

    def _leave_eager(self) -> None:
        """Eager iterations were due (a baseline, auto's probe), but the anchor has not come back for
        ``EAGER_GIVE_UP`` of its periods while a loop of the cell ticks: most likely its loop ended
        (a setup loop, a comprehension, which does not tick). Co-execution resumes where the
        program is, with the anchor kept: if its loop did end, the anchor is idle for ten of its
        periods and the next op seen before re-anchors (as after any setup loop); if it was one long
        iteration, the anchor ends it, and auto measures again later.
        """
        now = _perf()
        self._close_iteration(now)
        self._reset_iteration(self.iter_index + 1, now)
        self.baseline = 0
        self._probing = self._stretch = self._ended_at_tick = False
        self._coexec_ms.clear()
        self._relapse_ms.clear()
        self._probe_after = CHOICE_COEXEC
        self._resume_coexec(self.graph.root)

    def _unhook(self) -> None:
        n = _len_mode_stack()
        if n and torch._C._get_function_stack_at(n - 1) is self._mode_obj:  # not under a mode of the user's
            torch._C._pop_torch_function_stack()
            self._hooked = False
            self._unhooked_at = n - 1

    def _hook(self, cell_ends: bool = False) -> None:
        """Put the mode back on top, where it was: not over a mode the user entered meanwhile (its
        ``with`` would pop ours), unless the cell ends (its ``with`` blocks have all exited then)."""
        if not self._hooked and (cell_ends or _len_mode_stack() == self._unhooked_at):
            torch._C._push_on_torch_function_stack(self._mode_obj)
            self._hooked = True

    def _count_ticks(self) -> None:
        """At the anchor: the loop that ticked exactly once in at least 80% of the iterations since
        the anchor was set (not all: a shorter last batch is another node, so the anchor's iteration
        spans two of the loop's there); the lowest id where several do.

        Where none ticked once in most of them, the anchor's periods differ (6, 44, 6, 44 ops), and
        a loop ticked once in a quarter or more of them and never in the others (never more than
        once), the anchor's node recurs within one turn of that loop (two layers of one shape,
        called from one line): its next tick re-anchors at the turn's first op. (An epoch loop
        around a batch loop that does not tick, in a library, ticks in fewer periods, and the
        batch loop's periods are equal.)
        """
        once, seen = self._once, self._tick_seen
        ticks = self._ticks
        most = self._tick_most
        for loop, n in ticks.items():
            if n > most.get(loop, 0):
                most[loop] = n
            hist = seen.setdefault(loop, [0, 0])
            if n == 1:
                once[loop] = once.get(loop, 0) + 1
            else:
                hist[1] += 1
        for loop, hist in seen.items():
            if loop not in ticks:
                hist[0] += 1
        self._counted += 1
        least = 0.8 * self._counted
        self._anchor_loop = min((loop for loop, votes in once.items() if votes >= least), default=-1)
        counted = self._counted
        if (self._anchor_loop < 0 and counted >= 4 and self._tick_reanchors < 3
                and max(once.values(), default=0) < 0.6 * counted and self._periods_differ()):
            within = [loop for loop, (never, more) in seen.items()
                      if never and not more and once.get(loop, 0) >= 0.25 * counted]
            if within:
                self._reanchor_at = min(within)
        self._ticks = {}

    def _periods_differ(self) -> bool:
        """Whether no one length makes most of the anchor's last periods (ops between its runs)."""
        hits = self._anchor_hits[-13:]
        periods = [b - a for a, b in zip(hits, hits[1:])]
        return bool(periods) and max(periods.count(p) for p in set(periods)) < 0.6 * len(periods)

    def _anchor_sure(self) -> bool:
        """Whether the anchor's iterations are the turns of a loop of the cell (a loop ticked once in
        each), or no loop of the cell has ticked, or 8 of its periods went by without a re-anchor
        (the anchor is all there is to go by). (Not "no tick counted at the anchor's runs": an
        anchor set inside the first turn, at Adam's state made per parameter in its first step,
        had none counted, was taken as sure, and the baseline's eager turns ran from an anchor
        that never came back: 4 rows for 40 turns.)"""
        return (self._anchor_loop >= 0 and self._counted >= 2) or not self._turns or self._counted >= 8

    def _reset_choice(self) -> None:
        self._coexec_ms: list[float] = []  # the last clean co-executed iterations
        self._relapse_ms: list[float] = []  # iterations among them that fell back (or traced after one)
        self._eager_ms: list[float] = []  # the iterations of the eager probe
        self._probing = False
        self._stretch = False  # the eager iterations are auto's (a probe or a stretch), not a baseline
        self._ended_at_tick = False  # a stretch's last row ended at a tick (see _end_eager_turn)
        self._ticks = {}  # loop id -> ticks in this iteration
        self._once = {}  # loop id -> iterations in which it ticked exactly once
        self._counted = 0  # iterations counted since the anchor was set
        self._anchor_loop = -1  # the loop that ticks once per iteration, where known
        self._tick_seen = {}  # loop id -> [iterations it ticked 0 times, >1 times]
        self._tick_most: dict[int, int] = {}  # loop id -> the most ticks in one iteration (see tick)
        self._reanchor_at = -1  # a loop whose next tick re-anchors (see _count_ticks)
        self._probe_after = CHOICE_COEXEC + CHOICE_WARMUP  # clean co-executed iterations before the next probe
        self._stay_eager = CHOICE_RETRY  # eager iterations before co-execution is measured again

    def _chooses(self) -> bool:
        """Whether this cell's iterations may run eagerly where that is faster: the ``auto`` backend on
        CPU blocks, iterations found by the anchor, and no graph-only capture (the benchmark's)."""
        return (self.backend == "auto" and not self.always_coexec and self._cell_mode == "auto"
                and not self.explicit_iterations and self.runner.captured is None and not self._on_cuda)

    def _choose(self, mode: str, wall_ms: float) -> None:
        """Account a finished iteration; after enough clean co-executed ones, probe eager execution."""
        if mode == "coexec" and not self.baseline:
            self._coexec_ms.append(wall_ms)
            del self._coexec_ms[:-CHOICE_MAX_SAMPLES]
            self._probe_after -= 1
            if (self._probe_after <= 0 and _enough(self._coexec_ms, CHOICE_COEXEC)
                    and (self._anchor_loop >= 0 or self._counted >= CHOICE_UNTICKED)
                    and not self._may_be_steps_of_a_training_loop()):
                # (a loop that does not tick is library code: a setup loop, model.to(), an
                # optimizer's first step, unless it goes on; eager iterations there would make
                # its step counters in plain code, unmarked, and each .item() a sync after)
                # from the next anchor; measured as a stretch runs (the mode off), see tick
                self.baseline, self._probing, self._eager_ms, self._stretch = CHOICE_EAGER, True, [], True
        elif mode == "eager" and self._probing:
            self._eager_ms.append(wall_ms)
        elif mode != "eager" and not self.baseline:
            # Fell back, or traced after a fallback, while co-executing: co-execution's cost too.
            # A program that falls back again and again (reinforce: each episode's end) pays it
            # every time, and the clean iterations alone made co-execution look cheap. (Before
            # any clean one, it is the cell's own tracing: not counted.)
            if self._coexec_ms:
                self._relapse_ms.append(wall_ms)
                del self._relapse_ms[:-CHOICE_MAX_SAMPLES]

    def _may_be_steps_of_a_training_loop(self) -> bool:
        """Whether the anchor's turns may be the steps of an enclosing loop's training iteration.

        An episode loop around a loop of steps, whose backward comes after the steps, or a step
        loop around micro-batches whose optimizer step comes after them: the anchor's turns mostly
        ran no backward, or no optimizer step. After one, the next decides (it anchors where the
        anchor ran again in between, see ``_mark``); before any, a loop that ticked once, before
        the anchor's turns, may enclose them (a setup loop ticks many times), and auto waits for its
        next turn, or ``CHOICE_UNTICKED`` iterations. Eager iterations would hide them from the engine, and the
        inner turns would stay the iterations.
        """
        first = self._anchor_first
        periods = len(self._anchor_hits) - 1
        counts = [_after(at, first) for at in self._marks()]
        if 2 < periods and 1 in counts:
            return self._counted < STEPS_WAIT_MAX  # the next one decides (see _mark)
        # no backward, or no step of an optimizer that has stepped (a loop updating its weights
        # by hand has none: it is not waited for)
        missing = counts[0] == 0 or (len(counts) > 1 and not any(counts[1:]))
        return (missing and self._counted < CHOICE_UNTICKED
                and any(t < first and self._turns[loop] == 1 for loop, t in self._turn_at.items()))

    def _marks(self) -> list:
        """The backwards' positions, then each optimizer's steps' (see ``_mark``)."""
        return [self._backward_at, *self._steps_of.values()]

    def _eager_wins(self) -> bool:
        """The eager probe ended: whether the cell goes on eagerly (then for ``_stay_eager`` iterations).

        Medians of the probe and of the last clean co-executed iterations, so that one slow
        iteration (a collection, a compile in the background) does not decide.
        """
        self._probing = False
        clean, relapses = self._coexec_ms, self._relapse_ms
        coexec = (statistics.median(clean) * len(clean) + sum(relapses)) / (len(clean) + len(relapses))
        eager = statistics.median(self._eager_ms)
        # (the counts in the order the message names the two: co-execution's first where it is kept)
        fallbacks = f", {len(relapses)} fallback{'s' if len(relapses) > 1 else ''} counted in" if relapses else ""
        kept = f"(medians of {len(clean)} and {len(self._eager_ms)} iterations{fallbacks})"
        measured = f"(medians of {len(self._eager_ms)} and {len(clean)} iterations{fallbacks})"
        self._coexec_ms.clear()
        self._relapse_ms.clear()
        if eager >= coexec:
            # A narrow win (a noisy machine can give one either way) is measured again soon; a clear
            # one after CHOICE_KEEP iterations.
            close = eager < CHOICE_CLEAR * coexec
            self._probe_after = CHOICE_RETRY if close else CHOICE_KEEP
            self.log.add(Event("choice", self.cell, self.iter_index,
                               f"co-execution kept: {coexec:.3g} ms per iteration, eager {eager:.3g} ms {kept}; "
                               f"measured again in {self._probe_after} iterations"))
            return False
        stay, self._stay_eager = self._stay_eager, min(2 * self._stay_eager, CHOICE_RETRY_MAX)
        self.baseline = stay
        self._stretch = True
        self._probe_after = CHOICE_COEXEC
        self.log.add(Event("choice", self.cell, self.iter_index,
                           f"eager is faster here: {eager:.3g} ms per iteration, co-executed {coexec:.3g} ms "
                           f"{measured}; co-execution is measured again in {stay} iterations"))
        return True

    # -- iterations ----------------------------------------------------------------------------

    def _advance(self, node: Node, stepped: bool = False) -> None:
        if node.cell_mark is not self._cell_token and node.line_root is not self._line_root:
            # A node the cells share (a node's place leaves out where the cell called from) runs
            # at this cell's line: an error its block raises, a fallback, the graph name that line
            # (they named the first cell's, where it was recorded: another cell's source). (Each
            # call of a @coexecute function is a cell of the same code: nothing to look up.)
            node.line_root = self._line_root
            here = user_line(sys._getframe(1))
            if here is not None:
                if node.line is not None:
                    node.places.add(str(node.line))  # (its events there stay its own: the widget)
                node.line = here
        before = self.cursor
        if self.state is SKELETON and not stepped:
            self.graph.step(before, node)
        self.cursor = node
        self.op_counter = now_op = self.op_counter + 1
        anchor = self.anchor
        turn = node is not anchor and self._turn_loop_next >= 0 \
            and self._turn_at.get(self._turn_loop_next) == now_op - 1
        if turn:
            # the first op of a turn of a loop whose turns are the iterations (see _note_restless)
            loop, self._turn_loop_next = self._turn_loop_next, -1
            self._reanchor(node, self._turn_first, now_op)
            self._turn_loop = loop
        elif node is not anchor and anchor is not None and (
                node.family == anchor.family and (before in self._turn_ends or before in anchor.pred)
                or node.func is anchor.func and node.site == anchor.site and self._first_of_a_turn(now_op)):
            # A shape variant of the anchor's op, right after an op the anchor (or a variant that
            # was the anchor) ran right after (a batch of a new length, the turn's first op): the
            # turn starts here. Anchored to one shape, a loop whose shapes vary each turn lost its
            # anchor and merged its turns into one row. (A layer of another width at the anchor's
            # line, the optimizer's update of a parameter of another shape, runs after other nodes
            # than the anchor does.) Or the anchor's op, at its site, of another kind (a batch of
            # another dtype after model.double()), as the first op of a turn of the anchor's loop.
            self.anchor = anchor = node
            self._turn_starts.add(node)
        if turn:
            node.cell_mark = self._cell_token
        elif node is anchor and self._starts_a_turn():
            self._anchor_runs += 1
            self._anchor_period = now_op - self._anchor_last
            self._anchor_last = now_op
            self._anchor_limit = now_op + 10 * self._anchor_period + 10
            self._anchor_hits.append(now_op)
            self._count_ticks()
            now = _perf()
            period = now - self.iter_start
            self._close_iteration(now)
            self._reset_iteration(self.iter_index + 1, now)
            # The anchor runs in the state the last iteration ended in; the switch comes after it.
            self._anchor_traced = self.state is TRACE
            if self.baseline and self._anchor_sure():
                # The next iterations run plain eager: nothing of this one may still be pending, or
                # they would read state (parameters, optimizer buffers) before its deferred writes.
                self.materialize()
                self._realize_optimizer_state()
                self.mode = "eager"
                self._eager_limit = max(EAGER_GIVE_UP * period, EAGER_GIVE_UP_MIN_S)
                self._forget_locals(remember=True)
        elif not self.explicit_iterations:
            if node.cell_mark is self._cell_token:
                prev = node.seen_at
                ended = self.anchor is None or now_op > self._anchor_limit
                if ended and self._anchor_limit >= 0 and self._in_a_loop_around_the_anchors():
                    # its loop ended inside a turn of a loop around it: an epoch's evaluation
                    # after its training, whose turns stay part of the epoch's last row
                    self._anchor_limit = now_op + 10 * self._anchor_period + 10
                    ended = False
                if ((ended or (prev < self._anchor_first and self._turning_at(prev)
                               and self._encloses_more_work(prev, now_op)))
                        and not self._in_loop_header()):
                    # rows of a loop of the cell that ended are kept; an enclosing loop's, or a
                    # setup loop's, merge into iteration 1
                    self._reanchor(node, prev, now_op, keep=ended and self._anchor_confirmed())
            else:
                node.cell_mark = self._cell_token
                if not self.iter_index:
                    self.iter_index = 1
        node.seen_at = now_op
        if node is self.anchor:
            self._turn_ends.add(before)
        if node.barrier:
            self._note_backward()

    def _starts_a_turn(self) -> bool:
        """Whether this run of the anchor starts an iteration: always, but where the anchor's
        function is called from two places of the cell's code in each turn (``x = step(x)`` twice,
        and nothing else: one node, since a location leaves out where the root called from, so
        that cells share nodes), only the calls from the place a loop's tick comes before. Found
        from the anchor's first runs: their root offsets differ, and the runs a tick came before
        are all from one offset, the others from other ones."""
        want = self._turn_root
        runs = self._root_runs
        if want is None and len(runs) >= 8:
            return True  # (decided: every run starts one)
        offset = self._root_offset()
        if want is not None:
            return offset == want
        runs.append((offset, bool(self._ticks)))
        if len(runs) >= 4:
            ticked = {o for o, t in runs if t}
            others = {o for o, t in runs if not t}
            if len(ticked) == 1 and others and not ticked & others:
                self._turn_root = want = next(iter(ticked))
                return offset == want
        return True

    def _root_offset(self) -> int:
        """The stable offset of the root frame (the cell's) the op being recorded was called from."""
        frame: types.FrameType | None = sys._getframe(2)
        roots = self._root_codes
        while frame is not None:
            if frame.f_code in roots:
                return frame_offset(frame)
            frame = frame.f_back
        return -1

    def _first_of_a_turn(self, now_op: int) -> bool:
        """Whether the op counted ``now_op`` is the first of a turn of the anchor's loop (it ticks once
        per iteration: ``_anchor_confirmed``), in a turn the anchor has not run in."""
        loop = self._anchor_loop
        if loop < 0 or not self._anchor_confirmed():
            loop = self._turn_loop  # (the turns are the iterations by the loop's ticks: see _note_restless)
        return loop >= 0 and self._turn_at.get(loop) == now_op - 1 and self._anchor_last < now_op - 1

    def _in_loop_header(self) -> bool:
        """Whether the op being recorded runs for the iterator of a loop of the cell's (or script's)
        own code: the innermost frame of that code is at a ``FOR_ITER``. A DataLoader fetches and
        collates each batch's samples there, a loop that is not the cell's: its ops never anchor
        iterations (the loop's body does)."""
        files = self.roots.files()
        frame: types.FrameType | None = sys._getframe(2)
        while frame is not None:
            code = frame.f_code
            if code.co_filename in files:
                return frame.f_lasti in loop_headers(code)
            frame = frame.f_back
        return False

    def _note_backward(self) -> None:
        """A backward (or ``autograd.grad``) ran at this op count: see ``_mark``."""
        self._mark(self._backward_at)
        if self._regrads and self.cursor.family in self._regrads:
            self._grad_objs.clear()  # backward(create_graph=True) sums into new .grad tensors

    def _realize_optimizer_state(self) -> None:
        """Python runs the program itself from here (auto's eager turns, the code after a cell):
        the optimizers that stepped while co-executing made their state there (SGD's momentum
        buffers, Adam's moments) as futures, which they keep. A computed future works as its value,
        but each op on it passes the future's own dispatch (~10 µs: sdpoint's eager turns ran 6%
        slower than eager for its 54 such ops a step); its value takes its place, unless the program
        holds the future too (``m is opt.state[p]["exp_avg"]`` must stay eager's answer). Nothing
        may be pending: a real tensor that a block still writes would be read before the write."""
        if self.block.ops or self.runner.busy:
            return
        for optimizer in list(self._steps_of):
            for state in list(optimizer.state.values()):
                if type(state) is not dict:
                    continue
                for key in list(state):
                    value = state[key]
                    if type(value) is FutureTensor and _state_only(value):
                        state[key] = value._tn_val
                    elif type(value) is list and any(type(v) is FutureTensor for v in value):
                        value[:] = [v._tn_val if type(v) is FutureTensor and _state_only(v) else v for v in value]

    def _on_optimizer_step(self, optimizer, args, kwargs) -> None:
        """Every optimizer's step, while a cell runs (torch.optim's global post-step hook)."""
        if _get_ident() == self._owner and self.mode != "eager" and self._hooked:
            at = self._steps_of.get(optimizer)
            if at is None:
                at = self._steps_of[optimizer] = array("q")
            self._mark(at)

    def _mark(self, at: array) -> None:
        """A backward or an optimizer step ended at this op count (``at``: the positions of its
        kind). Where the anchor ran twice or more since the last one of them, its loop is not the
        training loop but steps inside it (an episode's, a time loop, an evaluation inside each
        training step, micro-batches that accumulate gradients): the node just run anchors."""
        now_op = self.op_counter
        if at and at[-1] == now_op:
            return
        at.append(now_op)
        if len(at) == 1:  # (an optimizer made anew: its array may have a dead one's id)
            turns = self._mark_turns[id(at)] = []
        else:
            turns = self._mark_turns.setdefault(id(at), [])
        turns.append((self._cell_token, dict(self._turns), self._anchor_runs))
        del turns[:-3]
        # (the last mark of its kind made in this cell: a new cell's first step of an optimizer a
        # cell before stepped says nothing of the anchor's turns; the anchor, seen recurring inside
        # Adam's step, ran four times since, and the step's last op anchored every later row)
        if (len(turns) > 1 and turns[-2][0] is self._cell_token and self.anchor is not None
                and self.cursor is not self.anchor
                and self.cursor is not self.graph.root and not self.explicit_iterations
                and _after(self._anchor_hits, at[-2]) >= 2 and not self._marks_within_turns(turns)):
            self._reanchor(self.cursor, at[-2], now_op)

    def _marks_within_turns(self, turns: list) -> bool:
        """Whether the last marks of one kind (``turns``: the loops' ticks and the anchor's runs at
        each) came in turns of the anchor's loop, several turns apart, with no loop around them: a
        loop of the cell ticks once per turn of the anchor (``_anchor_confirmed``), and no other
        loop of the cell ticked between the last two marks fewer times than the anchor ran, but
        at least once (nor between the two before, where there were two). ``if it % 3 == 0:`` a
        generator's step, gradients accumulated over four turns before the optimizer steps: the
        turns stay the iterations. A loop of micro-batches inside the loop of steps, an episode's
        steps, episodes whose update comes every fourth: the loop of steps, or of episodes,
        ticks between the marks, fewer times than the anchor ran, and anchors (an epoch loop
        ticks between two of them only now and then; a time loop inside a turn, more often)."""
        if not self._anchor_confirmed():
            return False
        token = self._cell_token
        mine = [(ticks, runs) for cell, ticks, runs in turns if cell is token]
        if len(mine) < 2:
            return False

        def enclosing(before: tuple, after: tuple) -> set:
            runs = after[1] - before[1]
            return {loop for loop, n in after[0].items() if 0 < n - before[0].get(loop, 0) < runs}

        around = enclosing(mine[-2], mine[-1]) - {self._anchor_loop}
        if len(mine) > 2:
            around &= enclosing(mine[-3], mine[-2])
        return not around

    def _in_a_loop_around_the_anchors(self) -> bool:
        """Whether the anchor's loop (confirmed: a loop of the cell ticked once per turn) ended, and a
        loop of the cell around it, which turned, still runs. An evaluation loop after each
        epoch's training, ten of the training step's periods or longer, took the anchor when they
        had passed (its rows kept); at the next epoch, the op that starts it recurred around that
        anchor with the training's backwards since, was taken for a loop around it doing work of
        its own, and anchored: a row per epoch."""
        loop = self._anchor_loop
        if loop < 0 or not self._anchor_confirmed():
            return False
        frame = sys._getframe(2)
        if loops.running(loop, frame):
            return False
        return any(other != loop and loops.around(other, loop) and loops.running(other, frame)
                   for other in self._first_tick)

    def _turning_at(self, at: int) -> bool:
        """Whether a loop of the cell was turning at op count ``at``: it ticked before and since
        (or none of the cell's loops ticked: its loops are elsewhere). A node that ran in setup code
        and recurs in a loop (``copy.deepcopy(model.state_dict())`` before training and at each new
        best: one node, since a location leaves out where the root called from) is no sign of a loop
        around the anchor's: it anchored there, and the epochs after the last new best were one row."""
        last = self._turn_at
        return not self._first_tick or any(first < at <= last.get(loop, -1) for loop, first in self._first_tick.items())

    def _encloses_more_work(self, prev: int, now_op: int) -> bool:
        """Whether a loop around the anchor's does real work of its own (backward, an optimizer).

        ``for epoch: for batch:`` keeps the batch loop; a time loop inside a training step gives
        way to the training loop, and so does an episode's loop of steps in reinforcement
        learning: the enclosing loop's turn ran a backward, but not one per turn of the inner loop.
        Marks that come every few turns of the anchor's loop itself (``if (i + 1) % accum == 0:
        opt.step()``: ``_marks_within_turns``) are the inner loop's work, not the enclosing one's
        (an epoch loop around accumulated gradients took the anchor: a row per epoch).
        """
        inner_passes = _after(self._anchor_hits, prev)
        each_turn = False
        for at in self._marks():
            marks = _after(at, prev)
            if 0 < marks < inner_passes and not self._marks_within_turns(self._mark_turns.get(id(at), [])):
                return True
            each_turn = each_turn or marks >= inner_passes
        if each_turn:
            # a backward (or an optimizer step) in every turn of the anchor's loop: its turns are
            # the training steps, whatever else the loop around does (an epoch's evaluation)
            return False
        return now_op - prev > 1.5 * inner_passes * max(self._anchor_period, 1) + 2

    def _anchor_confirmed(self) -> bool:
        """Whether the anchor's iterations were the turns of a loop of the cell (one tick each)."""
        return self.anchor is not None and self._anchor_loop >= 0 and self._counted >= 2

    def _reanchor(self, node: Node, prev: int, now_op: int, keep: bool = False) -> None:
        """``node`` recurs in a loop that encloses the anchor's, or the anchor's loop ended: anchor here.

        What this cell recorded so far becomes its iteration 1, unless ``keep``: the rows of a loop
        of the cell that ended (training, then an evaluation loop) stay, and numbering goes on. Rows
        kept so stay when a later loop re-anchors without keeping: what came after them merges into
        the one row after them (a sampling loop after training, whose anchor moves as it finds its
        turns, merged the training's rows with it).
        """
        now = _perf()
        self._close_iteration(now)
        cell = self.cell
        kept = self._kept_rows
        earlier = [] if keep else [it for it in self.log.iterations if it.cell == cell and it.iteration > kept]
        if keep:
            self._kept_rows = max((it.iteration for it in self.log.iterations if it.cell == cell), default=0)
        if earlier:
            self.log.iterations[:] = [it for it in self.log.iterations if it.cell != cell or it.iteration <= kept]
            for event in self.log.events:  # events of the merged iterations now belong to its row
                if event.cell == cell and event.iteration > kept + 1:
                    event.iteration = kept + 1
            merged = Iteration(cell, kept + 1, _merge_modes([it.mode for it in earlier]),
                               sum(it.wall_ms for it in earlier), sum(it.blocks for it in earlier),
                               sum(it.syncs for it in earlier), sum(it.fallbacks for it in earlier),
                               sum(it.ops_traced for it in earlier), sum(it.ops_coexec for it in earlier),
                               earlier[0].time)
            self.log.iterations.append(merged)
        if self._probing:
            self.baseline = 0
        self._reset_choice()  # (its choices were about a loop that is not the cell's)
        if not keep:
            self.log.events[:] = [e for e in self.log.events if not (e.kind == "choice" and e.cell == cell)]
        if any(it.mode == "eager" for it in earlier):
            self.baseline = self._baseline_asked  # it ran in a loop that turned out not to be the cell's
        self.anchor = node
        self._ticks_at_anchor = dict(self._turn_at)
        self._turn_loop = self._turn_loop_next = -1
        self._anchor_first = prev
        self._anchor_last = now_op
        self._anchor_period = now_op - prev
        self._anchor_hits = array("q", (prev, now_op))
        self._turn_ends = set(node.pred)
        self._turn_starts = {node}
        self._turn_root, self._root_runs = None, []
        self._anchor_limit = now_op + 10 * self._anchor_period + 10
        self._anchor_trains = any(at and at[-1] > prev for at in self._marks())  # see tick
        self._reset_iteration(kept + 2 if earlier else self.iter_index + 1, now)

    def _reset_iteration(self, index: int, now: float) -> None:
        self._ticked_row = None
        self._hold_trace = False
        self._anchor_traced = False
        self.iter_index = index
        self.iter_start = now
        self.iter_blocks = self.iter_syncs = self.iter_fallbacks = 0
        self.ops_traced = self.ops_coexec = 0

    def _close_iteration(self, now: float) -> None:
        if not self.iter_index:
            return
        if self.mode == "eager":
            mode = "eager"
        elif self.iter_fallbacks:
            mode = "fallback"
        elif self.ops_coexec and self.ops_traced <= self._anchor_traced:
            mode = "coexec"
        else:
            mode = "trace"
        wall_ms = (now - self.iter_start) * 1e3
        self.log.add_iteration(Iteration(self.cell, self.iter_index, mode, wall_ms,
                                         self.iter_blocks, self.iter_syncs, self.iter_fallbacks,
                                         self.ops_traced, self.ops_coexec))
        if self._chooses():
            self._choose(mode, wall_ms)


def _rebuilds() -> frozenset:
    """The code of torch's functions that rebuild a tensor from its pickled form."""
    import torch.multiprocessing.reductions as reductions

    found = [getattr(f, "__code__", None) for module, prefix in ((torch._utils, "_rebuild"), (reductions, "rebuild"))
             for name, f in vars(module).items() if name.startswith(prefix)]
    return frozenset(code for code in found if code is not None)


_REBUILDS = _rebuilds()


def _worker_loader() -> frozenset:
    """The code of the iterator of a DataLoader whose batches come from worker processes."""
    from torch.utils.data import dataloader

    return frozenset(f.__code__ for f in vars(dataloader._MultiProcessingDataLoaderIter).values()
                     if hasattr(f, "__code__"))


# Ops that run for these, at any depth below the program's frame, run at once, untraced:
# - torch rebuilding a tensor around memory it received (a DataLoader worker's batch, torch.load,
#   deepcopy): a tensor from outside, as torch.from_numpy's is;
# - a worker-fed DataLoader's iterator (its sampler's randperm, the batches it receives): which of
#   its paths runs them depends on the order in which the workers' batches arrive, so a trace of
#   them would not be met again (an epoch fell back where a batch came before the one before it).
_OUTSIDE = _REBUILDS | _worker_loader()


def _from_outside(frame, roots) -> bool:
    """Whether an op called at ``frame`` runs for code in ``_OUTSIDE`` (up to the program's frame)."""
    keys = roots._keys
    while frame is not None:
        code = frame.f_code
        if code in _OUTSIDE:
            return True
        if code in keys:
            return False
        frame = frame.f_back
    return False
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_USER_CALLER = os.path.join(_PACKAGE, "session.py")  # runs the user's code (run_cell, call, trace)


def _in_engine(frame) -> bool:
    """Whether ``frame``, where an interrupt landed, runs for the engine: the first frame of this
    package outward from it is not the session's (which calls the user's code)."""
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_PACKAGE):
            return name != _USER_CALLER
        frame = frame.f_back
    return False


def _without_lengths(spec):
    """A spec with every list or tuple of tensors alone reduced to one tensor: the op's structure
    apart from how many tensors such an argument holds."""
    if type(spec) is not tuple:
        return spec
    if (len(spec) == 2 and type(spec[0]) is bool and type(spec[1]) is tuple and spec[1]
            and all(x is T for x in spec[1])):
        return (spec[0], (T,))
    return tuple([_without_lengths(x) for x in spec])


def _same_kind_of_sequence(a, b) -> bool:
    """Two output structures that are sequences of the same type, all tensors, of any lengths."""
    return (type(a) is tuple and type(b) is tuple and a[0] == b[0] == "seq" and a[1] is b[1]
            and all(a[2]) and all(b[2]))


def _run_meta(func, args, kwargs):
    """A metadata query, answered without materialising futures (their subclass dispatch is off)."""
    with torch._C.DisableTorchFunctionSubclass():
        return func(*args, **(kwargs or {}))


def _live_outputs(futs: list) -> tuple:
    return tuple([i for i in range(len(futs)) if _getrefcount(futs[i]) > 2 + futs[i]._tn_pooled])


def _state_without_marks(self):
    """``Tensor.__getstate__``: the state Python's default gives, less the engine's ``_tn_``
    attributes (provenance, skeleton-local marks), which are no part of the user's tensor."""
    state = object.__getstate__(self)
    inner = state[0] if type(state) is tuple else state
    if type(inner) is dict and any(k.startswith("_tn_") for k in inner):
        inner = {k: v for k, v in inner.items() if not k.startswith("_tn_")}
        state = (inner, state[1]) if type(state) is tuple else inner or None
    return state


def _keep_marks_out_of_pickles() -> None:
    """torch.save, pickle and multiprocessing pickle a tensor's Python state with it: without this,
    a checkpoint written during co-execution carries the marks and is not eager's, byte for byte."""
    if torch.Tensor.__dict__.get("__getstate__") is not _state_without_marks:
        torch.Tensor.__getstate__ = _state_without_marks  # type: ignore[method-assign,assignment]


_STORAGE_USERS = getattr(torch._C, "_storage_Use_Count", None)  # private: absent, no mark is restored


def _in_meta(tensors: list) -> tuple:
    """The input metadata of a node key: a future's from the trace, a tensor's own."""
    return tuple([t._tn_meta if type(t) is FutureTensor else plain_meta(t)
                  for t in tensors])  # (a lookup key: not interned, which would hash each tuple once more)


def _referents(t) -> tuple | None:
    """What refers to ``t``: its Python references and its storage's users (views, numpy arrays)."""
    if _STORAGE_USERS is None:
        return None
    return _getrefcount(t), _STORAGE_USERS(t.untyped_storage()._cdata)


def _all_local(tensors: list) -> bool:
    """Whether every tensor is skeleton-local: small CPU state no block has ever taken.

    A tensor is local when it was made from Python data with no tensor input (an optimizer's
    ``step`` counter) and since then only immediate ops and fetches used it. No block can have
    written it (a block that takes it clears the mark), and it is no parameter's ``.grad``
    (a setter, like any other op, clears the mark), so reading it needs no wait.
    """
    if not tensors:
        return False
    for t in tensors:
        if type(t) is FutureTensor or not t.__dict__.get("_tn_local"):
            return False
    return True


# The wrapper's own dispatch key: excluded, an in-place view op restrides the future itself
_PYTHON_KEY = torch._C.DispatchKeySet(torch._C.DispatchKey.Python)

# A node's ``immediate`` when it reads a ``.grad`` (truthy, as ``immediate`` is): it is deferred
# only while the real ``.grad`` cannot be None (see CoExecutor._no_grad_yet; _fastpath.c's
# grad_read_now asks the same in C)
GRAD_READ = "grad read"

# The gradient table's object for a tensor whose .grad is not followed (see CoExecutor._grad_entry)
_UNFOLLOWED = "not followed"

# A node's ``immediate`` when the op reads an index tensor whose values may be out of range (an id
# past an embedding's rows): checked where the index is real and on the CPU, and where it is out
# of range the op runs at once, so that eager's error comes before the program's next lines run
# (see _out_of_range; _fastpath.c hands these nodes to _validated_op)
CHECK_INDEX = "check index"
_INDEX_CHECKED = frozenset({"embedding", "embedding_bag", "cross_entropy", "nll_loss", "gather", "index_select",
                            "__getitem__"})

# A node's ``immediate`` when it is a view in the program's try: ``x.view(-1)`` raises where x's
# strides do not allow it (a transpose), and strides are not in a node's key. Deferred, the error
# came at a later sync, outside the try. The view is deferred where it is known to succeed, and
# elsewhere runs at once, after the blocks before it, raising at its line as eager's does
# (_views; _fastpath.c's view_unknown is its first part). A future's strides are not known before
# its block runs (its wrapper's are the trace's): such a view is deferred until one raised at its
# site (``node.raised``), and waits from then on. (Each view of a future waiting inside a ``try``
# around a whole training loop, a common form, would cost a sync each.)
CHECK_VIEW = "check view"
# An op in the program's try fed numbers (floats, and ints that vary): a new number may make it
# raise (``counts // k`` for k = 0, ``x ** k`` of an int tensor for k = -1, ``torch.full((2,), v,
# dtype=torch.uint8)`` for v = 300, ``randint(0, n)`` for n = 0, ``normal_(0, std)`` for std < 0,
# ``quantile(q)`` for q > 1), which eager raises at the call, inside the try. Deferred, the error
# surfaced at a later sync, outside it. The numbers the op ran with (traced, or run at once) defer
# it; another runs it at once (_scalars_ran). (_fastpath.c hands these to _validated_op.)
CHECK_SCALARS = "check scalars"
_SCALARS_KEPT = 256  # the most number tuples a node keeps as known to run


# Warnings shown (a count, and the last one's WarningMessage), by a wrapper of the warnings module's
# hook that every shown warning passes (``warnings._showwarnmsg``; catch_warnings replaces what it
# calls, not it). A traced op that showed a warning under a filter that shows it every time
# (``simplefilter("always")``, often in ``catch_warnings(record=True)``) runs at once from then on
# (a sync): deferred, its later warnings came from its block when the block ran, at the line of the
# sync that ran it, outside a ``with`` around the op. (Under the default filters a warning shows
# once per line, and the block's are ignored: ignore_block_warnings.)
_SHOWN: list = [0, None]


def _install_warning_hook() -> None:
    show = getattr(warnings, "_showwarnmsg", None)
    if show is None or getattr(show, "_tn_hook", False):
        return

    def _showwarnmsg(msg, _show=show):
        _SHOWN[0] += 1
        _SHOWN[1] = msg
        return _show(msg)

    _showwarnmsg._tn_hook = True  # type: ignore[attr-defined]
    warnings._showwarnmsg = _showwarnmsg  # type: ignore[attr-defined]


def _shown_every_time(msg, filters_at_start: object) -> bool:
    """Whether warning ``msg`` may show again at the op's next call: the program is inside a
    ``catch_warnings`` it entered in this cell (the filters are another list than at the cell's
    start: entered at each turn, each entry makes every line show its warnings again), or the first
    filter matching its text, category and line (one naming a module matches the program's) shows
    it at every call (``always``)."""
    if msg is None:
        return False
    if warnings.filters is not filters_at_start:
        return True
    text = str(msg.message)
    for action, pattern, category, module, lineno in warnings.filters:
        if ((pattern is None or pattern.match(text)) and issubclass(msg.category, category)
                and (module is None or module.match("__main__")) and (lineno == 0 or lineno == msg.lineno)):
            return action in ("always", "all")
    return getattr(warnings, "defaultaction", "default") in ("always", "all")


_install_warning_hook()


def _scalars_known(node: Node, scalars: list) -> bool:
    """Whether ``node`` ran with these numbers before (or does not check them: see CHECK_SCALARS)."""
    known = node.scalars_ok
    if known is None:
        return True
    try:
        return tuple(scalars) in known
    except TypeError:
        return False


def _scalars_ran(node: Node, scalars: list) -> None:
    """The op of ``node`` (CHECK_SCALARS) ran with ``scalars`` without raising: they defer it from now on."""
    known = node.scalars_ok
    if known is not None and len(known) < _SCALARS_KEPT:
        try:
            known.add(tuple(scalars))
        except TypeError:
            pass
_VIEWS = frozenset({"view", "view_as"})


def _views(node: Node, func, args: tuple, kwargs: dict, tensors: list) -> bool | None:
    """Whether a view in the program's try (CHECK_VIEW) succeeds: its input is real (or a future
    whose value is known) and contiguous, or its view, taken now, succeeds. None where its input is
    a future not yet computed (not known without waiting)."""
    x = tensors[0]
    if type(x) is FutureTensor:
        x = x._tn_val
        if x is None:
            return None
    if x.is_contiguous():
        return True  # (the node's key holds the shape it was viewed as from this shape)
    try:
        if node.info.name == "view_as":
            other = tensors[1]
            x.view(other._tn_meta[0] if type(other) is FutureTensor else other.shape)
        else:
            func(x, *args[1:], **kwargs)
    except RuntimeError:
        return False
    return True


# Ops on one-element CPU tensors that the skeleton runs at once instead of deferring, when their
# inputs are real: optimizer step counters (``step_t += 1``), so that ``step_t.item()`` needs no
# wait. Random ops are not here: they must draw from the generator in program order.
_IMMEDIATE_OPS = frozenset({
    "__iadd__", "__isub__", "__imul__", "__itruediv__", "add_", "sub_", "mul_", "div_", "add", "sub", "mul", "div",
    "__add__", "__sub__", "__mul__", "__truediv__", "__radd__", "__rsub__", "__rmul__", "__rtruediv__",
    "_foreach_add_", "_foreach_add", "_foreach_sub_", "_foreach_mul_", "copy_", "fill_", "zero_",
})


def _restride(fut: FutureTensor, value: torch.Tensor) -> None:
    """Give the wrapper ``fut`` the shape and strides of ``value`` (a view of itself, below the
    Python key: RuntimeError where they need more elements than it has)."""
    with torch._C._ExcludeDispatchKeyGuard(_PYTHON_KEY), torch._C._AutoDispatchBelowADInplaceOrView():
        torch.ops.aten.as_strided_.default(fut, value.shape, value.stride())


_NUMERIC_SETTERS = [(torch, "set_flush_denormal"), (torch._C, "set_flush_denormal"), (torch, "set_num_threads"),
                    *((torch._C, name) for name in (
                        "_set_mkldnn_enabled", "_set_mkldnn_deterministic", "_set_sdp_use_flash", "_set_sdp_use_math",
                        "_set_sdp_use_mem_efficient", "_set_sdp_use_cudnn", "_set_sdp_use_overrideable",
                        "_set_sdp_use_fa3", "_set_sdp_priority_order", "_set_cudnn_enabled", "_set_cudnn_benchmark",
                        "_set_cudnn_deterministic", "_set_cudnn_allow_tf32", "_set_cublas_allow_tf32",
                        "_set_deterministic_algorithms", "_set_float32_matmul_precision"))]


def _runs_programs_python(func) -> bool:
    """Whether the op is Python of the program's: a custom autograd Function's ``apply`` (its
    forward), an op defined with ``torch.library.custom_op``. Such Python may read what the program
    changes next and do what the program reads next (a counter, a list, a print): it runs at once,
    as in eager. (Deferred, it ran with the block, after the lines that followed it.)"""
    owner = getattr(func, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, torch.autograd.Function):
        return True
    if isinstance(func, torch._ops.OpOverload) and func.namespace not in _TORCH_NAMESPACES:
        from torch._library.custom_ops import OPDEFS
        return f"{func.namespace}::{func._opname}" in OPDEFS
    return False


_TORCH_NAMESPACES = frozenset({"aten", "prims", "quantized", "_quantized", "profiler", "_c10d_functional",
                               "c10d_functional", "_dtensor", "inductor", "higher_order"})


def _value_shared(fut: FutureTensor) -> bool:
    """Whether the future's value is memory numpy shares (the program called ``.numpy()`` on it)."""
    val = fut._tn_val
    return val is not None and val.__dict__.get("_tn_numpy") is True


def _is_alias_of(out, t) -> bool:
    """Whether ``out`` is a view of ``t``'s memory."""
    try:
        return torch._C._is_alias_of(out, t)  # type: ignore[attr-defined]
    except (RuntimeError, TypeError, NotImplementedError):
        return False  # (no storage)


# Ops that return their input itself for some calls and a new tensor for others of one node key
# (an op that always returns it, in place, is its node's alias). Dropout returns its input where
# its rate, a float and so a feed, is 0, in training only (each value here is the op's default for
# ``training``, a constant of the key). Traced at rate 0 (a warm-up, an eval pass at step 0), the
# node returned its input for every rate after, and nothing was ever dropped.
_DROPOUTS = {"dropout": True, "dropout1d": True, "dropout2d": True, "dropout3d": True, "feature_dropout": True,
             "alpha_dropout": False, "feature_alpha_dropout": False}
# ``contiguous`` (and ``to`` with a memory format) returns its input where its strides already are
# the format's, ``resolve_conj`` / ``resolve_neg`` where it has no conjugate or negative bit: none
# of which is in the input's metadata. Traced on a contiguous tensor, a transposed one of the same
# shape got itself back, and an in-place op on the "copy" wrote into it. (``reshape`` never returns
# its input object, but a view or a copy, the block's; ``flatten`` returns it where the shape, in the
# key, says so: a 1-d tensor.)
_LAYOUT_DECIDES = frozenset({"contiguous", "resolve_conj", "resolve_neg"})


def _returns_input_only_sometimes(name: str, args: tuple, kwargs: dict | None) -> bool:
    """Whether a call of op ``name`` that returned its input may return a new tensor at another call
    of its node (see _DROPOUTS, _LAYOUT_DECIDES)."""
    kwargs = kwargs or {}
    training = _DROPOUTS.get(name)
    if training is not None:
        training = args[2] if len(args) > 2 else kwargs.get("training", kwargs.get("train", training))
        inplace = args[3] if len(args) > 3 else kwargs.get("inplace", False)
        return bool(training) and not inplace
    if name == "to":
        return any(type(v) is torch.memory_format and v is not torch.preserve_format
                   for v in itertools.chain(args, kwargs.values()))
    return name in _LAYOUT_DECIDES


def _descriptor_name(func) -> str | None:
    """The property a getset descriptor's method-wrapper is for (``Tensor.grad.__delete__``: "grad")."""
    return getattr(getattr(func, "__self__", None), "__name__", None)


def _writes_into(info: OpInfo) -> bool:
    """Whether the call writes into its first argument and returns None: ``x[i] = v``, a
    property's setter (``x.requires_grad = True``, ``x.data = y``)."""
    return info.name == "__setitem__" or info.setter


def _is_small_cpu(t) -> bool:
    return t.device.type == "cpu" and t.numel() <= 1 and not t.requires_grad


# Ops that raise on their input's values (a matrix that is not positive-definite, a singular one):
# where the user's code would catch that (``try: cholesky(K) except LinAlgError: add jitter``), the
# op runs for real, so that its exception is raised at the call, as eager raises it.
_RAISES_ON_VALUES = frozenset({
    "linalg_cholesky", "cholesky", "linalg_inv", "inverse", "linalg_solve", "linalg_eigh", "linalg_eigvalsh",
    "linalg_eig", "linalg_eigvals", "linalg_svd", "linalg_svdvals", "linalg_lu_factor", "linalg_lu",
    "linalg_lstsq", "linalg_matrix_power", "linalg_tensorinv", "linalg_tensorsolve", "linalg_ldl_factor",
    # an index out of range (a class id past the embedding's rows or the loss's classes)
    "embedding", "embedding_bag", "cross_entropy", "nll_loss", "multi_margin_loss", "one_hot", "gather", "take",
    "take_along_dim", "index_select", "scatter", "scatter_", "scatter_add", "scatter_add_", "scatter_reduce",
    "scatter_reduce_", "index_add", "index_add_", "index_copy", "index_copy_", "index_fill", "index_fill_",
    "index_put", "index_put_", "index_reduce", "index_reduce_", "put", "put_", "bincount",
    # a probability outside [0, 1], a distribution of no mass, a negative deviation
    "multinomial", "bernoulli", "bernoulli_", "binary_cross_entropy", "normal", "poisson",
})
# An integer division by a tensor holding a zero raises (ZeroDivisionError); a float one does not.
_INT_DIVISIONS = frozenset({
    "floor_divide", "floor_divide_", "__floordiv__", "__rfloordiv__", "__ifloordiv__", "remainder", "remainder_",
    "__mod__", "__rmod__", "__imod__", "fmod", "fmod_", "div", "div_", "divide", "divide_",
})
# Indexing raises on the values of a tensor among its indices (``out[idx]``, ``x[idx] = v``).
_INDEXING = frozenset({"__getitem__", "__setitem__"})
# Ops whose int feeds index a dimension (``xs[i]``, ``x.select(0, i)``): a new one may be out of range.
_INDEX_INTS = frozenset({"__getitem__", "__setitem__", "select", "narrow"})
_GENERALIZED = DEFERRED | {"sync"}  # (a sync node runs for real: any int it is called with)


def _may_raise_on_values(info: OpInfo, tensors: list) -> bool:
    return (info.name in _RAISES_ON_VALUES or (info.name in _INDEXING and len(tensors) > 1)
            or (info.name in _INT_DIVISIONS and len(tensors) > 1
                and not any(t.dtype.is_floating_point or t.dtype.is_complex for t in tensors)))


def _checks_index(name: str, tensors: list) -> bool:
    """Whether the skeleton checks the range of this call's index (see _out_of_range)."""
    return name in _INDEX_CHECKED and len(tensors) >= 2 and _index_of(name, tensors) is not None


def _index_of(name: str, tensors: list):
    """The index tensor of a call of op ``name`` (see _INDEX_CHECKED), where it is an integer
    tensor: an embedding's ids (its first tensor; the weight is its second), a loss's classes,
    gather's and index_select's index, ``x[idx]``'s idx (their second). Else None (a loss's
    probabilities, a boolean mask, ``x[i, idx]``). (A future's metadata is read from the future:
    asked of it here, in the handler, it would wait for its value.)"""
    if name == "__getitem__" and len(tensors) != 2:
        return None
    idx = tensors[0] if name in ("embedding", "embedding_bag") else tensors[1]
    return idx if _integral(idx._tn_meta[1] if type(idx) is FutureTensor else idx.dtype) else None


def _out_of_range(name: str, args: tuple, kwargs: dict, tensors: list, idx) -> bool | None:
    """Whether this call's index tensor ``idx`` (``_index_of``) is real, on the CPU, and holds a
    value out of range for the op (then it runs at once, and raises as eager does). None where that
    cannot be known without waiting (the index is a future, or on another device) or the call is
    not of the simple forms checked."""
    if type(idx) is FutureTensor:
        idx = idx._tn_val  # (a future whose value is known: a batch's labels the program printed)
    if idx is None or idx.device.type != "cpu":
        return None
    if not idx.numel():
        return False
    x = tensors[1] if name in ("embedding", "embedding_bag") else tensors[0]  # (what it indexes)
    shape = x._tn_meta[0] if type(x) is FutureTensor else x.shape
    low, allowed = 0, None
    if name in ("embedding", "embedding_bag"):
        if not shape:
            return None
        bound = shape[0]
    elif name in ("cross_entropy", "nll_loss"):
        if not shape:
            return None
        bound = shape[1] if len(shape) > 1 else shape[0]
        allowed = kwargs.get("ignore_index", args[4] if len(args) > 4 else -100)
    elif name in ("gather", "index_select"):
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if type(dim) is not int or not -max(len(shape), 1) <= dim < max(len(shape), 1):
            return None
        bound = shape[dim] if shape else 1
    else:  # __getitem__
        if len(args) != 2 or args[1] is not idx or not shape:
            return None  # (only ``x[idx]``)
        bound, low = shape[0], -shape[0]
    lo, hi = (int(v) for v in torch.aminmax(idx))
    if allowed is not None and allowed in (lo, hi):
        values = idx[idx != allowed]
        if not values.numel():
            return False
        lo, hi = int(values.min()), int(values.max())
    return lo < low or hi >= bound


def _ints_out_of_range(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether an int this call indexes a dimension with is out of range for it (``xs[i]``,
    ``x[:, i]``, ``x[..., i]``, ``x.select(d, i)``, ``x.narrow(d, start, n)``, ``x[i] = v``): then
    the op runs at once and raises at its line, as eager does. Forms not checked here answer False."""
    x = args[0] if args else kwargs.get("input", kwargs.get("self"))
    if not isinstance(x, torch.Tensor):
        return False
    shape = x._tn_meta[0] if type(x) is FutureTensor else x.shape
    if name in ("select", "narrow"):
        rest = [_int_of(v) for v in list(args[1:]) + [kwargs[k] for k in ("dim", "index", "start", "length") if k in kwargs]]
        ints = [v for v in rest if v is not None]
        if len(ints) < 2 or len(ints) < len(rest) or not shape:
            return False
        dim, start = ints[0], ints[1]
        if not -len(shape) <= dim < len(shape):
            return False
        size = shape[dim]
        if name == "select":
            return not -size <= start < size
        length = ints[2] if len(ints) > 2 else 0
        if not -size <= start <= size:
            return True
        return length < 0 or start % size + length > size if size else length > 0
    if len(args) < 2:
        return False
    key = args[1]
    items = key if type(key) is tuple else (key,)
    spans = []  # the dimensions each item consumes
    for k in items:
        if k is None or k is Ellipsis or type(k) is bool:
            spans.append(0)
        elif type(k) is slice or _int_of(k) is not None:
            spans.append(1)
        elif isinstance(k, torch.Tensor):
            meta = k._tn_meta if type(k) is FutureTensor else (k.shape, k.dtype)
            spans.append(len(meta[0]) if meta[1] is torch.bool else 1)
        else:
            return False  # (a list of indices: advanced indexing, not checked here)
    dim = 0
    for k, span in zip(items, spans):
        if k is Ellipsis:
            dim = len(shape) - sum(spans[items.index(k) + 1:])  # (the dims after it: theirs)
            continue
        i = _int_of(k) if type(k) is not slice and span == 1 else None
        if i is not None:
            if dim >= len(shape):
                return False  # (too many indices: torch says so, its error)
            if not -shape[dim] <= i < shape[dim]:
                return True
        dim += span
    return False


def _int_of(v) -> int | None:
    """``v`` as an index int (a Python or numpy int, not a bool), or None."""
    if type(v) is bool or isinstance(v, torch.Tensor):
        return None
    if isinstance(v, int):
        return int(v)
    return int(v) if NUMPY_SCALARS.get(type(v)) is int else None


# Calls that register Python code for backward to run: tensor hooks, and the Functions that module
# backward hooks (register_full_backward_hook) and reentrant checkpoints put into the forward.
_HOOK_OPS = frozenset({"register_hook", "register_post_accumulate_grad_hook"})
_PYTHON_BACKWARD = tuple(cls for cls in (getattr(torch.nn.modules._functions, "BackwardHookFunction", None),
                                         getattr(torch.utils.checkpoint, "CheckpointFunction", None)) if cls)
# Module.__call__'s code, and the functions nested in it (the hooks' path runs in one, ``inner``)
_CALL_IMPL = (lambda code: frozenset([code, *(c for c in code.co_consts if isinstance(c, types.CodeType))]))(
    torch.nn.Module._call_impl.__code__)


def _registers_python_for_backward(func, info: OpInfo, grad: tuple, frame) -> bool:
    """Whether this call makes backward run Python of the program's: a tensor hook, a Function
    whose backward calls the program (module backward hooks, a reentrant checkpoint), an op under
    saved-tensor hooks (their unpack runs in backward: a non-reentrant checkpoint recomputes
    there), or a module's deprecated ``register_backward_hook`` hooks, which ``Module.__call__``
    puts on the output's ``grad_fn`` (the access this call is)."""
    if info.name in _HOOK_OPS or _under_saved_hooks(grad):
        return True
    owner = getattr(func, "__self__", None)
    if any(owner is cls for cls in _PYTHON_BACKWARD):
        return True
    return frame.f_code in _CALL_IMPL and bool(frame.f_locals.get("non_full_backward_hooks"))


def _state_only(fut: FutureTensor) -> bool:
    """Whether computed future ``fut`` is held by its container alone: one reference there, the
    caller's variable, this parameter, getrefcount's argument, its node's ring where pooled; no
    weakref."""
    return (fut._tn_val is not None and _getrefcount(fut) <= 4 + fut._tn_pooled
            and not _getweakrefcount(fut))


def _has_hooks(t: torch.Tensor) -> bool:
    return bool(t._backward_hooks or getattr(t, "_post_accumulate_grad_hooks", None))


def _reaches_hooked_leaves(roots: list, leaves: weakref.WeakValueDictionary) -> bool:
    """Walk the autograd graph behind a backward's tensors (real: this is the trace), keep the
    leaves it accumulates into (checked again at each cell's start: a hook registered between
    cells, past the mode, on a parameter), and whether any of them has a hook already."""
    stack = [t.grad_fn for t in roots if isinstance(t, torch.Tensor)]
    seen: set = set()
    hooked = False
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        leaf = getattr(fn, "variable", None)
        if isinstance(leaf, torch.Tensor):
            leaves[id(leaf)] = leaf  # (by id: a WeakSet compares tensors with ==)
            hooked = hooked or _has_hooks(leaf)
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return hooked


_RING = 256  # the most futures a node output keeps for reuse
# auto's choice (CoExecutor._choose): clean co-executed iterations measured before an eager probe of
# CHOICE_EAGER iterations (the first CHOICE_WARMUP of a cell not counted: they still generate blocks);
# eager iterations before co-execution is measured again (doubling up to CHOICE_RETRY_MAX while eager
# keeps winning); co-executed iterations before the next probe once co-execution won
CHOICE_COEXEC, CHOICE_WARMUP, CHOICE_EAGER, CHOICE_RETRY, CHOICE_RETRY_MAX, CHOICE_KEEP = 5, 3, 3, 50, 800, 200
# iterations of a fraction of a millisecond: each side is measured until its iterations add up to
# CHOICE_MIN_MS (at most CHOICE_MAX_SAMPLES of them), so that a hiccup of the machine in two of
# three short eager iterations does not decide
CHOICE_MIN_MS, CHOICE_MAX_SAMPLES = 5.0, 40
# co-execution kept by less than this factor is measured again after CHOICE_RETRY iterations, not
# CHOICE_KEEP: on a noisy machine two medians that close can come out either way
CHOICE_CLEAR = 1.2
# an eager iteration under the mode that lasts this many times the iteration before it (and at least
# the seconds) while a loop ticks: the anchor's loop ended (CoExecutor._leave_eager)
EAGER_GIVE_UP, EAGER_GIVE_UP_MIN_S = 20, 0.01
# periods an anchor whose loop does not tick runs co-executed before auto probes eager there
CHOICE_UNTICKED = 50
# Turns of the anchor's loop that auto waits, after one backward, for the next (see
# _may_be_steps_of_a_training_loop): a backward that never comes again does not stop its probes.
STEPS_WAIT_MAX = 1000


def _after(positions: array, op: int) -> int:
    """How many of the ordered op counts ``positions`` come after ``op``."""
    return len(positions) - bisect.bisect_right(positions, op)


def _enough(samples: list, count: int) -> bool:
    """Whether auto's measurements of one side can decide: ``count`` iterations, and either
    CHOICE_MIN_MS of them or CHOICE_MAX_SAMPLES iterations."""
    return len(samples) >= count and (sum(samples) >= CHOICE_MIN_MS or len(samples) >= CHOICE_MAX_SAMPLES)


def _new_pool(node: Node) -> list:
    """One ring per output: ``[position, future, future, ...]``."""
    node.pool = [[0] for _ in node.out_meta]
    return node.pool


def _out_src(node: Node, tensors: list, sources: list | None = None):
    """The provenance of a property read's output: ("prop", name, the owner's provenance).

    ``p.grad`` read twice returns one tensor object when traced but two futures in the
    skeleton; naming the output by what it is read from makes both agree.
    """
    if node.info.prop is None or node.info.setter:
        return None
    if sources is not None:
        return ("prop", node.info.prop, sources[0])
    t = tensors[0]
    return ("prop", node.info.prop, t._tn_src if type(t) is FutureTensor else getattr(t, "_tn_src", EXTERNAL))


class _Immediate:
    """An op the skeleton ran itself, replayable with the blocks (graph-only measurement)."""

    def __init__(self, node: Node, scalars: list) -> None:
        self.node = node
        self.scalars = list(scalars)

    def __call__(self, *tensors):
        node, scalars = self.node, self.scalars
        out = node.func(*fill(node.targs, tensors, scalars), **fill(node.tkwargs, tensors, scalars))
        struct = out_structure(out)
        return out_tensors(out, struct) if struct is not None else []


_META_ERRORS = (RuntimeError, TypeError, ValueError, IndexError, NotImplementedError)
_JOINS = frozenset({torch.cat, torch.concat, torch.concatenate, torch.stack})


def _run_on_meta(func, targs, tkwargs, in_meta, scalars: list, grad_enabled: bool, real: dict | None = None):
    """``func`` called on meta tensors of ``in_meta`` (the call's template filled with them and its
    scalars) under the given grad mode: the output's metadata with no data. ``real``: tensors passed
    as they are, by position (see ``_host_ints``). Raises what it raises (one of ``_META_ERRORS``
    where there is no meta kernel or the shapes do not fit)."""
    metas = [torch.empty(m[0], dtype=m[1], device="meta").requires_grad_(m[3]) if m[3] and m[1].is_floating_point
             else torch.empty(m[0], dtype=m[1], device="meta") for m in in_meta]
    if real:
        for i, t in real.items():
            metas[i] = t
    if not in_meta:
        # a factory (torch.randn(n, m), torch.zeros(n)): made on the meta device too, or it would
        # run for real here, and a random one would draw from the generator ahead of the block
        tkwargs = {**tkwargs, "device": "meta"}
    previous = torch.is_grad_enabled()
    try:
        torch._C._set_grad_enabled(grad_enabled)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*fill(targs, metas, scalars), **fill(tkwargs, metas, scalars))
    finally:
        torch._C._set_grad_enabled(previous)


def _host_ints(tensors: list) -> dict | None:
    """The call's real integer tensors on the CPU, by position (None where there are none): what a
    meta run may read values from. Only where the op was deferred before with inputs of these
    kinds, so its outputs' shapes follow from its inputs' shapes (a value-dependent one is sync)."""
    real = {i: t for i, t in enumerate(tensors)
            if type(t) is not FutureTensor and t.device.type == "cpu" and _integral(t.dtype)}
    return real or None


def _integral(dtype: torch.dtype) -> bool:
    """Whether tensors of ``dtype`` hold integers (indices, lengths): not floats, complex or bools."""
    return not (dtype.is_floating_point or dtype.is_complex or dtype is torch.bool)


def _out_shapes(func, args, kwargs, tensors: list, scalars: list) -> tuple | None:
    """The shapes of what ``func`` returns for this call, from a run on meta tensors (None where
    it cannot run there): a shape-keyed node's key (``TraceGraph.shape_keyed``)."""
    try:
        out = _run_on_meta(func, *template(args, kwargs), _in_meta(tensors), scalars, False)
    except _META_ERRORS:
        return None
    struct = out_structure(out)
    return tuple([t.shape for t in out_tensors(out, struct)]) if struct is not None else None


def _optimizer_params(optimizer):
    return (p for group in optimizer.param_groups for p in group["params"])


def _module_params(module):
    return module.parameters()


class _StaticTypeDict:
    """Set and restore attributes of a type implemented in C whose ``setattr`` refuses them, in the
    dict behind its ``__dict__`` (a mappingproxy), then drop the type's method cache."""

    _cls: type
    _dict: dict | None

    def __init__(self, cls: type) -> None:
        object.__setattr__(self, "_cls", cls)
        referents = gc.get_referents(cls.__dict__)
        object.__setattr__(self, "_dict", referents[0] if len(referents) == 1 and type(referents[0]) is dict else None)

    @property
    def writable(self) -> bool:
        return self._dict is not None

    def __setattr__(self, name: str, value) -> None:
        assert self._dict is not None
        self._dict[name] = value
        ctypes.pythonapi.PyType_Modified(ctypes.py_object(self._cls))


def _default_generator_syncs(original, executor, owner_thread: int):
    def method(generator, *args, **kwargs):
        # (the CPU's default generator, or a device's: ``torch.cuda.get_rng_state`` calls this too;
        # ops given a generator the program made run at once, and leave nothing pending in it)
        if (generator is torch.default_generator or generator.device.type != "cpu") and _get_ident() == owner_thread:
            executor.materialize()
        return original(generator, *args, **kwargs)
    method.__name__ = original.__name__
    return method


def _unconditional_zero_grad(original, params_of):
    def zero_grad(self, set_to_none: bool = True):
        if type(self).zero_grad is not zero_grad or (not set_to_none and getattr(self, "defaults", {}).get("foreach")):
            return original(self, set_to_none)
        if set_to_none:
            for p in params_of(self):
                p.grad = None
            return
        # ``set_to_none=False``: upstream reads each gradient's ``grad_fn`` (a wait for a future's
        # value) to choose detach_ or requires_grad_(False); a gradient that does not require
        # grad, its metadata says without a wait, has none, and needs neither.
        for p in params_of(self):
            g = p.grad
            if g is None:
                continue
            if g.requires_grad:
                if g.grad_fn is not None:
                    g.detach_()
                else:
                    g.requires_grad_(False)
            g.zero_()

    zero_grad.__doc__ = original.__doc__
    return zero_grad


def _merge_modes(modes: list[str]) -> str:
    for mode in ("fallback", "trace", "coexec", "eager"):
        if mode in modes:
            return mode
    return "trace"



