"""``terra-nb``: co-execute scripts (``run``), see it work (``demo``), measure it (``bench``)."""

from __future__ import annotations

import argparse
import os
import sys

from .runtime.backends import BACKENDS
from .runtime.runner import PLACEMENTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="terra-nb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a Python script co-executed (its loops, wherever they are)")
    run.add_argument("script", help="path of the script, run as __main__")
    run.add_argument("--backend", default="auto", choices=BACKENDS,
                     help="how blocks run (default auto; eager replays them op by op, the oracle)")
    run.add_argument("--trace-iters", type=int, default=1, metavar="N", help="times a node is traced before it is deferred")
    run.add_argument("--runner", default="auto", choices=PLACEMENTS,
                     help="where blocks run: auto (CPU blocks in the program's thread, CUDA blocks on the GraphRunner's), thread, inline")
    run.add_argument("--baseline", type=int, default=0, metavar="N", help="run N iterations eagerly (once the loop is found), for the speedup column")
    run.add_argument("--always-coexec", action="store_true",
                     help="with --backend auto on a CPU: co-execute even where auto measured eager to be faster")
    run.add_argument("--eager", action="store_true", help="run the script plainly, for comparison")
    run.add_argument("--export", metavar="PATH",
                     help="write the event log's tables (.csv or .parquet); not with --eager, which keeps no log")
    run.add_argument("--quiet", action="store_true", help="print only the one-line summary to stderr")

    demo = sub.add_parser("demo", help="co-execute a small training loop and print its per-iteration table")
    demo.add_argument("--iters", type=int, default=60, help="training steps: --baseline + 4 or more")
    demo.add_argument("--baseline", type=int, default=10, help="eager iterations timed first")
    demo.add_argument("--backend", default="eager", choices=BACKENDS)

    bench = sub.add_parser("bench", help="benchmark the example programs against eager, torch.compile and graph-only")
    from .bench import add_arguments

    add_arguments(bench)

    argv = list(sys.argv[1:] if argv is None else argv)
    script_args: list[str] = []
    if "--" in argv:  # everything after -- belongs to the script
        cut = argv.index("--")
        argv, script_args = argv[:cut], argv[cut + 1:]
    parser.epilog = "terra-nb run SCRIPT [options] -- SCRIPT_ARGS: arguments after -- go to the script"
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "run" and not script_args:
        # the script's own arguments, given as `python script.py ARGS` takes them
        print(f"terra-nb run: {' '.join(extra)}: not an option of terra-nb run; the script's arguments "
              f"go after --: terra-nb run [options] {args.script} -- {' '.join(extra)}", file=sys.stderr)
        return 2
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.script_args = script_args
    backend = getattr(args, "backend", None)
    if backend is not None and not getattr(args, "eager", False):
        from .runtime.backends import BackendError, check_backend

        try:
            check_backend(backend)
        except BackendError as exc:  # before anything of the script runs
            print(f"terra-nb {args.command}: --backend {backend}: {exc}", file=sys.stderr)
            return 2
    if args.command == "run":
        return _run(args)
    if args.command == "demo":
        return _demo(args)
    from .bench import run_bench

    return run_bench(args)


def _run(args) -> int:
    script_args = args.script_args
    if not os.path.exists(args.script):
        print(f"terra-nb run: no such script: {args.script}", file=sys.stderr)
        return 2
    problem = _run_options_problem(args)
    if problem:  # before anything of the script runs
        print(f"terra-nb run: {problem}", file=sys.stderr)
        return 2
    from .session import Session, run_script, script_filename

    script = script_filename(args.script)  # before the script runs: it may change the working directory
    session = None if args.eager else Session(backend=args.backend, trace_iters=args.trace_iters,
                                              runner=args.runner, always_coexec=args.always_coexec)
    status = 0
    try:
        if session is None:
            run_script(args.script, script_args)
        else:
            session.run_path(args.script, script_args, baseline=args.baseline)
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except Exception as exc:  # as Python ends a script that raises: its traceback, status 1
        _print_script_error(exc, script)
        status = 1
    finally:
        sys.stdout.flush()
        if session is not None:
            _report(session, quiet=args.quiet)
            if args.export:
                for path in session.export(args.export):
                    print(f"terra-nb: wrote {path}", file=sys.stderr)
    return status


def _exit_status(code: object) -> int:
    """The status Python exits with when a script raises ``SystemExit(code)``: None is 0, an int
    itself, and anything else (``sys.exit("fatal: ...")``) is printed to stderr, status 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stdout.flush()
    print(code, file=sys.stderr)
    return 1


def _run_options_problem(args) -> str | None:
    if args.trace_iters < 1:
        return f"--trace-iters {args.trace_iters}: a node is traced at least once; give 1 or more"
    if args.baseline < 0:
        return f"--baseline {args.baseline}: give 0 (no eager baseline) or more iterations"
    if args.export and args.eager:  # (the script would run, and nothing be written)
        return (f"--export {args.export} writes the co-executed run's log, and --eager runs the script plainly, "
                "with no log: drop --eager to export the log, or --export to run plainly")
    if args.export:
        from .frames import export_problem

        return export_problem(args.export)
    return None


def _print_script_error(exc: BaseException, script: str) -> None:
    """Print the traceback Python prints for an exception the script raised: from the script's
    first frame down, with no frame of the engine's (a block's error is raised from the op's line)."""
    import traceback

    from .trace.location import drop_engine_frames

    drop_engine_frames(exc, start=script)
    sys.stdout.flush()
    traceback.print_exception(exc)


def _report(session, quiet: bool) -> None:
    from .table import IterationTable

    if not quiet and session.log.iterations:
        print(IterationTable(session, session.cells, max_rows=24, head=12).text(), file=sys.stderr)
    print(f"terra-nb: {session.summary()}", file=sys.stderr)


# Steps of the demo's loop before the baseline's eager ones can start: its loop is sure
# (CoExecutor._anchor_sure) as its 4th step begins, and there the baseline starts (checked by
# test_demo_with_the_fewest_steps_shows_its_baseline_then_coexecution).
_DEMO_FINDING_STEPS = 3


def _demo(args) -> int:
    from .demo import demo_source
    from .session import Session
    from .table import IterationTable

    if args.baseline < 0:
        print(f"terra-nb demo: --baseline {args.baseline}: give 0 (no eager baseline) or more steps", file=sys.stderr)
        return 2
    fewest = _DEMO_FINDING_STEPS + args.baseline + 1
    if args.iters < fewest:  # (the table would lack a phase the announcement names)
        after = f"the {args.baseline} eager steps of the baseline come next, then" if args.baseline else "then come"
        print(f"terra-nb demo: --iters {args.iters} --baseline {args.baseline}: the loop is found in its first "
              f"{_DEMO_FINDING_STEPS} steps, {after} co-executed ones; give --iters {fewest} or more"
              + (" (or a smaller --baseline)" if args.baseline else ""), file=sys.stderr)
        return 2

    session = Session(backend=args.backend)
    baseline = f"then {args.baseline} eager (the baseline), " if args.baseline else ""
    print(f"terra-nb demo: {args.iters} training steps of a small MLP: traced, {baseline}then co-executed "
          f"with the {args.backend!r} backend\n")
    session.run_cell(demo_source(args.iters), {"__name__": "__main__"}, baseline=args.baseline)
    print()
    print(IterationTable(session, session.cells, max_rows=len(session.log.iterations)).text())
    print()
    by_mode = session.to_pandas("iterations").groupby("mode", observed=True)["wall_ms"].median()
    print("median ms per iteration: " + ", ".join(f"{mode} {ms:.3f}" for mode, ms in by_mode.items()))
    print(session.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
