"""Backends: how a block's GraphModule becomes something the GraphRunner calls.

* ``eager``      -- the GraphModule's own generated code, op by op: no compile cost, the same
  kernels and random stream as eager PyTorch (the correctness oracle, the default in tests).
* ``inductor``   -- ``torch.compile`` of the block. Compilation runs in a background thread on
  clones of the block's first inputs; until it is ready the block runs eagerly, so no cell
  ever waits for a compiler.
* ``cudagraphs`` -- ``torch.compile(backend="cudagraphs")``: CUDA only, static shapes.
* ``auto``       -- on CUDA a block is compiled once it has run ``AUTO_COMPILE_AFTER`` times (2),
  then *measured* against its eager form and kept only if faster. On a CPU blocks stay eager:
  an Inductor compile holds the GIL for ~20 s of Python on 2 cores, and every op of the program
  waits for it meanwhile (reinforce's step went from 0.3 to 3.5 ms while a block compiled).
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
from collections.abc import Callable

import torch

from ..graph.blocks import BlockSpec, block_ints, build_graph_module

BACKENDS = ("eager", "inductor", "cudagraphs", "auto")
COMPILE_THREAD = "terra-compile"  # the name of the threads that compile blocks
_COMPILE_THREADS: list[threading.Thread] = []


@atexit.register
def _join_compiles() -> None:
    """Let background compiles finish before the interpreter tears torch down under them."""
    for thread in _COMPILE_THREADS:
        thread.join(timeout=120)
AUTO_COMPILE_AFTER: dict[str, int | None] = {"cuda": 2, "cpu": None}  # None: never


class BackendError(ValueError):
    """An unknown or unusable backend name."""


def check_backend(name: str, device: str = "cpu") -> str:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name == "cudagraphs" and not torch.cuda.is_available():
        raise BackendError("the 'cudagraphs' backend needs a CUDA device; use 'inductor' or 'eager' on this machine")
    return name


def on_cuda(spec: BlockSpec) -> bool:
    """Whether a block touches CUDA tensors, from the trace's metadata (no future is waited for)."""
    return any(meta[2].type == "cuda" for node, _ in spec.ops for meta in (*node.in_meta, *node.out_meta))


def stays_eager(spec: BlockSpec, backend: str) -> bool:
    """Whether a block of ``spec`` will only ever run its generated code (never a compiled form)."""
    return backend == "eager" or (backend == "auto" and AUTO_COMPILE_AFTER["cuda" if on_cuda(spec) else "cpu"] is None)


class CompiledBlock:
    """The callable the GraphRunner runs for one block spec, switching to a compiled form when ready."""

    __slots__ = ("spec", "gm", "fn", "backend", "state", "compile_ms", "_trials", "_lock", "on_compiled", "runs", "done",
                 "on_cuda", "forward", "ints")

    def __init__(self, spec: BlockSpec, backend: str, on_compiled=None, gm: torch.fx.GraphModule | None = None,
                 ints: bool = False) -> None:
        self.spec = spec
        # ``ints``: a block that is never compiled takes its ints as inputs, so that its code serves
        # the blocks that differ from it in ints (``gm``: that code, generated before)
        self.ints = block_ints(spec) if ints else ()
        self.gm = gm if gm is not None else build_graph_module(spec, ints)
        self.forward = self.gm.forward  # the generated code itself: nn.Module's __call__ costs 1.8 µs a block
        self.on_cuda = on_cuda(spec)
        self.fn: Callable = self.gm
        self.backend = backend
        self.state = "eager" if backend == "eager" else "pending"
        self.compile_ms = 0.0
        self._trials: list = []
        self._lock = threading.Lock()
        self.on_compiled = on_compiled
        self.runs = 0
        self.done = threading.Event()  # set when compiling ended (compiled, or kept eager)
        if self.state == "eager":
            self.done.set()

    def __call__(self, *args):
        if self.state == "pending":
            self.runs += 1
            if self.backend != "auto":
                self._start_compile(args)
            else:
                threshold = _auto_threshold(args)
                if threshold is None:
                    self.state = "eager"
                    self.done.set()
                elif self.runs >= threshold:
                    self._start_compile(args)
        elif self.state == "measure":
            return self._measured(args)
        fn = self.fn
        if fn is self.gm:
            return self.forward(*args, *self.ints) if self.ints else self.forward(*args)
        return _call_compiled(fn, self.gm, args)

    def _start_compile(self, args) -> None:
        _thread_aware_is_compiling()
        with self._lock:
            if self.state != "pending":
                return
            self.state = "compiling"
        if any(node.barrier or node.grad_op or node.random or len(node.grad) > 2 for node, _ in self.spec.ops):
            # Autograd writes the .grad of tensors it does not take, and a compiled graph that
            # reads or sets .grad did not see those writes (gpt2 read None grads); a compiled
            # random op draws another stream than eager (the co-executed model got other initial
            # weights): such blocks run eagerly. The skeleton cuts blocks so that pure compute
            # stays apart from .grad. Nodes under autocast run eagerly too (not yet compiled
            # with their autocast wrappers: blocks._in_autocast).
            self.state = "eager"
            self.done.set()
            return
        examples = [_clone(a) for a in args]
        thread = threading.Thread(target=self._compile, args=(examples,), daemon=True, name=COMPILE_THREAD)
        _COMPILE_THREADS.append(thread)
        thread.start()

    def _compile(self, examples) -> None:
        t0 = time.perf_counter()
        kind = "cudagraphs" if self.backend == "cudagraphs" else "inductor"
        try:
            compiled = torch.compile(self.gm, backend=kind)
            compiled(*examples)
        except Exception as exc:  # a block Dynamo cannot compile keeps running eagerly
            self.compile_ms = (time.perf_counter() - t0) * 1e3
            self.state = "eager"
            self.done.set()
            if self.on_compiled:
                self.on_compiled(self, f"kept eager: {type(exc).__name__}: {exc}")
            return
        self.compile_ms = (time.perf_counter() - t0) * 1e3
        self.fn = compiled
        self.state = "measure" if self.backend == "auto" else "compiled"
        self.done.set()
        if self.on_compiled:
            self.on_compiled(self, "")

    def _measured(self, args):
        """Alternate compiled and eager runs a few times; keep whichever was faster."""
        use_compiled = len(self._trials) % 2 == 0
        t0 = time.perf_counter()
        out = _call_compiled(self.fn, self.gm, args) if use_compiled else self.gm(*args)
        self._trials.append((use_compiled, time.perf_counter() - t0))
        if len(self._trials) >= 10:
            compiled = sorted(t for c, t in self._trials if c)
            eager = sorted(t for c, t in self._trials if not c)
            if compiled[len(compiled) // 2] >= eager[len(eager) // 2]:
                self.fn = self.gm
            self.state = "compiled" if self.fn is not self.gm else "eager"
        return out


_NESTED_FX = "symbolically trace a dynamo-optimized function"


def _call_compiled(fn, gm, args):
    """Run a compiled block; its eager form while another thread's compile holds FX's tracing flag.

    ``torch.fx``'s "tracing" flag is process-wide too: while Inductor traces a block in the
    background, Dynamo refuses to run any compiled function from another thread (it believes it
    is being traced). It refuses before running anything, so the eager form can take over.
    """
    if torch.fx._symbolic_trace._is_fx_tracing_flag:
        return gm(*args)
    try:
        return fn(*args)
    except RuntimeError as exc:
        if _NESTED_FX not in str(exc):
            raise
        return gm(*args)


_SESSIONS: dict[int, int] = {}  # thread id -> open torch.compile sessions in that thread
_PATCHED: list = []  # the upstream function, once replaced


def _thread_aware_is_compiling() -> None:
    """Make ``torch.compiler.is_compiling()`` true only in the threads that are compiling.

    Upstream keeps one process-wide flag up for a whole compile session. With a block compiling
    in the background for ~20 s, the program's own thread would see it too, and library code
    that branches on it (torch.optim's ``_get_value``, ``clip_grad_norm_``) would take its
    compiled-graph paths in plain Python: different ops, and wrong results. Installed on the
    first background compile; Dynamo folds the new function to a constant, as it did the old.
    """
    if _PATCHED:
        return
    compiler = torch.compiler
    open_session = compiler._compile_session_context

    @contextlib.contextmanager
    def compile_session_context():
        ident = threading.get_ident()
        _SESSIONS[ident] = _SESSIONS.get(ident, 0) + 1
        try:
            with open_session():
                yield
        finally:
            left = _SESSIONS.pop(ident) - 1
            if left:
                _SESSIONS[ident] = left

    upstream = compiler.is_compiling

    def is_compiling() -> bool:
        if not compiler._is_compiling_flag or torch.jit.is_scripting():
            return False
        # set outside a compile session (torch.export): as upstream; else only where compiling
        return not _SESSIONS or threading.get_ident() in _SESSIONS

    is_compiling.__doc__ = upstream.__doc__
    is_compiling._dynamo_marked_constant = True  # type: ignore[attr-defined]
    compiler._compile_session_context = compile_session_context
    compiler.is_compiling = is_compiling
    _PATCHED.append(upstream)


def _auto_threshold(args) -> int | None:
    on_cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
    return AUTO_COMPILE_AFTER["cuda" if on_cuda else "cpu"]


def _clone(x):
    if isinstance(x, torch.Tensor):
        with torch.no_grad():
            c = x.detach().clone()
        return c.requires_grad_(x.requires_grad)
    return x
