"""Blocks: straight chains of deferred nodes, generated as ``torch.fx.GraphModule``.

A block is described by its :class:`BlockSpec`: the nodes in program order, and for each
tensor argument of each node its *wiring*: ``v >= 0`` is the ``v``-th value produced inside
the block, ``-1 - k`` is the block's ``k``-th input (state, a feed, or a value an earlier block
produced). Floats are inputs too, in order, so a changing learning rate never changes the
graph. ``outputs`` are the values that Python or later blocks still hold.

The generated module's ``forward(*inputs, *floats)`` returns those outputs. A block that is never
compiled takes its ints as inputs too (``forward(*inputs, *floats, *ints)``, :func:`block_ints`):
blocks that differ in ints alone (a data-dependent count of boxes in a ``view``, a sampler's
growing length in a slice) share one generated code. Grad mode is part
of the graph (``torch._C._set_grad_enabled`` calls, as Dynamo emits them), because the block
runs on the GraphRunner's thread, not the user's. A node traced under ``torch.autocast`` calls
its op through a wrapper that enters autocast as the trace saw it (:func:`_in_autocast`).
"""

from __future__ import annotations

import contextlib
import functools
import operator
import re
import warnings
from dataclasses import dataclass

import torch
import torch.fx

from ..trace.ops import NONE, TENSOR, fill, without_ints
from .tracegraph import Node


@dataclass(frozen=True)
class BlockSpec:
    """The structure of one block; equal specs share one compiled form."""

    ops: tuple  # ((Node, wiring), ...)
    n_inputs: int
    outputs: tuple  # value indices

    @property
    def nodes(self) -> list[Node]:
        return [node for node, _ in self.ops]

    @property
    def n_floats(self) -> int:
        return sum(node.n_floats for node, _ in self.ops)


def code_key(spec: BlockSpec) -> tuple:
    """What the generated code of a block built with its ints as inputs depends on (blocks that
    are never compiled): equal keys generate the same code.

    Per node: the op, its constants but ints (the scan spec of its key; every float, generalised
    int and int is a graph input: :func:`block_ints`), its grad mode and its output structure,
    and how its inputs are wired. Not the shapes: shape variants of one op (a data-dependent
    number of boxes) share their code.
    """
    return (tuple([((node.func, without_ints(node.key[2]), node.passed, node.grad, node.alias, node.out_struct,
                     len(node.out_meta)), wiring) for node, wiring in spec.ops]), spec.n_inputs, spec.outputs)


def _int_slots(node: Node) -> list[int]:
    """The positions of ``node``'s scalars that are ints of the graph (not passed in as feeds)."""
    passed = set(node.passed)
    return [k for k, v in enumerate(node.scalars_seen) if type(v) is int and k not in passed]


def block_ints(spec: BlockSpec) -> tuple:
    """The ints a block's generated code takes as inputs where it is built with ``ints``."""
    return tuple([node.scalars_seen[k] for node, _ in spec.ops for k in _int_slots(node)])


def produces(node: Node) -> int:
    """How many new values ``node`` adds to its block."""
    if node.alias >= 0 or node.out_struct is NONE:
        return 0
    return len(node.out_meta)


AMP_DEVICES = ("cpu", "cuda")  # the devices whose autocast state a node key records
any_autocast = getattr(torch._C, "_is_any_autocast_enabled",
                       lambda: any(torch.is_autocast_enabled(d) for d in AMP_DEVICES))
_WRAPPERS: dict = {}


@contextlib.contextmanager
def autocast_as(devices: tuple = (), cache: bool = True):
    """Autocast on for exactly ``devices`` (``((device, dtype), ...)``), off for the others that
    have it on: a node key's autocast state, or none at all (how the GraphRunner runs a block)."""
    on = {device for device, _ in devices}
    with contextlib.ExitStack() as stack:
        for device in AMP_DEVICES:
            if device not in on and torch.is_autocast_enabled(device):
                stack.enter_context(torch.autocast(device, enabled=False))
        for device, dtype in devices:
            stack.enter_context(torch.autocast(device, dtype=dtype, cache_enabled=cache))
        yield


def _wrapped(func, prefix: str, context):
    """A named function (an FX call target) that runs ``func`` inside ``context()``; one per pair."""
    wrapper = _WRAPPERS.get((func, prefix, context))
    if wrapper is None:
        def wrapper(*args, **kwargs):
            with context():
                return func(*args, **kwargs)

        name = getattr(func, "__name__", "op").strip("_") or "op"
        wrapper.__name__ = wrapper.__qualname__ = f"{prefix}_{name}"
        _WRAPPERS[(func, prefix, context)] = wrapper
    return wrapper


def _in_inference_mode(func):
    """``func`` under ``torch.inference_mode()``."""
    return _wrapped(func, "inference_mode", torch.inference_mode)


_AMP_CONTEXTS: dict = {}


def _in_autocast(func, amp: tuple):
    """``func`` under autocast as the trace saw it: ``amp`` is a node key's autocast part,
    ((device, dtype), ...) and the weight cache flag. The block itself runs with autocast off
    (``GraphRunner``): a node traced outside autocast must not run under the user's ``with
    torch.autocast`` that the flush happened in."""
    context = _AMP_CONTEXTS.get(amp)
    if context is None:
        context = _AMP_CONTEXTS[amp] = functools.partial(autocast_as, *amp)
    return _wrapped(func, "autocast", context)


def build_graph_module(spec: BlockSpec, ints: bool = False) -> torch.fx.GraphModule:
    """Generate the FX graph of a block; each call node carries ``meta['terra_op']`` (its index).
    With ``ints`` its ints are inputs after the floats (:func:`block_ints`), not constants."""
    g = torch.fx.Graph()
    inputs = [g.placeholder(f"in{k}") for k in range(spec.n_inputs)]
    floats = [g.placeholder(f"f{k}") for k in range(spec.n_floats)]
    int_inputs = iter([g.placeholder(f"i{k}") for k in range(len(block_ints(spec)))] if ints else ())
    values: list[torch.fx.Node] = []
    entry_grad = g.call_function(torch.is_grad_enabled, ())
    grad_enabled = None
    fbase = 0
    for index, (node, wiring) in enumerate(spec.ops):
        if node.grad[0] != grad_enabled:
            grad_enabled = node.grad[0]
            g.call_function(torch._C._set_grad_enabled, (grad_enabled,))
        tvals = [values[w] if w >= 0 else inputs[-1 - w] for w in wiring]
        svals = list(node.scalars_seen)  # scalars not passed are constants of the graph
        for j, k in enumerate(node.passed):
            svals[k] = floats[fbase + j]
        fbase += len(node.passed)
        if ints:
            for k in _int_slots(node):
                svals[k] = next(int_inputs)
        args = fill(node.targs, tvals, svals)
        kwargs = fill(node.tkwargs, tvals, svals)
        fx_node = _emit(g, node, args, kwargs)
        fx_node.meta["terra_op"] = index
        if produces(node):
            if node.out_struct is TENSOR:
                values.append(fx_node)
            else:
                _, _cls, mask = node.out_struct
                for i, is_tensor in enumerate(mask):
                    if is_tensor:
                        item = g.call_function(operator.getitem, (fx_node, i))
                        item.meta["terra_op"] = index
                        values.append(item)
    if grad_enabled is not None:
        g.call_function(torch._C._set_grad_enabled, (entry_grad,))  # leave the caller's mode as it was
    g.output(tuple(values[v] for v in spec.outputs))
    gm = torch.fx.GraphModule(torch.nn.Module(), g, class_name="TerraBlock")
    # Its code's warnings are those of the program's lines, shown when the ops first ran, traced
    # (see location.stand_in): a block repeats them from its own code's lines, which eager's
    # program never shows. Warnings of this module name are ignored (``ignore_block_warnings``).
    type(gm).forward.__globals__["__name__"] = BLOCK_MODULE
    return gm


BLOCK_MODULE = "terra_nb.block"  # the module name of a block's generated code, for warnings


def ignore_block_warnings() -> None:
    """Warnings from a block's code are ignored, after every filter of the program's (one that
    shows all warnings, ``simplefilter("always")``, shows them). Added where it is missing only (a
    program's ``warnings.resetwarnings()`` removes it): each change of the filters makes every
    module forget the warnings it has shown."""
    if ("ignore", None, Warning, _BLOCK_MODULE_RE, 0) not in warnings.filters:
        warnings.filterwarnings("ignore", module=_BLOCK_MODULE_RE.pattern, append=True)


_BLOCK_MODULE_RE = re.compile(re.escape(BLOCK_MODULE) + r"\Z")
ignore_block_warnings()


def _emit(g: torch.fx.Graph, node: Node, args, kwargs) -> torch.fx.Node:
    info = node.info
    amp = node.grad[2] if len(node.grad) > 2 else None  # (a key with more items: see coexec._grad_key)
    if node.grad[1] or amp is not None:
        target = node.func if amp is None else _in_autocast(node.func, amp)
        if node.grad[1]:
            target = _in_inference_mode(target)
        return g.call_function(target, tuple(args), kwargs)
    if info.prop is not None:
        if info.setter:
            return g.call_function(setattr, (args[0], info.prop, args[1]))
        return g.call_function(getattr, (args[0], info.prop))
    if info.method is not None:
        return g.call_method(info.method, tuple(args), kwargs)
    return g.call_function(node.func, tuple(args), kwargs)


def failing_op(gm: torch.fx.GraphModule, tb) -> int | None:
    """The index of the op whose line of the generated code raised, from a traceback."""
    filename = gm.forward.__code__.co_filename
    lineno = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            lineno = tb.tb_lineno
        tb = tb.tb_next
    if lineno is None:
        return None
    lines = gm.code.splitlines()  # forward is compiled from exactly this source
    text = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
    name = text.split("=", 1)[0].strip() if "=" in text else None
    for fx_node in gm.graph.nodes:
        if fx_node.name == name or (name is None and fx_node.op != "placeholder" and fx_node.name in text):
            return fx_node.meta.get("terra_op")
    return None
