"""Future tensors: what the skeleton answers a deferred op with.

A :class:`FutureTensor` is a tensor without storage (a wrapper subclass). It knows its shape,
dtype, device and ``requires_grad`` from the trace, so metadata reads never wait. Anything that
needs its value -- ``item()``, ``print``, ``numpy()``, an op outside ``%%terra``, ``torch.save``,
pickling, storage access -- waits for the block that produces it and then uses the real tensor.
Once materialised, a future behaves as its real tensor for the rest of its life.
"""

from __future__ import annotations

from threading import get_ident
from typing import Any

import torch
from torch.utils._pytree import tree_map

from ..trace.location import call_from_program

_is_grad_enabled = torch.is_grad_enabled


class ValueLostError(RuntimeError):
    """A future tensor's block never ran, because an earlier block raised."""


class FutureTensor(torch.Tensor):
    """A placeholder for a tensor that a block of the GraphRunner will produce.

    Example::

        >>> f = FutureTensor((torch.Size([2]), torch.float32, torch.device("cpu"), False), (1, 0), None)
        >>> f.shape
        torch.Size([2])
    """

    # Slots, not instance-dict entries: the C fast path reads and writes them by offset.
    __slots__ = ("_tn_meta", "_tn_src", "_tn_val", "_tn_owner", "_tn_blk", "_tn_pooled", "_tn_vidx")
    _tn_meta: tuple
    _tn_src: tuple
    _tn_val: torch.Tensor | None  # set by the GraphRunner
    _tn_owner: Any
    _tn_blk: object
    _tn_pooled: bool  # held by its node's ring of futures for reuse (see CoExecutor._make_future)
    _tn_vidx: int

    @staticmethod
    def __new__(cls, meta: tuple, src: tuple, owner) -> FutureTensor:
        shape, dtype, device, requires_grad = meta
        self = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=device, requires_grad=requires_grad)
        self._tn_meta = meta
        self._tn_src = src
        self._tn_val = None
        self._tn_owner = owner
        self._tn_blk = None
        self._tn_pooled = False
        self._tn_vidx = -1
        return self

    def __init__(self, *args, **kwargs) -> None:
        pass

    def value(self) -> torch.Tensor:
        """The real tensor, waiting for the GraphRunner if it has not produced it yet."""
        val = self._tn_val
        if val is None:
            owner = self._tn_owner
            if owner is not None:
                if owner._owner != -1 and get_ident() != owner._owner:
                    return owner.value_elsewhere(self)  # another thread: not the skeleton's to drive
                owner.materialize()
            val = self._tn_val
            if val is None:
                raise ValueLostError(
                    "this tensor was never computed: an earlier operation of the same co-executed "
                    "program raised an exception. Re-run the cell to recompute it."
                )
        return val

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        values, kwargs = real((args, kwargs or {}))
        with torch._C.DisableTorchFunctionSubclass():  # (called from the program's line: its warnings)
            out = call_from_program(func, values, kwargs)
        if out is not None and args and type(args[0]) is FutureTensor and out is values[0]:
            # The op returned its input (in place, or ``.contiguous()`` of a contiguous one): the
            # program holds the future, so that is what it gets, as eager returns its input, with
            # the metadata an in-place op may have changed (``unsqueeze_``, ``requires_grad_``).
            fut = args[0]
            owner = fut._tn_owner
            if owner is not None and owner._owner in (-1, get_ident()):
                return owner._follow_in_place(fut, out)
        return out

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        # Below autograd: code that bypassed torch's Python API (a C++ extension's own binding).
        # Autograd recorded the op against the future, not against what made its value, so the
        # gradient would silently not reach the model: an error instead. (TorchScript and
        # autograd.Function are routed through the engine; nothing of torch's own comes here.)
        if _is_grad_enabled() and any(type(a) is FutureTensor and a.requires_grad for a in args):
            raise RuntimeError(
                f"terra_nb: {func} was called on a tensor that requires grad and that co-execution "
                "has not computed yet, by code that bypasses torch's Python API (a C++ extension's "
                "own binding): autograd would not reach what made the tensor, and its gradient "
                "would be lost. Run this code without co-execution (a plain cell, `terra-nb run "
                "--eager`), or register the extension's operator with torch.library so that it "
                "goes through torch.ops.")
        args, kwargs = real((args, kwargs or {}))
        return func(*args, **kwargs)


def _real(x):
    return x.value() if type(x) is FutureTensor else x


def real(x):
    """``x`` with futures replaced by their values (waiting if needed).

    Plain tuples, lists and dicts (what torch calls take) are walked here; any other container
    goes through ``tree_map`` (namedtuples, OrderedDicts): a pytree walk costs ~30 µs a call.
    """
    cls = type(x)
    if cls is FutureTensor:
        return x.value()
    # A container with no future in it is the same object: a call may keep or fill it (the memo
    # ``copy.deepcopy`` hands each ``__deepcopy__``: a copy of it per call, and a tensor and its
    # view deep-copied together no longer shared their memory).
    if cls is tuple or cls is list:
        values = [real(v) for v in x]
        if all(a is b for a, b in zip(values, x)):
            return x
        return tuple(values) if cls is tuple else values
    if cls is dict:
        items = {k: real(v) for k, v in x.items()}
        if all(items[k] is v for k, v in x.items()):
            return x
        return items
    if isinstance(x, (tuple, list, dict)):
        return tree_map(_real, x)
    return x
