"""The command line: terra-nb run, demo, and --help, as a user runs them (real processes)."""

import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from differential import INDEX_ERROR_IN_A_FUNCTION

SCRIPT = textwrap.dedent("""
    import random, sys
    import numpy as np
    import torch

    def train(model, opt, steps):
        for step in range(steps):
            x = torch.from_numpy(np.random.rand(16, 5).astype(np.float32))
            loss = model(x).pow(2).mean()
            opt.zero_grad(); loss.backward(); opt.step()
            if random.random() < 0.3:
                print("step", step, f"{loss.item():.6f}")
        return loss.item()

    if __name__ == "__main__":
        torch.manual_seed(0); random.seed(0); np.random.seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        steps = int(sys.argv[1])
        print("final", f"{train(model, opt, steps):.6f}")
""")


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "terra_nb.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_run_keeps_stdout_byte_identical_and_exports(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    plain = subprocess.run([sys.executable, str(script), "25"], capture_output=True, text=True, timeout=300)
    eager = _cli("run", str(script), "--eager", "--", "25")
    export = tmp_path / "log.csv"
    coexec = _cli("run", str(script), "--backend", "eager", "--export", str(export), "--", "25")
    assert plain.returncode == eager.returncode == coexec.returncode == 0, coexec.stderr
    assert coexec.stdout == plain.stdout == eager.stdout
    assert "terra-nb:" in coexec.stderr and "coexec" in coexec.stderr
    assert "... 1 iteration not shown" in coexec.stderr  # 25 rows, 24 shown: the gap is marked
    table = pd.read_csv(export)
    assert {"iteration", "mode", "wall_ms"} <= set(table.columns)
    assert len(table) == 25 and (table["mode"] == "coexec").sum() >= 15
    for kind in ("ops", "events", "blocks"):
        assert os.path.exists(tmp_path / f"log.{kind}.csv")


def test_run_and_the_kernel_session_default_to_the_auto_backend(tmp_path):
    """What a user gets without choosing: ``auto`` (eager where that measures faster on a CPU)."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    plain = subprocess.run([sys.executable, str(script), "60"], capture_output=True, text=True, timeout=300)
    export = tmp_path / "log.csv"
    result = _cli("run", str(script), "--export", str(export), "--", "60")
    assert result.returncode == 0, result.stderr
    assert result.stdout == plain.stdout
    assert set(pd.read_csv(tmp_path / "log.blocks.csv")["backend"]) == {"auto"}
    code = "import terra_nb; print(terra_nb.session().backend)"
    kernel = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert kernel.stdout.strip() == "auto", kernel.stderr


SPAWNING = textwrap.dedent("""
    import torch
    from torch.utils.data import DataLoader, Dataset

    class Pairs(Dataset):  # a class of the script's: a spawned worker finds it in the script
        def __len__(self):
            return 48

        def __getitem__(self, i):
            return torch.full((3,), float(i)), i % 2

    if __name__ == "__main__":
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        batches = DataLoader(Pairs(), batch_size=8, num_workers=2, multiprocessing_context="spawn")
        for epoch in range(2):
            for x, y in batches:
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(); loss.backward(); opt.step()
            print(epoch, f"{loss.item():.6f}")
""")


@pytest.mark.slow
def test_run_gives_spawned_workers_the_scripts_classes(tmp_path):
    """A DataLoader's spawned workers (the default start method on macOS and Windows) unpickle the
    script's own classes from ``__main__``, as under ``python script.py``."""
    script = tmp_path / "spawning.py"
    script.write_text(SPAWNING)
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    coexec = _cli("run", str(script), "--backend", "eager")
    assert plain.returncode == coexec.returncode == 0, coexec.stderr[-2000:]
    assert coexec.stdout == plain.stdout


def test_a_scripts_error_shows_the_scripts_frames_as_python_does(tmp_path):
    """An index out of range in iteration 10, raised inside a block: the traceback names the
    script's lines, down to the op's own, and no frame of the engine's; the exit status is Python's."""
    script = tmp_path / "failing.py"
    script.write_text(INDEX_ERROR_IN_A_FUNCTION)
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    coexec = _cli("run", str(script), "--backend", "eager", "--always-coexec")
    assert plain.returncode == coexec.returncode == 1
    assert "coexec" in coexec.stderr, "the error was raised by a block"
    shown = [line for line in coexec.stderr.splitlines() if line.startswith("  File ")]
    assert shown and all(str(script) in line for line in shown), coexec.stderr
    line = INDEX_ERROR_IN_A_FUNCTION.splitlines().index("    h = emb(idx)") + 1
    assert shown[-1].endswith(f"line {line}, in step"), shown
    assert "IndexError: index out of range in self" in coexec.stderr
    assert f'File "{script}", line {line}, in step' in plain.stderr


def test_a_scripts_top_level_await_is_a_syntax_error_as_python_says(tmp_path):
    """A notebook cell may ``await`` at its top level; a script may not, under ``python`` or ``terra-nb run``."""
    script = tmp_path / "awaits.py"
    script.write_text("import asyncio\nprint('start')\nawait asyncio.sleep(0)\n")
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    coexec = _cli("run", str(script))
    assert plain.returncode == coexec.returncode == 1
    assert "SyntaxError: 'await' outside function" in plain.stderr and "SyntaxError: 'await' outside function" in coexec.stderr
    assert "start" not in coexec.stdout


def _plain_and_run(script, *args, cwd):
    """``python SCRIPT ARGS`` and ``terra-nb run SCRIPT -- ARGS`` (co-executed, and --eager), from ``cwd``."""
    plain = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    runs = {how: _cli("run", script, *options, "--", *args, cwd=cwd)
            for how, options in (("coexec", ["--backend", "eager", "--always-coexec"]), ("eager", ["--eager"]))}
    return plain, runs


EXITING = textwrap.dedent("""
    import sys
    import torch

    acc = torch.zeros(1)
    for i in range(5):
        acc = acc + 1
        if i == 3:
            sys.exit(eval(sys.argv[1]))
""")


@pytest.mark.parametrize("code", ["f'fatal at {i}'", "2.5", "3", "None"])
def test_a_scripts_exit_message_is_printed_and_its_status_is_pythons(tmp_path, code):
    """``sys.exit("fatal at 3")`` in a script's loop: Python prints the message to stderr and exits
    1; ``terra-nb run`` exited 1 and printed nothing (the reason the script gave for stopping, lost)."""
    (tmp_path / "exiting.py").write_text(EXITING)
    plain, runs = _plain_and_run("exiting.py", code, cwd=tmp_path)
    for how, run in runs.items():
        assert run.returncode == plain.returncode, (how, run.stderr)
        assert run.stderr.startswith(plain.stderr), (how, run.stderr)
    assert plain.stderr == {"3": "", "None": ""}.get(code, f"{eval(code, {'i': 3})}\n")


WHERE = textwrap.dedent("""
    import os, sys
    import torch

    here = os.path.dirname(__file__)
    print(repr(__file__), sys.argv, sys.path[0] == os.path.realpath(here))
    os.chdir("/")
    acc = torch.zeros(1)
    for i in range(3):
        acc = acc + i
    print(open(os.path.join(here, "data.txt")).read(), acc)
""")


def test_a_script_finds_its_files_by_its_file_as_under_python(tmp_path):
    """``__file__`` was the path as typed (``scripts/where.py``), where Python makes it absolute: a
    script that found its data by ``os.path.dirname(__file__)`` lost it once it changed directory."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "where.py").write_text(WHERE)
    (tmp_path / "scripts" / "data.txt").write_text("its data")
    plain, runs = _plain_and_run("scripts/where.py", "an-arg", cwd=tmp_path)
    assert plain.returncode == 0 and str(tmp_path / "scripts" / "where.py") in plain.stdout, plain.stderr
    for how, run in runs.items():
        assert run.returncode == 0, (how, run.stderr)
        assert run.stdout == plain.stdout, how


def test_a_scripts_error_after_it_changed_directory_shows_its_frames(tmp_path):
    """A script that ``os.chdir``-ed and then raised showed only ``ValueError: boom``: its frames were
    looked for under its path made absolute from the new working directory."""
    (tmp_path / "chdir_raise.py").write_text("import os\nos.chdir('/')\nraise ValueError('boom')\n")
    plain, runs = _plain_and_run("./chdir_raise.py", cwd=tmp_path)
    assert plain.returncode == 1 and 'chdir_raise.py", line 3, in <module>' in plain.stderr
    for how, run in runs.items():
        assert run.returncode == 1, (how, run.stderr)
        assert run.stderr.startswith(plain.stderr), (how, run.stderr)


GLOBALS = textwrap.dedent("""
    import builtins, importlib.machinery
    print(sorted(name for name in globals() if not name.startswith("__terra_")))
    print(__builtins__ is builtins, __cached__, __spec__, __package__, __doc__, __annotations__)
    print(type(__loader__) is importlib.machinery.SourceFileLoader, __loader__.name, __loader__.path == __file__)
""")


def test_a_scripts_globals_are_pythons(tmp_path):
    """A script's ``__main__`` lacked ``__cached__`` and ``__annotations__``, its ``__loader__`` was None
    (a script reading its own source through it failed) and its ``__builtins__`` a dict."""
    (tmp_path / "names.py").write_text(GLOBALS)
    plain, runs = _plain_and_run("names.py", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    for how, run in runs.items():
        assert run.returncode == 0, (how, run.stderr)
        assert run.stdout == plain.stdout, how


def test_run_reports_a_missing_script(tmp_path):
    result = _cli("run", str(tmp_path / "nope.py"))
    assert result.returncode == 2 and "no such script" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="both are usable on a GPU machine")
def test_a_backend_or_device_this_machine_lacks_is_refused_with_the_fix(tmp_path):
    """No traceback, nothing of the script run: the cause and what to use instead."""
    script = tmp_path / "touch.py"
    script.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    run = _cli("run", str(script), "--backend", "cudagraphs")
    assert run.returncode == 2, run.stderr
    assert "needs a CUDA device" in run.stderr and "use 'inductor' or 'eager'" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "ran").exists()
    bench = _cli("bench", "--device", "cuda", "--programs", "lstm_lm")
    assert bench.returncode == 2 and "Traceback" not in bench.stderr
    assert "no CUDA device" in bench.stderr and "--device cpu" in bench.stderr


def test_demo_prints_its_table():
    result = _cli("demo", "--iters", "30", "--baseline", "5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for word in ("eager", "trace", "coexec", "speedup", "wall_ms"):
        assert word in out
    assert "x eager over" in out


@pytest.mark.parametrize("iters, baseline", [(3, 2), (1, 0), (5, 2), (4, -1)])
def test_demo_refuses_too_few_steps_to_show_its_baseline_and_coexecution(capsys, iters, baseline):
    """``demo --iters 3 --baseline 2`` announced "then 2 eager (the baseline)" and showed no eager
    row: the loop is found in its first 3 steps, and the baseline comes after. ``--iters 1``
    showed 2 rows for its 1 step. Such runs are refused, with the number of steps that shows them."""
    from terra_nb.cli import main

    status = main(["demo", "--iters", str(iters), "--baseline", str(baseline)])
    out, err = capsys.readouterr()
    assert status == 2 and out == "" and "Traceback" not in err, err
    assert (f"give --iters {baseline + 4} or more" if baseline >= 0 else "--baseline -1: give 0") in err, err


def test_demo_with_the_fewest_steps_shows_its_baseline_then_coexecution():
    """The fewest steps the demo takes for its baseline: every phase it announces, in its rows."""
    result = _cli("demo", "--iters", "6", "--baseline", "2")
    assert result.returncode == 0, result.stderr
    assert "then 2 eager (the baseline)" in result.stdout
    rows = result.stdout.split("iteration ", 1)[1].split("\n\n")[0].splitlines()[1:]
    modes = [row.split()[1] for row in rows]
    assert len(modes) == 6 and modes.count("eager") == 2 and modes[-1] == "coexec", modes


def test_run_refuses_to_export_a_plain_eager_run(tmp_path):
    """``run --eager --export log.csv`` ran the script and wrote nothing, silently: a plain run keeps
    no log. The pair is refused before the script runs, with the way to get either."""
    script = tmp_path / "train.py"
    script.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    result = _cli("run", str(script), "--eager", "--export", str(tmp_path / "log.csv"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "--eager" in result.stderr and "--export" in result.stderr and "no log" in result.stderr
    assert not (tmp_path / "ran").exists() and not (tmp_path / "log.csv").exists()


def test_help():
    result = _cli("--help")
    assert result.returncode == 0 and "run" in result.stdout and "bench" in result.stdout


def test_import_does_not_load_ipython():
    code = "import sys, terra_nb; print(any(m in sys.modules for m in ('IPython', 'ipywidgets', 'anywidget')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


WARNING_SCRIPT = textwrap.dedent("""
    import warnings
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def step(x):
        h = model(x)
        return -F.log_softmax(h).mean()  # no dim: a warning of F.log_softmax's, stacklevel 3

    for it in range(40):
        x = torch.randn(6, 4)
        y = torch.tensor(model(x).detach())  # a C++ warning: copy construct
        loss = step(x) + F.mse_loss(model(x).sum(1, keepdim=True), y.sum(1))  # target size: F.mse_loss warns
        z = torch.stft(torch.randn(64), 16, return_complex=True)  # no window: torch.functional's line
        opt.zero_grad(); loss.backward(); opt.step()
        if it == 30:
            warnings.warn(f"the program's own, at {it}")
            print((loss * 2).grad)  # a non-leaf's .grad: C++, at this line
    print(round(loss.item(), 4))
""")


def test_warnings_name_the_programs_lines_once_each_as_eager(tmp_path):
    """Torch's warnings from ops the engine runs (traced, at once, from a future) named the
    engine's line, the ones repeated by blocks their generated code's line (``<eval_with_key>``),
    and each showed there again; a user saw warnings from terra_nb. They are eager's, once each,
    co-executed and under auto (whose eager turns run with the mode on at times)."""
    script = tmp_path / "warns.py"
    script.write_text(WARNING_SCRIPT)
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)

    def warnings_of(stderr):
        return [line for line in stderr.splitlines() if "Warning: " in line]
    assert plain.returncode == 0 and len(warnings_of(plain.stderr)) == 6, plain.stderr
    for backend in ("eager", "auto"):
        coexec = _cli("run", str(script), "--backend", backend)
        assert coexec.returncode == 0, coexec.stderr
        assert coexec.stdout == plain.stdout
        assert warnings_of(coexec.stderr) == warnings_of(plain.stderr), backend


@pytest.mark.parametrize("argv, says", [
    (["run", "{script}", "--export", "{tmp}/log.xlsx"], "must end in .csv or .parquet"),
    (["run", "{script}", "--export", "{tmp}/missing/log.csv"], "no folder"),
    (["run", "{script}", "--trace-iters", "0"], "--trace-iters 0"),
    (["run", "{script}", "--baseline", "-1"], "--baseline -1"),
    # the script's own arguments without the -- before them (as `python train.py --epochs 2` takes them)
    (["run", "{script}", "--epochs", "2"], "terra-nb run [options] {script} -- --epochs 2"),
    (["run", "{script}", "data.csv", "--backend", "eager"], "terra-nb run [options] {script} -- data.csv"),
    (["bench", "--iters", "0"], "--iters 4 or more"),
    (["demo", "--iters", "0"], "--iters 0"),
])
def test_bad_options_are_refused_before_anything_runs(tmp_path, capsys, argv, says):
    """A bad ``--export`` path was found after the whole script had run (a ValueError's traceback,
    and the run's log lost); ``--trace-iters 0``, ``bench --iters 0`` ran on, meaninglessly."""
    from terra_nb.cli import main

    script = tmp_path / "train.py"
    script.write_text("print('the script ran')\n")
    status = main([a.format(script=script, tmp=tmp_path) for a in argv])
    out, err = capsys.readouterr()
    says = says.format(script=script)
    assert status == 2 and says in err and "Traceback" not in err, err
    assert "the script ran" not in out
