"""What a torch callable is, and how its arguments split into constants, tensors and floats.

Every call the TorchFunctionMode sees is one of:

* ``meta``  -- reads metadata only (``x.shape``, ``x.size(0)``, ``x.dtype``): answered at once,
  never recorded, never a sync;
* ``feed``  -- makes a tensor from Python data (``torch.tensor``, ``torch.as_tensor``): run at
  once, its result is a graph input;
* ``op``    -- everything else. Whether an op is deferred or is a *fetch* (Python needs its
  value) is learned from what it returned when traced: a tensor, a structure of tensors or
  ``None`` (an in-place effect) defers; any other Python value is a fetch.

Ops whose output shape depends on data (``nonzero``, boolean indexing) are fetch-like too:
they run synchronously so that the shape Python sees is real.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import FunctionType, ModuleType

import torch

Tensor = torch.Tensor

_META_PROPERTIES = frozenset(
    {"shape", "dtype", "device", "requires_grad", "ndim", "is_cuda", "is_sparse", "is_quantized",
     "is_meta", "layout", "is_nested", "is_mkldnn", "is_cpu", "itemsize", "is_xpu", "is_mps", "names"}
)
_META_METHODS = frozenset(
    {"size", "dim", "ndimension", "numel", "nelement", "element_size", "is_floating_point",
     "is_complex", "get_device", "__len__", "is_signed", "has_names", "__hash__"}
)
_DATA_DEPENDENT = frozenset(
    {"nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "bincount",
     "repeat_interleave", "_unique2", "nonzero_static", "_pack_padded_sequence"}
)
_FEEDS = {torch.tensor, torch.as_tensor, torch.asarray, torch.frombuffer}


@dataclass(frozen=True, slots=True)
class OpInfo:
    """The static facts about one torch callable."""

    name: str
    kind: str  # "meta" | "feed" | "op"
    method: str | None  # Tensor method name, for FX call_method
    prop: str | None  # property name, for getattr/setattr
    setter: bool
    data_dependent: bool


_CACHE: dict[object, OpInfo] = {}


def op_info(func) -> OpInfo:
    """Classify ``func`` once; method-wrappers compare equal when they wrap the same property."""
    try:
        return _CACHE[func]
    except (KeyError, TypeError):
        pass
    info = _classify(func)
    try:
        _CACHE[func] = info
    except TypeError:
        pass
    return info


def _classify(func) -> OpInfo:
    name = getattr(func, "__name__", None) or repr(func)
    descriptor = getattr(func, "__self__", None)
    if name in ("__get__", "__set__") and type(descriptor).__name__ == "getset_descriptor":
        prop = getattr(descriptor, "__name__", "")
        kind = "meta" if name == "__get__" and prop in _META_PROPERTIES else "op"
        return OpInfo(f"{prop}.{name}", kind, None, prop, name == "__set__", False)
    qualname = getattr(func, "__qualname__", "") or ""
    method = name if qualname.startswith(("Tensor.", "TensorBase.")) else None
    if name in _META_METHODS:
        return OpInfo(name, "meta", method, None, False, False)
    kind = "feed" if func in _FEEDS else "op"
    return OpInfo(name, kind, method, None, False, name in _DATA_DEPENDENT)


# -- arguments -----------------------------------------------------------------------------------

class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


T = _Marker("T")  # a tensor slot in a spec (a sentinel: never equal to a user's constant)
F = _Marker("F")  # a float slot in a spec


class Slot:
    """A placeholder in an argument template: the ``index``-th tensor or float of the call."""

    __slots__ = ("is_tensor", "index")

    def __init__(self, is_tensor: bool, index: int) -> None:
        self.is_tensor = is_tensor
        self.index = index

    def __repr__(self) -> str:
        return f"{'T' if self.is_tensor else 'F'}{self.index}"


def scan(args: tuple, kwargs: dict | None, tensors: list, scalars: list) -> tuple:
    """Append the call's tensors and Python scalars to the lists; return the hashable spec of the rest.

    The spec holds every constant argument (ints, bools, dtypes, None, ...) with tensors and
    floats replaced by markers: a Python float that changes between iterations is a feed of the
    same node. Ints stay in the spec (a changed int is another node, since ints often decide
    shapes) but are collected as scalars too: where the graph learns that an int slot varies
    without changing the output (``xs[step]``), :func:`generalize` turns it into a feed.
    """
    spec = _scan_seq(args, tensors, scalars)
    if kwargs:
        spec = (spec, tuple([(k, _scan(v, tensors, scalars)) for k, v in kwargs.items()]))
    return spec


def _scan_seq(seq, tensors: list, scalars: list) -> tuple:
    return tuple([_scan(v, tensors, scalars) for v in seq])


def _scan(v, tensors: list, scalars: list):
    if isinstance(v, Tensor):
        tensors.append(v)
        return T
    cls = type(v)
    if cls is int:
        scalars.append(v)
        return v
    if cls is float:
        scalars.append(v)
        return F
    if cls is list or cls is tuple or cls is torch.Size:  # (a size read from a tensor: its ints are sizes)
        return (cls is list, _scan_seq(v, tensors, scalars))
    if cls is slice:
        return ("slice", _scan(v.start, tensors, scalars), _scan(v.stop, tensors, scalars), _scan(v.step, tensors, scalars))
    if isinstance(v, float) and not isinstance(v, bool):
        scalars.append(v)
        return F
    numpy_kind = NUMPY_SCALARS.get(cls)
    if numpy_kind is not None:
        # A numpy scalar (``lr * np.float32(s)``, ``xs[perm[i]]``): torch takes it as it takes
        # Python's, so it is a feed or an int as Python's is. Keyed by value, each new value was a
        # new node, and a loop drawing one per step fell back every step.
        v = numpy_kind(v)
        scalars.append(v)
        return v if numpy_kind is int else F
    if cls is FunctionType:
        # A function is keyed by its code: ``x.register_hook(lambda g: ...)`` in a loop passes a new
        # function object each time, and is one node. Such a constant is no literal
        # (literal_spec), so the call runs for real, with the function it was given.
        return (FN, v.__code__)
    if cls is dict or cls is set or cls is torch.Generator:
        # A mutable container (``Tensor.__deepcopy__``'s memo) or a generator (a DataLoader's
        # RandomSampler makes one each epoch) is keyed by its type: a new one each call is one node,
        # which runs for real with it (no literal either).
        return (MUT, cls)
    if cls.__hash__ is None or (cls.__eq__ is object.__eq__ and not isinstance(v, _BY_IDENTITY)):
        # So is any other object that is no value: a numpy index array (unhashable: ``x[idx]``), a
        # functools.partial or a module made anew each call (``checkpoint(partial(block, m), x)``).
        # Keyed by itself, each call was a new node, and the loop traced or fell back every turn.
        return (MUT, cls)
    return v


try:
    import numpy as _np
except ImportError:  # (torch runs without numpy)
    NUMPY_SCALARS: dict = {}
else:  # numpy's float64 is a float already; its bool_ is not taken as Python's bool is
    NUMPY_SCALARS = {**dict.fromkeys((_np.int8, _np.int16, _np.int32, _np.int64, _np.uint8, _np.uint16,
                                       _np.uint32, _np.uint64), int),
                      **dict.fromkeys((_np.float16, _np.float32), float)}

FN = _Marker("FN")  # a function constant in a spec: (FN, its code)
MUT = _Marker("MUT")  # a dict, set or torch.Generator constant in a spec: (MUT, its type)
G = _Marker("G")  # an int slot generalized into a feed


def spec_ints(spec) -> list:
    """The ints of a spec, in scan order."""
    out: list = []
    _walk_ints(spec, out.append)
    return out


def without_ints(spec):
    """A spec with every int replaced by the marker ``G``: the op's structure apart from its sizes."""
    count = len(spec_ints(spec))
    return generalize(spec, frozenset(range(count))) if count else spec


def _walk_ints(spec, visit) -> None:
    if type(spec) is int:
        visit(spec)
    elif type(spec) is tuple:
        for item in spec:
            _walk_ints(item, visit)


# Ops whose output shape never depends on these int arguments' values: an int that varies there
# (``xs[step]``, ``x.narrow(0, start, n)``'s start) can be a feed. Slice bounds do not qualify
# here: a slice is clamped at the end of a dimension, so its length depends on them (they are
# feeds of a shape-keyed node: feedable_ints, CoExecutor._generalize). None: every int;
# _BOUNDS: the ints outside a list or tuple (``torch.randint(low, high, (n, m))``'s bounds, not
# the size); a set: those scan-order positions.
_BOUNDS = "bounds"
_INT_FEEDS: dict = {"__getitem__": None, "__setitem__": None, "select": frozenset({1}), "narrow": frozenset({1}),
                    "roll": None, "randint": _BOUNDS,
                    # a fill value (a sampler's ``torch.full((b,), t)``), a diagonal, an index_fill's
                    # dim and value: the output has the input's shape, or the size's
                    "full": _BOUNDS, "new_full": _BOUNDS, "full_like": None, "fill": None,
                    "index_fill": None, "index_fill_": None, "tril": None, "triu": None, "tril_": None,
                    "triu_": None, "where": None}
# Elementwise arithmetic and comparisons with a Python int (``x * step``, ``idx + i * n``,
# ``x.masked_fill(m, k)``): the int is a value only (the result's dtype follows its type, not its
# value), so it is a feed, not a new node each time it changes.
_INT_FEEDS.update(dict.fromkeys((
    "add", "sub", "mul", "div", "true_divide", "floor_divide", "remainder", "fmod", "pow", "rsub",
    "__rsub__", "__rdiv__", "__rtruediv__", "__floordiv__", "__rfloordiv__", "__rpow__", "__rmod__",
    "add_", "sub_", "mul_", "div_", "floor_divide_", "remainder_", "fmod_", "pow_",
    "eq", "ne", "lt", "le", "gt", "ge", "masked_fill", "masked_fill_", "fill_",
    "clamp", "clamp_", "clamp_min", "clamp_max", "clamp_min_", "clamp_max_",
    "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_left_shift", "bitwise_right_shift",
    "bitwise_and_", "bitwise_or_", "bitwise_xor_", "bitwise_left_shift_", "bitwise_right_shift_",
    "__and__", "__or__", "__xor__", "__lshift__", "__rshift__", "__rand__", "__ror__", "__rxor__",
    "__rlshift__", "__rrshift__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__"), None))


# Ops whose output shape depends on the value of a Python float argument (``F.interpolate(x,
# scale_factor=s)``, ``F.fractional_max_pool2d(x, 2, output_ratio=r)``, ``torch.arange(0, end,
# 0.25)``): their floats are constants of the node, as ints are, not feeds. (A feed would answer a
# new scale with the traced output's shape, and the program would read it.)
_FLOAT_SHAPES = frozenset({"interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "arange", "range",
                           "fractional_max_pool2d", "fractional_max_pool3d", "fractional_max_pool2d_with_indices",
                           "fractional_max_pool3d_with_indices"})


# Ops whose one tensor input's shape is their output's (activations, normalisations over a dim,
# casts): a shape variant's output shape needs no run on meta tensors (see ``rule_shapes``).
_SAME_SHAPE = frozenset({
    "relu", "relu_", "gelu", "silu", "mish", "tanh", "sigmoid", "elu", "selu", "celu", "leaky_relu", "hardtanh",
    "hardswish", "hardsigmoid", "softplus", "softsign", "logsigmoid", "relu6", "exp", "log", "log1p",
    "expm1", "sqrt", "rsqrt", "abs", "neg", "__neg__", "sin", "cos", "square", "reciprocal", "sign", "floor",
    "ceil", "round", "trunc", "erf", "clone", "contiguous", "detach", "float", "double", "half", "bfloat16",
    "long", "int", "bool", "to", "softmax", "log_softmax", "dropout", "alpha_dropout", "feature_alpha_dropout",
    "dropout1d", "dropout2d", "dropout3d", "normalize", "cumsum", "cumprod", "nan_to_num", "clamp", "clip",
    "clamp_min", "clamp_max", "zeros_like", "ones_like", "empty_like", "rand_like", "randn_like", "full_like",
})
# Elementwise ops of several tensors: their output has the inputs' broadcast shape.
_BROADCAST = frozenset({
    "add", "sub", "mul", "div", "true_divide", "floor_divide", "remainder", "fmod", "pow", "rsub", "maximum",
    "minimum", "atan2", "hypot", "where", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or",
    "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor",
    "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
    "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__pow__", "__rpow__", "__eq__", "__ne__",
    "__lt__", "__le__", "__gt__", "__ge__", "__and__", "__or__", "__xor__", "__rand__", "__ror__", "__rxor__",
})


_POINTWISE_LOSSES = frozenset({"mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
                               "binary_cross_entropy_with_logits", "soft_margin_loss"})


def rule_shapes(name: str, shapes: list, args: tuple = (), kwargs: dict | None = None) -> list | None:
    """The output shape of op ``name`` on tensors of these input ``shapes`` (in scan order) by the
    op's own rule, for the few ops where it is simple and common, or None (then a run on meta
    tensors decides). None too where the shapes do not fit the op (it would raise): that run
    raises then, and the call is traced, so that eager's error comes at its line. (``args`` and
    ``kwargs``: the call's, where the rule needs an int of it, ``torch.cat``'s dim.)"""
    if name in ("cat", "concat", "concatenate", "stack"):
        return _joined(name == "stack", shapes, args, kwargs or {})
    if name in _SAME_SHAPE:
        return [shapes[0]] if len(shapes) == 1 else None
    if name in _BROADCAST:
        shape = _broadcast(shapes)
        return None if shape is None else [shape]
    if name == "linear" and len(shapes) in (2, 3):
        x, w = shapes[0], shapes[1]
        if len(w) == 2 and len(x) >= 1 and x[-1] == w[1] and (len(shapes) == 2 or tuple(shapes[2]) == (w[0],)):
            return [(*x[:-1], w[0])]
        return None
    if name in _POINTWISE_LOSSES and len(shapes) == 2:
        # reduced to a scalar (a sibling reduced with "none" has another shape: the rule is checked
        # on it, and fails there)
        return None if _broadcast(shapes) is None else [()]
    if name in ("cross_entropy", "nll_loss") and len(shapes) in (2, 3):
        x, t = tuple(shapes[0]), tuple(shapes[1])
        classes = x[1] if len(x) > 1 else (x[0] if x else None)
        fits = (len(t) == len(x) - 1 and x[:1] + x[2:] == t) or x == t
        if fits and all(tuple(w) == (classes,) for w in shapes[2:]):
            return [()]
        return None
    if name == "ctc_loss" and 2 <= len(shapes) <= 4:
        # (log_probs (T, B, C), targets (B, S) or all in one (sum,), lengths (B,)); unbatched: (T, C),
        # (S,), 0-d lengths. Reduced to a scalar (a sibling with "none" has another shape: the rule
        # is checked on it). Its lengths may be ints: fewer shapes then.
        lp, targets, lengths = tuple(shapes[0]), tuple(shapes[1]), [tuple(s) for s in shapes[2:]]
        batch = lp[1:2] if len(lp) == 3 else ()
        if len(lp) in (2, 3) and (len(targets) == 1 or targets[:1] == batch != ()) and all(n == batch for n in lengths):
            return [()]
        return None
    if name == "gaussian_nll_loss" and len(shapes) == 3:
        # (input, target, var): var as input, or one dim fewer, or its last dim 1; reduced to a scalar
        x, var = tuple(shapes[0]), tuple(shapes[2])
        if _broadcast(shapes[:2]) == x and var in (x, x[:-1], (*x[:-1], 1)):
            return [()]
        return None
    if name == "grid_sample" and len(shapes) == 2:
        x, grid = shapes
        if len(x) in (4, 5) and len(grid) == len(x) and grid[0] == x[0] and grid[-1] == len(x) - 2:
            return [(x[0], x[1], *grid[1:-1])]
        return None
    if name in ("layer_norm", "rms_norm") and len(shapes) in (2, 3):
        x, w = shapes[0], shapes[1]
        if 0 < len(w) <= len(x) and tuple(x[len(x) - len(w):]) == tuple(w) and all(tuple(b) == tuple(w) for b in shapes[2:]):
            return [x]
        return None
    return None


def _broadcast(shapes: list) -> tuple | None:
    """The broadcast shape of these shapes, or None where they do not broadcast (or there are none)."""
    if not shapes:
        return None
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        return None


def _joined(stacked: bool, shapes: list, args: tuple, kwargs: dict) -> list | None:
    """``torch.cat`` (``torch.stack`` where ``stacked``) of tensors of these shapes, by the dim of the
    call (``(tensors, dim)``, the dim as an int, or the default 0)."""
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    rest = len(args) > 2 or set(kwargs) - {"dim"}
    if type(dim) is not int or rest or not shapes or len(args) < 1 or len(args[0]) != len(shapes):
        return None
    first = tuple(shapes[0])
    rank = len(first) + (1 if stacked else 0)
    if not -rank <= dim < rank or not first:
        return None
    dim %= rank
    if stacked:
        if any(tuple(s) != first for s in shapes):
            return None
        return [(*first[:dim], len(shapes), *first[dim:])]
    if any(len(s) != len(first) or tuple(s[:dim]) + tuple(s[dim + 1:]) != first[:dim] + first[dim + 1:] for s in shapes):
        return None  # (a legacy empty 1-D tensor among them too: the meta run decides)
    return [(*first[:dim], sum(s[dim] for s in shapes), *first[dim + 1:])]


def floats_decide_shape(name: str) -> bool:
    """Whether op ``name``'s output shape may depend on its Python floats' values."""
    return name in _FLOAT_SHAPES or name.startswith(("upsample_", "_upsample_"))


def with_floats(spec, scalars: list):
    """``spec`` with each float marker replaced by its float (``scalars``: the call's ints and
    floats, in scan order, as :func:`scan` collected them)."""
    counter = [0]

    def walk(item):
        if type(item) is int:
            counter[0] += 1
            return item
        if item is F:
            counter[0] += 1
            return scalars[counter[0] - 1]
        if type(item) is tuple:
            return tuple([walk(x) for x in item])
        return item

    return walk(spec)


# Ops whose ints outside a list are bounds that decide the output's length only through their
# difference (``torch.arange(t, t + n)``, a position offset that moves every step): feeds where the
# node is keyed by its output shape, as a window's bounds are.
_SHAPED_INT_FEEDS = frozenset({"arange", "range"})


def feedable_ints(name: str, spec) -> tuple[frozenset, frozenset]:
    """The scan-order int positions of ``spec`` that may become feeds for op ``name``, and apart,
    those of ``__getitem__``'s slice bounds (a window ``data[i:i + n]``) and of ``arange``'s:
    feeds only where the node is keyed by its output shape too, since a slice is clamped at the
    end of a dimension and an arange's length follows from its bounds (CoExecutor._generalize)."""
    shaped = name in _SHAPED_INT_FEEDS  # (its bounds as randint's are: the ints outside a list)
    allowed = _BOUNDS if shaped else _INT_FEEDS.get(name, ())
    bounds_too = name == "__getitem__"
    if allowed == () and not bounds_too:
        return frozenset(), frozenset()
    free: list[int] = []
    bounds: list[int] = []
    counter = [0]

    def walk(item, fixed: bool, in_slice: bool) -> None:
        if type(item) is int:
            if in_slice:
                if bounds_too:
                    bounds.append(counter[0])
            elif not fixed and (allowed is None or allowed is _BOUNDS or counter[0] in allowed):
                free.append(counter[0])
            counter[0] += 1
        elif type(item) is tuple:
            # a slice is ("slice", start, stop, step); a list or tuple argument (is_list, items)
            inner = in_slice or (len(item) == 4 and item[0] == "slice")
            seq = allowed is _BOUNDS and len(item) == 2 and type(item[0]) is bool and type(item[1]) is tuple
            for x in item:
                walk(x, fixed or seq, inner)

    walk(spec, False, False)
    return (frozenset(), frozenset(free)) if shaped else (frozenset(free), frozenset(bounds))


def generalize(spec, positions: frozenset):
    """``spec`` with the ints at the given scan-order positions replaced by the marker ``G``."""
    counter = [0]

    def walk(item):
        if type(item) is int:
            counter[0] += 1
            return G if counter[0] - 1 in positions else item
        if type(item) is tuple:
            return tuple(walk(x) for x in item)
        return item

    return walk(spec)


def template(args: tuple, kwargs: dict | None) -> tuple[tuple, dict]:
    """The call's arguments with every tensor and scalar replaced by a :class:`Slot`, in scan order."""
    counters = [0, 0]

    def walk(v):
        if isinstance(v, Tensor):
            counters[0] += 1
            return Slot(True, counters[0] - 1)
        cls = type(v)
        if cls is int or cls is float or (isinstance(v, float) and not isinstance(v, bool)) or cls in NUMPY_SCALARS:
            counters[1] += 1
            return Slot(False, counters[1] - 1)
        if cls is list or cls is tuple:
            return cls(walk(x) for x in v)
        if cls is torch.Size:  # (its slots are no ints: a tuple, which torch takes alike)
            return tuple(walk(x) for x in v)
        if cls is slice:
            return slice(walk(v.start), walk(v.stop), walk(v.step))
        return v

    targs = tuple(walk(a) for a in args)
    tkwargs = {k: walk(v) for k, v in (kwargs or {}).items()}
    return targs, tkwargs


def fill(tmpl, tensors, scalars):
    """Rebuild arguments from a template, taking slot values from ``tensors`` and ``scalars``."""
    if type(tmpl) is Slot:
        return tensors[tmpl.index] if tmpl.is_tensor else scalars[tmpl.index]
    cls = type(tmpl)
    if cls is tuple or cls is list:
        return cls(fill(x, tensors, scalars) for x in tmpl)
    if cls is dict:
        return {k: fill(v, tensors, scalars) for k, v in tmpl.items()}
    if cls is slice:
        return slice(fill(tmpl.start, tensors, scalars), fill(tmpl.stop, tensors, scalars), fill(tmpl.step, tensors, scalars))
    return tmpl


_LITERALS = (type(None), bool, int, float, complex, str, torch.dtype, torch.device, torch.layout,
             torch.memory_format, type(Ellipsis), _Marker)
# Objects compared by identity that a spec keeps as they are: literals, classes, modules, enums
# (each one object for the program's life).
_BY_IDENTITY = (*_LITERALS, type, ModuleType, enum.Enum)


def literal_spec(spec) -> bool:
    """Whether every constant of a scan spec is a literal that generated code can hold.

    A block's code names its constants (FX prints them); anything else -- a ``torch.Generator``
    (``torch.randn(n, generator=g)``), a stream, a user's object -- cannot be written there, and
    may change behind the graph's back (``g.manual_seed(1)`` is no torch call the skeleton sees):
    such calls run for real, in program order.
    """
    if isinstance(spec, tuple):
        return all(literal_spec(v) for v in spec)
    return isinstance(spec, _LITERALS)


def values_decide_shape(info: OpInfo, args: tuple, tensors: list, kwargs: dict | None = None) -> bool:
    """Whether this call's output shape depends on the values in a tensor argument: indexing with a
    boolean mask, ``torch.where(cond)`` (the indices of its nonzeros), ``tensor_split`` at indices
    held in a tensor, ``one_hot`` without ``num_classes`` (its largest value + 1). (Ops whose shape
    always does are ``_DATA_DEPENDENT``.)"""
    name = info.name
    if name == "one_hot":
        return (args[1] if len(args) > 1 else (kwargs or {}).get("num_classes", -1)) == -1
    if name in ("__getitem__", "__setitem__"):
        index = args[1] if len(args) > 1 else None
        items = index if isinstance(index, tuple) else (index,)
        return (name == "__getitem__" and any(t.dtype is torch.bool for t in tensors[1:])) or any(
            isinstance(i, slice) and any(isinstance(v, Tensor) for v in (i.start, i.stop, i.step)) for i in items)
    if name == "where":
        return len(args) == 1
    if name == "tensor_split":
        return len(tensors) > 1
    if name in _SIZED:  # a size given as a tensor: torch.arange(lengths.max()), x.view(n, -1)
        return any(t.dim() == 0 and not t.is_floating_point() and not t.is_complex() for t in tensors)
    return False


_SIZED = frozenset({"arange", "zeros", "ones", "empty", "full", "rand", "randn", "randint", "eye", "linspace",
                    "new_zeros", "new_ones", "new_empty", "new_full", "view", "reshape", "expand", "narrow",
                    "repeat", "tile", "randperm"})


# -- outputs -------------------------------------------------------------------------------------

NONE = ("none",)
TENSOR = ("tensor",)


def out_structure(out) -> tuple | None:
    """How an op's output is built from tensors: TENSOR, NONE, or ("seq", type, mask).

    ``None`` means the output is a Python value that is not made of tensors: a fetch.
    """
    if isinstance(out, Tensor):
        return TENSOR
    if out is None:
        return NONE
    if isinstance(out, (tuple, list)) and out and all(x is None or isinstance(x, Tensor) for x in out):
        return ("seq", type(out), tuple(isinstance(x, Tensor) for x in out))
    return None


def out_tensors(out, structure: tuple) -> list:
    if structure is TENSOR:
        return [out]
    if structure[0] == "seq":
        return [x for x in out if x is not None]
    return []


def build_out(structure: tuple, values: list):
    if structure is TENSOR:
        return values[0]
    if structure is NONE:
        return None
    _, cls, mask = structure
    it = iter(values)
    items = [next(it) if is_t else None for is_t in mask]
    return cls(items)


_METAS: dict[tuple, tuple] = {}


# The tensor types whose metadata is (shape, dtype, device, requires_grad); any other subclass's
# (the program's own: x.as_subclass(Tagged)) has its type as a fifth item, so that its ops are
# other nodes than a plain tensor's at the same site (they run for real: CoExecutor._new_node).
PLAIN_TYPES = (Tensor, torch.nn.Parameter)


def plain_meta(t: Tensor) -> tuple:
    """(shape, dtype, device, requires_grad) of a real tensor, and its type where not a plain one.

    A nested tensor (``torch.nested``) has no shape: its metadata says "nested" in the fifth item
    (its ops run for real: CoExecutor._new_node).
    """
    cls = type(t)
    try:
        shape = t.shape
    except RuntimeError:
        if not t.is_nested:
            raise
        return (None, t.dtype, t.device, t.requires_grad, NESTED)
    if cls is Tensor or cls is torch.nn.Parameter:
        return (shape, t.dtype, t.device, t.requires_grad)
    return (shape, t.dtype, t.device, t.requires_grad, cls)


NESTED = "nested"


def meta_of(t: Tensor) -> tuple:
    """``plain_meta(t)``, interned (``interned_meta``)."""
    return interned_meta(plain_meta(t))


def interned_meta(meta: tuple) -> tuple:
    """One object for equal metadata: a node's input metadata and the future that meets it are then
    the same tuple, which the skeleton compares by identity before it compares values."""
    if len(_METAS) >= 1 << 16:  # a program whose shapes never repeat: interning stops paying
        _METAS.clear()
    return _METAS.setdefault(meta, meta)
