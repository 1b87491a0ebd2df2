"""Locations: where in the user's program a tensor operation was called.

A node of the TraceGraph is identified by its op, its constant arguments and
its *location*: the call-site stack from the root frame (the cell or script the
session is running) down to the frame that called the op. Two calls merge only
when every frame on that stack stands at the same instruction.

The root frame is keyed by the *text* of its line and the column of the call,
not by its code object, and only for ops written in the root itself: an op in a
function the root calls is keyed by the frames below the root, so a second cell
that calls the same ``train_step(...)`` finds the nodes the first cell recorded.
Every other frame is keyed by its code object and instruction offset (made stable by
:func:`canonical_offsets`): a
function that is redefined gets new nodes, which is what "editing a cell
retires its stale nodes" means.

Example::

    >>> roots = RootRegistry()
    >>> key = location_key(sys._getframe(), roots)   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import dis
import linecache
import os
import sys
import types
import weakref
from dataclasses import dataclass, field

import torch

_TORCH_DIR = os.path.dirname(torch.__file__)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LIBRARY_DIRS = (_TORCH_DIR, _PACKAGE_DIR, os.path.dirname(os.__file__))


class RootRegistry:
    """The code objects that count as roots of a location (cells, scripts, @coexecute functions).

    Each root maps an instruction offset to a stable key ``(line text, column)``;
    the mapping is computed once per offset.
    """

    def __init__(self) -> None:
        self._keys: dict[types.CodeType, dict[int, tuple]] = {}

    def add(self, code: types.CodeType) -> None:
        self._keys.setdefault(code, {})

    def remove(self, code: types.CodeType) -> None:
        self._keys.pop(code, None)

    def __contains__(self, code: object) -> bool:
        return code in self._keys

    def files(self) -> set[str]:
        """The files of the roots: the functions a cell or script defines are in them too."""
        return {code.co_filename for code in self._keys}

    def root_key(self, frame: types.FrameType) -> tuple:
        cache = self._keys[frame.f_code]
        lasti = frame.f_lasti
        key = cache.get(lasti)
        if key is None:
            key = cache[lasti] = _line_key(frame.f_code, lasti)
        return key


def caught_here(frame: types.FrameType | None, roots: RootRegistry) -> bool:
    """Whether the user's code would catch an exception raised at this call: a frame of the user's
    (not torch's, this package's, the standard library's or an installed package's), from the
    call's out to the root, stands inside a ``try`` block with an ``except`` clause."""
    while frame is not None:
        code = frame.f_code
        name = code.co_filename
        if not name.startswith(_LIBRARY_DIRS) and "site-packages" not in name:
            if any(start <= frame.f_lasti < end for start, end in _except_regions(code)):
                return True
        if code in roots:
            return False
        frame = frame.f_back
    return False


def catches(frame: types.FrameType | None, roots: RootRegistry, exc: type[BaseException]) -> bool:
    """Whether the user's code would catch an ``exc`` raised at this call: as ``caught_here``, but
    reading what each ``except`` clause names (the frame's names, resolved now) and following an
    exception that no clause of a ``try`` matches out to the enclosing one, in the frame or its
    callers. A clause counts where it names ``exc``, a base of it or a subclass of it (torch raises
    subclasses of ``RuntimeError``); a bare ``except:``, and a clause whose types cannot be read
    without running code, count as catching. ``try: ... except KeyboardInterrupt:`` around a
    training loop does not catch a ``RuntimeError``, and an op that raises one stays deferred
    there. (A ``with`` block's exit is taken to raise again, as in ``caught_here``.)"""
    while frame is not None:
        code = frame.f_code
        name = code.co_filename
        if not name.startswith(_LIBRARY_DIRS) and "site-packages" not in name and _frame_catches(frame, exc):
            return True
        if code in roots:
            return False
        frame = frame.f_back
    return False


_CHECKS = ("CHECK_EXC_MATCH", "CHECK_EG_MATCH")
_JUMPS_IF_NO_MATCH = ("POP_JUMP_FORWARD_IF_FALSE", "POP_JUMP_IF_FALSE")
_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # code -> (entries, instructions, index by offset)


def _frame_catches(frame: types.FrameType, exc: type[BaseException]) -> bool:
    """Whether a handler of ``frame``'s code catches ``exc`` raised at its current instruction."""
    code = frame.f_code
    table = _TABLES.get(code)
    if table is None:
        parse = getattr(dis, "_parse_exception_table", None)  # (private, Python 3.11+)
        instructions = list(dis.get_instructions(code))
        table = _TABLES[code] = (parse(code) if parse is not None else [], instructions,
                                 {i.offset: k for k, i in enumerate(instructions)})
    entries, ops, at = table
    offset = frame.f_lasti
    for _ in range(64):  # (each turn moves out to an enclosing handler; the bound is a safeguard)
        entry = next((e for e in entries if e.start <= offset < e.end), None)
        if entry is None:
            return False  # not in a try of this frame: the exception leaves it
        k = at.get(entry.target)
        if k is None:
            return True
        if ops[k].opname == "PUSH_EXC_INFO" and not any(i.opname == "WITH_EXCEPT_START" for i in ops[k + 1:k + 3]):
            k += 1
            while ops[k].opname not in ("RERAISE", *_CHECKS):  # a clause: the types it names, then the check
                if ops[k].opname == "POP_TOP":
                    return True  # a bare except
                j = next((j for j in range(k, len(ops)) if ops[j].opname in ("RERAISE", *_CHECKS)), len(ops))
                if j == len(ops) or ops[j].opname == "CHECK_EG_MATCH":
                    return True  # (except*: taken to catch)
                if ops[j].opname == "RERAISE":  # no clause (a finally): it raises again
                    k = j
                    break
                named = _named_types(ops[k:j], frame)
                if named is None or any(issubclass(exc, t) or issubclass(t, exc) for t in named):
                    return True
                if j + 1 >= len(ops) or ops[j + 1].opname not in _JUMPS_IF_NO_MATCH or ops[j + 1].argval not in at:
                    return True
                k = at[ops[j + 1].argval]  # the next clause, or the RERAISE of no match
            if ops[k].opname != "RERAISE":
                return True
        else:  # a with block's exit, or the cleanup of an except clause: it raises again
            k = next((j for j in range(k, len(ops)) if ops[j].opname == "RERAISE"), -1)
            if k < 0:
                return True
        offset = ops[k].offset  # the exception goes on from there: to the enclosing try's handler
    return True


def _named_types(instructions: list, frame: types.FrameType) -> tuple | None:
    """The exception types an except clause's instructions name (``RuntimeError``, ``torch.cuda.
    OutOfMemoryError``, a tuple of them), read in ``frame``; None where that would run code."""
    stack: list = []
    builtins = frame.f_builtins
    try:
        for ins in instructions:
            op = ins.opname
            if op == "LOAD_GLOBAL":
                stack.append(frame.f_globals[ins.argval] if ins.argval in frame.f_globals else builtins[ins.argval])
            elif op == "LOAD_NAME":
                scopes = (frame.f_locals, frame.f_globals, builtins)
                stack.append(next(s[ins.argval] for s in scopes if ins.argval in s))
            elif op in ("LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_DEREF", "LOAD_CLASSDEREF"):
                stack.append(frame.f_locals[ins.argval])
            elif op == "LOAD_ATTR" and stack and isinstance(stack[-1], types.ModuleType):
                stack.append(getattr(stack.pop(), ins.argval))  # (a module's attribute: no code runs)
            elif op == "BUILD_TUPLE" and 0 < ins.argval <= len(stack):
                stack[-ins.argval:] = [tuple(stack[-ins.argval:])]
            elif op not in ("NOP", "CACHE"):
                return None
    except (KeyError, AttributeError, StopIteration):
        return None
    if len(stack) != 1:
        return None
    named = stack[0] if isinstance(stack[0], tuple) else (stack[0],)
    return named if all(isinstance(t, type) for t in named) else None


_REGIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # code -> its except regions
_HEADERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # code -> its FOR_ITER offsets


def loop_headers(code: types.CodeType) -> frozenset:
    """The offsets of ``code``'s ``FOR_ITER`` instructions: where a loop asks its iterator for the next item."""
    headers = _HEADERS.get(code)
    if headers is None:
        headers = _HEADERS[code] = frozenset(i.offset for i in dis.get_instructions(code) if i.opname == "FOR_ITER")
    return headers


def _except_regions(code: types.CodeType) -> tuple:
    """The instruction ranges of ``code`` whose exceptions an ``except`` clause may catch: those an
    exception-table entry sends to a handler that matches a type (or a bare ``except:``), not to a
    ``with`` block's exit or a ``finally`` (which raise again)."""
    regions = _REGIONS.get(code)
    if regions is None:
        parse = getattr(dis, "_parse_exception_table", None)  # (private, Python 3.11+)
        entries = parse(code) if parse is not None else []
        instructions = list(dis.get_instructions(code))
        at = {i.offset: k for k, i in enumerate(instructions)}
        found = []
        for entry in entries:
            first = at.get(entry.target, len(instructions))
            handler = [i.opname for i in instructions[first:first + 8]] + [None, None]
            if handler[0] != "PUSH_EXC_INFO" or "WITH_EXCEPT_START" in handler[1:3]:
                continue  # a cleanup (an except clause's own variable), or a with block's exit
            end = handler.index("RERAISE") if "RERAISE" in handler else len(handler)
            if handler[1] == "POP_TOP" or any(op in ("CHECK_EXC_MATCH", "CHECK_EG_MATCH") for op in handler[1:end]):
                found.append((entry.start, entry.end))  # (a finally re-raises: not here)
        regions = _REGIONS[code] = tuple(found)
    return regions


def _line_key(code: types.CodeType, lasti: int) -> tuple:
    positions = list(code.co_positions())
    index = lasti // 2
    lineno, _end, col, end_col = positions[index] if index < len(positions) else (None, None, None, None)
    text = linecache.getline(code.co_filename, lineno or 0).strip()
    return ("root", text, col, end_col)


_CALLED_FROM_ROOT = ("root",)
# id(code) -> (code, canonical offsets): keyed by id since a code object hashes slowly; the entry
# holds the code, so the id is never another code's while it lives.
_CANON: dict[int, tuple[types.CodeType, list[int]]] = {}


def canonical_offsets(code: types.CodeType) -> list[int]:
    """For each code unit of ``code``: the first offset of an instruction with the same source span.

    A frame that waits in a call reports the offset of ``PRECALL`` or of ``CALL`` depending on how
    the adaptive interpreter has specialised the call site (seen: ``train`` at 130 or 138 for one
    call, so reinforce's ops got a second set of nodes mid-run). Both carry the call's source
    span, so keying a frame by the first offset with that span makes the key stable.
    """
    entry = _CANON.get(id(code))
    if entry is not None and entry[0] is code:
        return entry[1]
    first: dict[tuple, int] = {}
    canon = []
    for index, position in enumerate(code.co_positions()):
        if position[0] is None:
            canon.append(index * 2)
        else:
            canon.append(first.setdefault(position, index * 2))
    _CANON[id(code)] = (code, canon)
    return canon


def frame_offset(frame: types.FrameType) -> int:
    """``frame``'s instruction offset, made stable (see :func:`canonical_offsets`)."""
    lasti = frame.f_lasti
    canon = canonical_offsets(frame.f_code)
    index = lasti // 2
    return canon[index] if 0 <= index < len(canon) else lasti


def location_key(frame: types.FrameType | None, roots: RootRegistry) -> tuple:
    """The call-site stack of ``frame`` up to the first root frame, innermost first.

    An op written in the root (the cell) is keyed by its line there; an op inside a function
    the root calls is keyed by the stack below the root only, so another cell that calls the
    same ``train_step`` from another line finds the same nodes.
    """
    keys = roots._keys
    out: list[tuple] = []
    while frame is not None:
        code = frame.f_code
        if code in keys:
            out.append(_CALLED_FROM_ROOT if out else roots.root_key(frame))
            break
        out.append((code, frame_offset(frame)))
        frame = frame.f_back
    return tuple(out)


@dataclass(frozen=True)
class SourceLine:
    """A line of the user's program, for events and the graph explorer."""

    filename: str
    lineno: int
    text: str
    function: str = field(default="", compare=False)  # the name of the code it is in

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno}"

    def raise_here(self, exc: BaseException):
        """Raise ``exc`` with a traceback that ends at this line, in a frame named as its
        function was: what eager's traceback ends with when the op at this line raises. (The
        frame is a stand-in, made from a code object whose only instruction at this line raises.)"""
        __tracebackhide__ = True
        # the statement spans the line's own columns, so that no caret marks a part of it
        line = linecache.getline(self.filename, self.lineno).rstrip()
        stripped = line.lstrip()
        name = "_" * max(len(stripped) - len("raise "), 1)
        indent = line[:len(line) - len(stripped)] if self.lineno > 1 else ""
        opener = "if 1:\n" if indent else ""  # (an indented line has one before it)
        source = "\n" * (max(self.lineno, 1) - 1 - bool(opener)) + f"{opener}{indent}raise {name}"
        code = compile(source, self.filename, "exec").replace(co_name=self.function or "<module>")
        exec(code, {name: exc.with_traceback(None), "__name__": "__terra_nb__"})


_RUN_UNTIL_COMPLETE = asyncio.BaseEventLoop.run_until_complete.__code__
# the standard library's frames that only pass the engine's call on to the engine: the event loop it
# runs a cell's top-level await on, and the entry and exit of its ``with`` blocks (the exit of
# ``executor.active(...)`` is where a block's error surfaces as the cell ends)
_ENGINE_PASSAGES = frozenset({
    _RUN_UNTIL_COMPLETE,
    contextlib._GeneratorContextManager.__enter__.__code__,
    contextlib._GeneratorContextManager.__exit__.__code__,
})
_HANDLE_TORCH_FUNCTION = torch.overrides.handle_torch_function.__code__


def caller_of_op(frame: types.FrameType | None) -> types.FrameType | None:
    """The frame an op the engine runs was called from, as eager's stack has it: past this
    package's frames, and past torch's hand-over of a Python-level function to the mode
    (``handle_torch_function`` and the function's own outer frame: the mode calls it again)."""
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR + os.sep):
        frame = frame.f_back
    if frame is not None and frame.f_code is _HANDLE_TORCH_FUNCTION:
        frame = frame.f_back
        frame = frame.f_back if frame is not None else None
    return frame


_STAND_INS: dict[tuple, types.FunctionType] = {}
_STAND_IN_CODES: set[types.CodeType] = set()


def stand_in(frame: types.FrameType | None):
    """A function ``(f, args, kwargs) -> f(*args, **kwargs)`` whose frame stands in for ``frame``:
    its file, line, function name and globals. The warnings of the call are then eager's: a C++
    warning of torch takes the innermost Python frame, a Python-level one of a function the mode
    calls again the frame above that function, and each is shown once per line of the program's
    module (its ``__warningregistry__``), not at this package's line where the engine calls."""
    if frame is None or frame.f_lineno is None:
        return _call
    key = (frame.f_code, frame.f_lineno)
    fn = _STAND_INS.get(key)
    if fn is None:
        source = "\n" * (frame.f_lineno - 1) + "def _(f, a, k): return f(*a, **k)\n"
        module = compile(source, frame.f_code.co_filename, "exec")
        code = next(c for c in module.co_consts if isinstance(c, types.CodeType))
        code = code.replace(co_name=frame.f_code.co_name, co_qualname=frame.f_code.co_name)
        _STAND_IN_CODES.add(code)
        fn = _STAND_INS[key] = types.FunctionType(code, frame.f_globals)
    return fn


def _call(f, a, k):
    return f(*a, **k)


def call_from_program(func, args, kwargs):
    """``func(*args, **kwargs)`` for the engine, called from a frame standing in for the program's
    frame that called the op (``stand_in(caller_of_op(...))``): its warnings are eager's."""
    return stand_in(caller_of_op(sys._getframe(1)))(func, args, kwargs)


def drop_engine_frames(exc: BaseException, start: str | None = None) -> None:
    """Rewrite the tracebacks of ``exc`` and of the exceptions chained to it without this
    package's frames (the engine's: the program's traceback is what eager's would be), and,
    given ``start`` (a script's path), without the frames before the first of that file."""
    seen: set[int] = set()
    chained: BaseException | None = exc
    while chained is not None and id(chained) not in seen:
        seen.add(id(chained))
        kept: list[tuple[types.FrameType, int, int]] = []
        handed: list[bool] = []  # per kept frame: the engine's frames came right after it
        tb = chained.__traceback__
        engine = False
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            ours = (filename.startswith(_PACKAGE_DIR + os.sep) or tb.tb_frame.f_code in _STAND_IN_CODES
                    or (engine and tb.tb_frame.f_code in _ENGINE_PASSAGES))
            if ours and handed:
                handed[-1] = True
            if (kept or start is None or filename == start) and not ours:
                kept.append((tb.tb_frame, tb.tb_lasti, tb.tb_lineno))
                handed.append(False)
            engine = ours
            tb = tb.tb_next
        shown: list[tuple[types.FrameType, int, int]] = []
        for k, entry in enumerate(kept):
            if entry[0].f_code is _HANDLE_TORCH_FUNCTION and handed[k]:
                # torch handing a call to the engine's mode (``F.embedding`` to the mode, which
                # called ``F.embedding`` again): eager's traceback has the one call, the inner
                if shown and k + 1 < len(kept) and kept[k + 1][0].f_code is shown[-1][0].f_code:
                    shown.pop()
                continue
            shown.append(entry)
        rebuilt = None
        for frame, lasti, lineno in reversed(shown):
            rebuilt = types.TracebackType(rebuilt, frame, lasti, lineno)
        chained.__traceback__ = rebuilt
        chained = chained.__cause__ or chained.__context__


def is_library_file(filename: str) -> bool:
    return filename.startswith(_LIBRARY_DIRS)


def user_line(frame: types.FrameType | None) -> SourceLine | None:
    """The innermost frame of ``frame``'s stack that is the user's code, not torch's nor ours."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if not is_library_file(filename) and not filename.startswith("<frozen"):
            lineno = frame.f_lineno or 0
            return SourceLine(filename, lineno, linecache.getline(filename, lineno).strip(), frame.f_code.co_name)
        frame = frame.f_back
    return None


def module_path(frame: types.FrameType | None) -> str:
    """The dotted nn.Module path the call ran under, e.g. ``encoder.layers.0.attn``.

    Read from the ``forward`` frames on the stack; the outermost module is the
    root and is not named. Used on tracing only (it reads ``f_locals``).
    """
    modules: list[torch.nn.Module] = []
    while frame is not None:
        if frame.f_code.co_name == "forward":
            owner = frame.f_locals.get("self")
            if isinstance(owner, torch.nn.Module) and (not modules or modules[-1] is not owner):
                modules.append(owner)
        frame = frame.f_back
    modules.reverse()
    names = []
    for parent, child in zip(modules, modules[1:]):
        name = next((n for n, m in parent.named_modules() if m is child and n), None)
        names.append(name or type(child).__name__)
    return ".".join(names)

