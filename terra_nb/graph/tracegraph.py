"""The TraceGraph: every distinct tensor operation a session has seen, merged across iterations.

A :class:`Node` is one distinct operation. Two calls are the same node when they have the same
op, the same location (call-site stack), the same constant arguments, the same input tensor
metadata (shape, dtype, device, requires_grad) and the same grad mode. Python floats are not
part of the key: a float that changes between iterations (a learning rate) is a *feed* of the
node. A changed shape makes another node: shapes are *variants*, never dynamic dimensions, so
that every block has static shapes and a future tensor always knows its shape.

Edges are successions (node A ran, then node B) with counts; the data flow of each tensor
input is kept per slot as the set of producers seen (``(node id, output index)`` or
``EXTERNAL`` for state and feeds).

Node kinds:

* ``op``     -- deferred; produces tensors (or is in place and returns one of its inputs)
* ``effect`` -- deferred; returns ``None`` (``backward``, ``__setitem__``, ``p.grad = None``)
* ``fetch``  -- Python needs the value (``item``, ``__bool__``, ``print``): runs synchronously
* ``sync``   -- tensor output whose shape depends on data (``nonzero``): runs synchronously
* ``feed``   -- a tensor made from Python data (``torch.tensor(list)``): runs at once
"""

from __future__ import annotations

import weakref

from ..trace.location import SourceLine
from ..trace.ops import OpInfo

EXTERNAL = (-1, 0)
# Autograd's entry points: they write the ``.grad`` of tensors they do not take as inputs, which a
# compiled graph around them would not see. They run alone, in an eager block.
AUTOGRAD_OPS = frozenset({"backward", "grad"})
# Ops that draw from the global generator. A compiled block would draw another stream (Inductor's
# RNG, the compile's own example run): blocks with them run eagerly, in program order.
RANDOM_OPS = frozenset({
    "dropout", "dropout_", "alpha_dropout", "feature_alpha_dropout", "dropout1d", "dropout2d", "dropout3d",
    "feature_dropout", "native_dropout", "bernoulli", "bernoulli_", "rand", "randn", "randint", "randperm",
    "rand_like", "randn_like", "randint_like", "normal", "normal_", "uniform_", "random_", "exponential_",
    "geometric_", "cauchy_", "log_normal_", "multinomial", "poisson", "rrelu", "rrelu_", "gumbel_softmax",
})
DEFERRED = frozenset({"op", "effect"})


class Node:
    """One distinct operation of the TraceGraph."""

    __slots__ = (
        "id", "func", "info", "site", "spec", "in_meta", "grad", "kind", "out_struct", "out_meta",
        "alias", "targs", "tkwargs", "passed", "int_pos", "key", "sources", "succ", "pred", "count", "module",
        "line", "scalars_ok", "scalars_seen", "scalars_vary", "ext_last", "ext_varies", "_end", "_end_version",
        "cell_mark", "seen_at", "synthesized", "family", "fast", "hot", "last_op", "src_seen", "tail", "mask", "pool", "immediate", "barrier", "flat", "grad_op", "random", "caught", "raised", "line_root", "views", "places", "__weakref__",
    )

    def __init__(self, nid: int, func, info: OpInfo, site: tuple, spec, in_meta: tuple, grad: tuple) -> None:
        self.id = nid
        self.func = func
        self.info = info
        self.site = site
        self.spec = spec
        self.in_meta = in_meta
        self.grad = grad
        self.kind = "op"
        self.out_struct: tuple | None = None
        self.out_meta: list = []
        self.alias = -1
        self.views = -1  # the input its output is a view of (x[1:], x.t()), or -1
        self.targs: tuple = ()
        self.tkwargs: dict = {}
        self.passed: tuple = ()  # scalar positions that are graph inputs: floats, generalized ints
        self.int_pos: tuple = ()  # scalar positions that hold ints, in scan order
        self.key: tuple = ()
        self.sources: list[set] = [set() for _ in in_meta]
        self.succ: dict[Node, int] = {}
        self.pred: dict[Node, int] = {}
        self.count = 0
        self.module = ""
        self.line: SourceLine | None = None
        self.line_root = None  # the root code (a cell's, a @coexecute function's) that ``line`` was taken in
        self.places: set[str] = set()  # every ``line`` it had, as text (a node the cells share moves on)
        self.caught = False  # an op whose index may be out of range, in the program's try (see CHECK_INDEX)
        self.raised = False  # a call at its site raised (a view its input's strides refused: see CHECK_VIEW)
        self.scalars_ok: set | None = None  # the numbers it ran with, in the program's try (see CHECK_SCALARS)
        self.scalars_seen: list = []
        self.scalars_vary: set[int] = set()
        self.ext_last: list = [None] * len(in_meta)
        self.ext_varies: list[bool] = [False] * len(in_meta)
        self._end = True
        self._end_version = -1
        self.cell_mark: object = None
        self.seen_at = 0
        self.synthesized = False  # a shape variant derived on meta tensors, not traced
        self.family = nid  # shape variants of one op share a family: provenance is by family
        # The skeleton's fast path: successors validated after this node, by (func, id(code),
        # lasti) of the frame that called them, as (code, [nodes]) (see CoExecutor.on_op); and
        # this node's site below its innermost frame, interned so that nodes called from one
        # frame share it.
        self.fast: dict[tuple, tuple] = {}
        self.src_seen: list = []  # per input slot, the provenance the C path last added to sources
        self.last_op: tuple = ()  # the last (node, wiring) a block got: reused while the wiring repeats
        self.hot: tuple | None = None  # the C path's last hit in fast: (func, code, lasti, pair); None when fast changes
        self.tail: tuple = site[1:]
        self.mask: frozenset = frozenset()  # int slots generalized into feeds
        self.pool: list = []  # per output, a ring of the futures the skeleton answered with, for reuse
        self.immediate: bool | str = False  # a one-element CPU op the skeleton runs at once when its inputs are real (coexec.GRAD_READ: a .grad read)
        self.flat = -1  # n when the node's arguments are n tensors and nothing else
        self.barrier = info.name in AUTOGRAD_OPS  # runs in a block of its own, never compiled
        self.random = info.name in RANDOM_OPS  # a block with it is never compiled
        # 1: sets a tensor's .grad, 2: reads it (blocks that do either are never compiled)
        self.grad_op = (1 if info.setter else 2) if info.prop == "grad" else 0

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def n_floats(self) -> int:
        """How many scalar inputs the node takes in a block."""
        return len(self.passed)

    def __repr__(self) -> str:
        return f"<Node {self.id} {self.info.name} {self.kind} x{self.count}>"


class TraceGraph:
    """Nodes merged by Terra's node equality, with succession edges and counts.

    Example::

        >>> g = TraceGraph()
        >>> len(g.nodes)   # the root node stands for "the start of a cell"
        1
    """

    def __init__(self) -> None:
        self.root = Node(0, None, OpInfo("<start>", "root", None, None, False, False), (), (), (), ())
        self.root.kind = "root"
        self.nodes: list[Node] = [self.root]
        self.index: dict[tuple, Node] = {}
        self.by_site: dict[tuple, list[Node]] = {}
        self._shaped: dict[tuple, list] = {}  # (func, site) -> [nodes indexed, {output shapes: nodes}]
        self.int_masks: dict[tuple, frozenset] = {}
        # sites whose nodes are keyed by their output shapes too (slice bounds made feeds)
        self.shape_keyed: set[tuple] = set()
        # sites whose ints index a dimension and are feeds (``xs[step]``): their range is checked
        self.index_ints: set[tuple] = set()
        self.version = 0
        self._tails: dict[tuple, tuple] = {}
        self.python_hooks = False  # the program registered an autograd hook (see CoExecutor._hooks_registered)
        self.raised_sites: set[tuple] = set()  # (func, site) where a call raised (see CoExecutor._raised_at)
        # the leaves that traced backwards accumulate into, by id (see CoExecutor.active)
        self.grad_leaves: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def find(self, key: tuple) -> Node | None:
        return self.index.get(key)

    def add_node(self, key: tuple, func, info: OpInfo) -> Node:
        _func, site, spec, in_meta, grad = key
        node = Node(len(self.nodes), func, info, site, spec, in_meta, grad)
        node.key = key
        node.tail = self._tails.setdefault(node.tail, node.tail)
        node.mask = self.int_masks.get((func, site), frozenset())
        self.nodes.append(node)
        self.index[key] = node
        self.by_site.setdefault((func, site), []).append(node)
        self.version += 1
        return node

    def shaped(self, func, site, shapes) -> list[Node]:
        """The nodes at a site whose outputs have these shapes: where a site holds a node per step
        (``data[:step]``), a lookup by shape, not a walk through every step's node. (The index
        takes in the site's new nodes as it is asked; a node's output metadata is set when it is
        made.)"""
        nodes = self.by_site.get((func, site), ())
        entry = self._shaped.get((func, site))
        if entry is None:
            entry = self._shaped[(func, site)] = [0, {}]
        index = entry[1]
        for node in nodes[entry[0]:]:
            index.setdefault(tuple([meta[0] for meta in node.out_meta]), []).append(node)
        entry[0] = len(nodes)
        return index.get(tuple(shapes), [])

    def unshaped(self, func, site, kspec):
        """A node key's spec without the output shapes a shape-keyed site's keys end with."""
        return kspec[0] if (func, site) in self.shape_keyed else kspec

    def generalize_ints(self, func, site, positions: frozenset, by_shape: bool = False) -> None:
        """Make the int slots at ``positions`` of every node at this site feeds, and re-key them
        (``by_shape``: with their output shapes too, from now on)."""
        from ..trace.ops import generalize

        mask = self.int_masks.get((func, site), frozenset()) | positions
        self.int_masks[(func, site)] = mask
        if by_shape:
            self.shape_keyed.add((func, site))
        keyed = (func, site) in self.shape_keyed
        for node in self.by_site.get((func, site), []):
            self.index.pop(node.key, None)
            _f, _site, spec, in_meta, grad = node.key
            kspec = generalize(node.spec, mask)
            if keyed:
                kspec = (kspec, tuple([meta[0] for meta in node.out_meta]))
            node.key = (func, site, kspec, in_meta, grad)
            node.mask = mask
            self.index.setdefault(node.key, node)
            ints = [node.int_pos[i] for i in sorted(mask) if i < len(node.int_pos)]
            node.passed = tuple(sorted(set(node.passed) | set(ints)))
        self.version += 1

    def observe(self, node: Node, prev: Node, tensors: list, floats: list, sources: list) -> None:
        """Count one traced execution of ``node`` after ``prev``: edges, producers, feeds."""
        node.count += 1
        self.step(prev, node)
        for slot, src in enumerate(sources):
            node.sources[slot].add(src)
            if src is EXTERNAL:
                last = node.ext_last[slot]
                obj = tensors[slot]
                if last is not None and last() is not obj:
                    node.ext_varies[slot] = True
                try:
                    node.ext_last[slot] = weakref.ref(obj)
                except TypeError:
                    node.ext_varies[slot] = True
        if not node.scalars_seen:
            node.scalars_seen = list(floats)
        else:
            for i, (old, new) in enumerate(zip(node.scalars_seen, floats)):
                if old != new:
                    node.scalars_vary.add(i)

    def retire(self, nodes: list[Node]) -> None:
        """Forget nodes that can no longer run (their cell was edited): no lookup finds them again."""
        self._shaped.clear()
        for node in nodes:
            if self.index.get(node.key) is node:
                del self.index[node.key]
            site = self.by_site.get((node.func, node.site))
            if site and node in site:
                site.remove(node)
            for other in list(node.succ):
                other.pred.pop(node, None)
            for other in list(node.pred):
                other.succ.pop(node, None)
            node.succ.clear()
            node.pred.clear()
            node.kind = "retired"
        for node in self.nodes:  # no fast path may lead to a retired node
            node.fast.clear()
            node.hot = None
        self.version += 1

    def live_nodes(self) -> list[Node]:
        return [n for n in self.nodes[1:] if n.kind != "retired"]

    def step(self, prev: Node, node: Node) -> None:
        """Count the edge ``prev -> node``; a new edge changes where blocks end."""
        succ = prev.succ
        if node in succ:
            succ[node] += 1
            node.pred[prev] += 1
        else:
            succ[node] = 1
            node.pred[prev] = 1
            self.version += 1

    def block_end(self, node: Node) -> bool:
        """Whether a block ends after ``node``: at a branch, before a merge point or a synchronous node."""
        if node._end_version != self.version:
            succ = node.succ
            if len(succ) != 1:
                end = True
            else:
                nxt = next(iter(succ))
                end = nxt.kind not in DEFERRED or len(nxt.pred) != 1 or nxt is node
            node._end = end
            node._end_version = self.version
        return node._end

    def mature(self, node: Node, threshold: int) -> bool:
        """Whether the skeleton may take over after ``node``: it and every known successor were traced enough."""
        if (node.count < threshold and not node.synthesized) or not node.succ:
            return False
        return all(s.count >= threshold or s.synthesized or s.kind == "root" for s in node.succ)

    def data_edges(self):
        """(producer id, output index, consumer id, input slot) for every producer seen."""
        for node in self.nodes:
            for slot, srcs in enumerate(node.sources):
                for src in srcs:
                    if src is not EXTERNAL and src[0] != "prop":
                        yield src[0], src[1], node.id, slot

    def blocks(self) -> list[list[Node]]:
        """The static blocks: maximal chains of deferred nodes, cut where :meth:`block_end` says."""
        starts = []
        for node in self.live_nodes():
            if node.kind not in DEFERRED:
                continue
            preds = list(node.pred)
            if len(preds) != 1 or preds[0].kind not in DEFERRED or self.block_end(preds[0]):
                starts.append(node)
        seen: set[int] = set()
        out = []
        for start in starts + [n for n in self.live_nodes() if n.kind in DEFERRED]:
            if start.id in seen:
                continue
            chain = [start]
            seen.add(start.id)
            node = start
            while not self.block_end(node):
                node = next(iter(node.succ))
                if node.id in seen:
                    break
                chain.append(node)
                seen.add(node.id)
            out.append(chain)
        return out

    def block_of(self) -> dict[int, int]:
        return {node.id: b for b, chain in enumerate(self.blocks()) for node in chain}
