"""``terra-nb bench``: the example programs under eager, torch.compile, terra_nb and graph-only.

Each (program, variant) runs in a fresh process (``python -m terra_nb.bench --worker ...``),
variants in a rotating order, reversed for every other program and round, so that machine drift
spreads over all of them and no variant always runs right after the same other one (in one order
the terra variant always followed compile's process). A worker runs the
program as ``__main__`` and timestamps every line it prints that starts with ``iter N``: the
iteration time is the gap between consecutive lines, the steady-state time the median over
the second half of the run. Variants:

* ``eager``      -- the program as is;
* ``compile``    -- the program's own ``--compile`` (``torch.compile`` applied as a user would);
* ``terra``      -- under ``Session.run_path`` with the ``auto`` backend, as a user runs it: on a CPU
  auto measures co-execution against eager iterations and goes on with the faster;
* ``coexec``     -- the same, co-executed whatever the measurement (``always_coexec``);
* ``graph_only`` -- co-executed, then the last iterations' blocks replayed with no skeleton
  (the limit co-execution approaches).

With ``--repeat N`` every variant runs N times (the order rotated each round) and the medians
are reported: on a small machine one process's times vary by ±20% from the next's.

Ratios are times divided (terra / other): below 1 means terra_nb is faster.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

PROGRAMS = ("dcgan", "resnet", "faster_rcnn", "yolo", "sdpoint", "bert_qa", "bert_cls", "gpt2",
            "music_transformer", "dropblock", "lstm_lm", "reinforce")
VARIANTS = ("eager", "compile", "terra", "coexec", "graph_only")
_ITER_LINE = re.compile(r"^iter \d+")


def add_arguments(parser) -> None:
    parser.add_argument("--programs", default=",".join(PROGRAMS), help="comma-separated program names")
    parser.add_argument("--iters", type=int, default=20, help="iterations per run")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each variant N times (fresh processes, order rotated); report the medians")
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="write the records as JSON")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    parser.add_argument("--size", default="small", choices=("small", "large"))
    parser.add_argument("--timeout", type=int, default=900, help="seconds per worker process")
    parser.add_argument("--skeleton", action="store_true",
                        help="only the per-op micro-benchmark: eager, skeleton alone, co-executed (us per op)")


def programs_dir() -> str:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(here, "examples", "programs")


_MICRO = """
import torch
w = torch.ones(8, SIZE, SIZE) * 0.01
z = torch.zeros(8, SIZE, SIZE)
x = torch.ones(SIZE, SIZE)
WEIGHTS
for i in range(N):
BODY"""
# Four ops a group, each group on its own weights: every line of the loop is a distinct op (a root's
# op is keyed by its line's text, so a repeated line would be the same node, seen again).
_MICRO_GROUP = ("    x = x * wK\n", "    x = x + wK\n", "    x = torch.maximum(x, zK)\n", "    x = x - wK\n")


def _timed_loop(setup: str, loop: str, mode=None) -> float:
    """Seconds the loop takes, after its setup, under ``mode`` where one is given."""
    namespace: dict = {}
    exec(setup, namespace)
    with mode if mode is not None else contextlib.nullcontext():
        t0 = time.perf_counter()
        exec(loop, namespace)
        return time.perf_counter() - t0


def _timed_cell(session, program: str) -> float:
    t0 = time.perf_counter()
    try:
        session.run_cell(program, {})
    except RuntimeError:
        pass  # (skeleton alone: the futures left in the namespace were never computed)
    return time.perf_counter() - t0


def skeleton_micro(ops: int = 24000, rounds: int = 5) -> list[tuple[int, int, float, float, float, float]]:
    """µs per op for a loop of deferred ops: eager, mode dispatch alone (a mode that does nothing),
    the skeleton alone (blocks never run), co-executed.

    Rows for 4 and 32 ops per iteration: the difference is the cost of an iteration's end (a
    block handed over, an iteration recorded) spread over its ops. Each figure is the best of
    ``rounds`` runs of ``ops`` ops (timeit's rule: the slower runs are the machine's noise).
    """
    from torch.overrides import TorchFunctionMode

    from .runtime import runner as runner_module
    from .session import Session

    class DispatchOnly(TorchFunctionMode):
        """Answers every call with its first argument: the cost of being a mode at all."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            return args[0]

    def best(run, *args) -> float:
        return min(run(*args) for _ in range(rounds)) / ops * 1e6

    rows = []
    for size in (4, 64):
        for per_iter in (4, 32):
            body = "".join(_MICRO_GROUP[k % 4].replace("K", str(k // 4)) for k in range(per_iter))
            weights = "".join(f"w{k}, z{k} = w[{k}].clone(), z[{k}].clone()\n" for k in range(per_iter // 4))
            source = _MICRO.replace("SIZE", str(size)).replace("BODY", body).replace("WEIGHTS", weights)
            program = source.replace("N", str(ops // per_iter))
            setup, loop = program.split("for i in range(")
            loop = "for i in range(" + loop
            eager = best(_timed_loop, setup, loop)
            floor = best(_timed_loop, setup, loop, DispatchOnly())  # torch's dispatch to a mode that does nothing
            session = Session()
            session.run_cell(source.replace("N", "10"), {})  # trace, and generate the block once
            coexec = best(_timed_cell, session, program)
            submit = runner_module.GraphRunner.submit
            runner_module.GraphRunner.submit = lambda self, run: None  # type: ignore[method-assign]
            try:
                alone_session = Session()
                alone_session.run_cell(source.replace("N", "10"), {})
                alone = best(_timed_cell, alone_session, program)
            finally:
                runner_module.GraphRunner.submit = submit  # type: ignore[method-assign]
            rows.append((size, per_iter, eager, floor, alone, coexec))
    return rows


def run_bench(args) -> int:
    if args.skeleton:
        print("µs per op")
        print(f"{'tensor':>8}{'ops/iter':>10}{'eager':>8}{'mode dispatch':>15}{'skeleton alone':>16}{'co-executed':>13}")
        for size, per_iter, eager, floor, alone, coexec in skeleton_micro():
            print(f"{f'{size}x{size}':>8}{per_iter:>10}{eager:>8.2f}{floor:>15.2f}{alone:>16.2f}{coexec:>13.2f}")
        return 0
    if args.iters < 4 or args.repeat < 1 or args.timeout < 1:
        print(f"terra-nb bench: --iters {args.iters} --repeat {args.repeat} --timeout {args.timeout}: the steady "
              "state is the median gap between the later half's iterations; give --iters 4 or more, "
              "--repeat and --timeout 1 or more", file=sys.stderr)
        return 2
    names, programs_problem = _names(args.programs, "--programs", "program", PROGRAMS)
    variants, variants_problem = _names(args.variants, "--variants", "variant", VARIANTS)
    json_problem = _json_problem(args.json_path) if args.json_path is not None else None
    problems = [p for p in (programs_problem, variants_problem, json_problem) if p]
    if problems:  # all of them, before any program runs (not after the benchmark, its records lost)
        for problem in problems:
            print(f"terra-nb bench: {problem}", file=sys.stderr)
        return 2
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("terra-nb bench: --device cuda, but torch sees no CUDA device here (torch.cuda.is_available() "
              f"is False; torch {torch.__version__}): run on a machine with a GPU and a CUDA build of torch, "
              "or use --device cpu", file=sys.stderr)
        return 2
    if not os.path.isdir(programs_dir()):
        print(f"terra-nb bench: the example programs are not at {programs_dir()} (run from a clone)", file=sys.stderr)
        return 2
    results: dict[str, dict[str, dict]] = {name: {} for name in names}
    for index, name in enumerate(names):
        rounds: dict[str, list] = {variant: [] for variant in variants}
        for round_ in range(max(1, args.repeat)):
            shift = (index + round_) % len(variants)
            order = variants[shift:] + variants[:shift]  # alternated, to cancel drift
            if (index + round_) % 2:
                order.reverse()  # so that no variant always runs right after the same other one
            for variant in order:
                print(f"terra-nb bench: {name} / {variant} ...", file=sys.stderr, flush=True)
                rounds[variant].append(_run_worker(name, variant, args))
        results[name] = {variant: _combine(runs) for variant, runs in rounds.items()}
    records = [_record(name, results[name], args.device) for name in names]
    print(format_table(records))
    if args.json_path:
        try:
            with open(args.json_path, "w") as f:
                json.dump(records, f, indent=2)
        except OSError as exc:  # (checked before the run; gone or full since): the table above keeps the figures
            print(f"terra-nb bench: could not write --json {args.json_path}: {exc}; the table above has the results",
                  file=sys.stderr)
            return 1
    return 0


def _names(given: str, option: str, kind: str, known: tuple[str, ...]) -> tuple[list[str], str | None]:
    """The names of a comma-separated option, and why they cannot be run (None where they can)."""
    # ("lstm_lm, gpt2": a space after the comma; a name given twice runs once: its record is one)
    names = list(dict.fromkeys(n.strip() for n in given.split(",") if n.strip()))
    unknown = [n for n in names if n not in known]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        return names, f"unknown {kind}{plural}: {', '.join(unknown)}; the {kind}s are {', '.join(known)}"
    if not names:
        return names, f"{option} {given!r} names no {kind}; give one or more of {', '.join(known)}, separated by commas"
    return names, None


def _json_problem(path: str) -> str | None:
    """Why the records cannot be written to ``path``, before any program runs; None where they can."""
    if not path.strip():
        return f"--json {path!r} names no file; give a path such as bench.json"
    if os.path.isdir(path):
        return f"--json {path}: is a folder; give a file name in it, such as {os.path.join(path, 'bench.json')}"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"--json {path}: no folder {folder!r}; create it, or give a path in an existing folder"
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"--json {path}: not writable here; give a path in a folder you can write to"
    return None


def _run_worker(name: str, variant: str, args) -> dict:
    out_path = f"/tmp/terra-bench-{os.getpid()}-{name}-{variant}.json"
    cmd = [sys.executable, "-m", "terra_nb.bench", "--worker", variant, name, str(args.iters), args.device,
           args.size, out_path]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout}s"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not os.path.exists(out_path):
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"], "wall_s": wall}
    with open(out_path) as f:
        data = json.load(f)
    os.remove(out_path)
    data["wall_s"] = wall
    return data


def _combine(runs: list[dict]) -> dict:
    """One variant's rounds as one run: the first that succeeded, with the median of each timing."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    combined = dict(ok[0])
    for key in ("steady_ms", "steady_s", "skeleton_us_per_op"):
        values = [r[key] for r in ok if r.get(key) is not None]
        if values:
            combined[key] = statistics.median(values)
    combined["rounds"] = len(ok)
    return combined


def _record(name: str, runs: dict, device: str) -> dict:
    def ms(variant):
        return runs.get(variant, {}).get("steady_ms")

    eager, compiled, terra, graph = ms("eager"), ms("compile"), ms("terra"), ms("graph_only")
    coexec = ms("coexec")
    terra_run, compile_run = runs.get("terra", {}), runs.get("compile", {})
    eager_out = runs.get("eager", {}).get("stdout")
    return {
        "program": name, "device": device,
        "eager_ms": eager, "compile_ms": compiled, "terra_ms": terra, "graph_only_ms": graph,
        "terra_vs_eager": _ratio(terra, eager), "terra_vs_compile": _ratio(terra, compiled),
        "terra_vs_graph_only": _ratio(terra, graph),
        "coexec_ms": coexec, "coexec_vs_eager": _ratio(coexec, eager),
        "eager_share": terra_run.get("eager_share"),
        "steady_s_compile": compile_run.get("steady_s"), "steady_s_terra": terra_run.get("steady_s"),
        "dynamo_graphs": compile_run.get("dynamo_graphs"), "dynamo_breaks": compile_run.get("dynamo_breaks"),
        "blocks_per_iter": runs.get("coexec", terra_run).get("blocks_per_iter"),
        "syncs_per_iter": runs.get("coexec", terra_run).get("syncs_per_iter"),
        "skeleton_us_per_op": runs.get("graph_only", {}).get("skeleton_us_per_op"),
        # captured iterations graph-only could not replay (a backward into a graph built before them)
        "graph_only_left_out": runs.get("graph_only", {}).get("graph_only_left_out"),
        "peak_mb": {v: r.get("peak_mb") for v, r in runs.items()},
        "matched_eager": {v: _matches(eager_out, r.get("stdout")) for v, r in runs.items()
                          if v not in ("eager", "graph_only")},
        "errors": {v: r["error"] for v, r in runs.items() if "error" in r},
    }


def _ratio(a, b):
    return a / b if a and b else None


def _matches(expected: str | None, actual: str | None, rel: float = 1e-3) -> bool | None:
    """Same text, numbers compared to a relative tolerance (compiled kernels round differently)."""
    if expected is None or actual is None:
        return None
    a, b = expected.split(), actual.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        if not math.isclose(fx, fy, rel_tol=rel, abs_tol=1e-4):
            return False
    return True


def format_table(records: list[dict]) -> str:
    def f(v, spec):
        return "-" if v is None else format(v, spec)

    head = (f"{'program':<18}{'eager ms':>10}{'compile':>10}{'terra':>10}{'graph':>10}{'t/eager':>9}{'t/comp':>8}"
            f"{'t/graph':>9}{'coexec':>9}{'c/eager':>8}{'eager%':>7}{'steady_s c/t':>14}{'dyn g/b':>9}{'blk/it':>8}"
            f"{'sync/it':>8}{'us/op':>7}  match")
    lines = [head, "-" * len(head)]
    for r in records:
        matched = r["matched_eager"]
        match = ",".join(f"{k}={'y' if v else 'n' if v is False else '?'}" for k, v in matched.items())
        steady = f"{f(r['steady_s_compile'], '.1f')}/{f(r['steady_s_terra'], '.1f')}"
        dyn = f"{f(r['dynamo_graphs'], 'd')}/{f(r['dynamo_breaks'], 'd')}"
        lines.append(f"{r['program']:<18}{f(r['eager_ms'], '.2f'):>10}{f(r['compile_ms'], '.2f'):>10}"
                     f"{f(r['terra_ms'], '.2f'):>10}{f(r['graph_only_ms'], '.2f'):>10}{f(r['terra_vs_eager'], '.2f'):>9}"
                     f"{f(r['terra_vs_compile'], '.2f'):>8}{f(r['terra_vs_graph_only'], '.2f'):>9}"
                     f"{f(r.get('coexec_ms'), '.2f'):>9}{f(r.get('coexec_vs_eager'), '.2f'):>8}"
                     f"{f(None if r.get('eager_share') is None else 100 * r['eager_share'], '.0f'):>7}{steady:>14}{dyn:>9}"
                     f"{f(r['blocks_per_iter'], '.1f'):>8}{f(r['syncs_per_iter'], '.1f'):>8}"
                     f"{f(r['skeleton_us_per_op'], '.1f'):>7}  {match}")
        if r["errors"]:
            lines.append(f"{'':<18}errors: {r['errors']}")
    return "\n".join(lines)


# -- the worker: one program, one variant, one process ------------------------------------------


class _LineClock:
    """A stdout that keeps the program's output and the time of each ``iter N`` line."""

    def __init__(self, target) -> None:
        self.target = target
        self.text: list[str] = []
        self.times: list[float] = []
        self.walls: list[float] = []  # the same lines' wall-clock times (the iterations table's clock)
        self.at_last: tuple[int, Callable[[], None]] | None = None  # (n, called at the n-th such line)
        self._partial = ""

    def write(self, s: str) -> int:
        self.text.append(s)
        self._partial += s
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            if _ITER_LINE.match(line):
                self.times.append(time.perf_counter())
                self.walls.append(time.time())
                if self.at_last is not None and len(self.times) == self.at_last[0]:
                    self.at_last[1]()
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _steady(times: list[float], start: float) -> tuple[float | None, float | None]:
    gaps = [b - a for a, b in zip(times, times[1:])]
    if not gaps:
        return None, None
    tail = sorted(gaps[len(gaps) // 2:])
    steady = tail[len(tail) // 2]
    reached = next((i for i, g in enumerate(gaps) if g <= 1.25 * steady), len(gaps) - 1)
    return steady * 1e3, times[reached + 1] - start


def worker(variant: str, name: str, iters: int, device: str, size: str, out_path: str) -> None:
    import torch

    path = os.path.join(programs_dir(), f"{name}.py")
    argv = ["--iters", str(iters), "--device", device, "--size", size]
    if variant == "compile":
        argv.append("--compile")
    clock = _LineClock(sys.stdout)
    real_stdout, sys.stdout = sys.stdout, clock  # type: ignore[assignment]
    start = time.perf_counter()
    result: dict = {}
    session = None
    try:
        if variant in ("eager", "compile"):
            import runpy

            sys.argv = [path, *argv]
            sys.path.insert(0, os.path.dirname(path))
            runpy.run_path(path, run_name="__main__")
        else:
            from .runtime.coexec import ProfilingMode
            from .session import Session

            session = Session(backend="auto", always_coexec=variant != "terra")
            if variant == "graph_only":  # the terra variant is timed without the profiler's clock reads
                session.executor.profiler = ProfilingMode(session.executor)
                executor = session.executor
                executor.runner.capture(max(3, iters // 4))

                def training_ends() -> None:  # the last iteration's line: a loop after it is not captured
                    executor.runner.capture_last = (executor.cell, executor.iter_index)

                clock.at_last = (iters, training_ends)
            session.run_path(path, argv)
    finally:
        sys.stdout = real_stdout
    result["stdout"] = "".join(clock.text)
    steady_ms, steady_s = _steady(clock.times, start)
    result.update(steady_ms=steady_ms, steady_s=steady_s, iterations=len(clock.times))
    if variant == "compile":
        from torch._dynamo.utils import counters

        result["dynamo_graphs"] = int(counters["stats"]["unique_graphs"])
        result["dynamo_breaks"] = int(sum(counters["graph_break"].values()))
    if session is not None:
        frame = session.to_pandas("iterations")
        if clock.walls:
            # The program's training: its rows up to the one its last ``iter`` line was printed in
            # (a row is recorded as it ends). A loop after it (gpt2's sampling) has rows of its own.
            import pandas as pd

            ended = frame.index[frame["time"] >= pd.Timestamp(clock.walls[-1], unit="s", tz="UTC")]
            if len(ended):
                frame = frame.loc[:ended[0]]
        later = frame.iloc[len(frame) // 2:]
        if len(later):
            result["eager_share"] = float((later["mode"] == "eager").mean())  # auto's choice, in steady state
        steady = frame[frame["mode"] == "coexec"]
        if len(steady):
            result["blocks_per_iter"] = float(steady["blocks"].median())
            result["syncs_per_iter"] = float(steady["syncs"].median())
        profiler = session.executor.profiler
        if profiler is not None:
            result["skeleton_us_per_op"] = profiler.us_per_op(set(later[later["mode"] == "coexec"]["iteration"]))
        if variant == "graph_only":
            times, failed = session.executor.runner.replay_captured()
            result["graph_only_left_out"] = failed
            if len(frame) > 1.5 * len(clock.times):
                # The engine's iterations are not the program's (reinforce: an environment step
                # each, the program prints per episode): a time per engine iteration would not be
                # comparable with the other variants' times per program iteration.
                result["steady_ms"] = None
            else:
                result["steady_ms"] = statistics.median(times) * 1e3 if times else None
    if device == "cuda" and torch.cuda.is_available():
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--worker":
        _, _, v, n, it, dev, sz, out = sys.argv
        worker(v, n, int(it), dev, sz, out)
    else:
        print("usage: python -m terra_nb.bench --worker VARIANT PROGRAM ITERS DEVICE SIZE OUT.json", file=sys.stderr)
        raise SystemExit(2)
