"""%load_ext terra_nb, %%terra and %terra through IPython's own test shell."""

import re

import pytest
import torch
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython
from IPython.utils.capture import capture_output

import terra_nb

TRAIN = """
for step in range(12):
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 4 == 0:
        print("step", step, round(loss.item(), 5))
"""


@pytest.fixture()
def ip():
    start_ipython()
    shell = get_ipython()
    active = list(shell.display_formatter.active_types)
    shell.display_formatter.active_types = active + ["text/html"]  # as a Jupyter kernel formats
    terra_nb.session().reset()
    shell.run_line_magic("load_ext", "terra_nb")
    shell.run_cell("""
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(16, 4), torch.randn(16, 1)
""")
    yield shell
    shell.run_line_magic("unload_ext", "terra_nb")
    shell.display_formatter.active_types = active


def test_cell_magic_runs_in_the_user_namespace_and_shows_the_table(ip):
    with capture_output() as out:
        ip.run_cell_magic("terra", "--no-widget --baseline 3 -o report", TRAIN)
    assert "step 0" in out.stdout and "step 8" in out.stdout
    report = ip.user_ns["report"]
    modes = [it.mode for it in report.iterations]
    assert modes.count("eager") == 3 and "coexec" in modes
    shown = [o.data for o in out.outputs]
    html = [d["text/html"] for d in shown if "text/html" in d][-1]  # the final update of the live table
    assert "speedup" in html and "coexec" in html and "x eager over" in html
    assert isinstance(ip.user_ns["loss"], torch_tensor_type())


def test_a_long_cells_table_marks_the_iterations_it_leaves_out(ip):
    """The table of a long cell shows its first and latest rows; where it leaves rows out, a row
    says how many (the iteration numbers jumped, with nothing to say so)."""
    with capture_output() as out:
        ip.run_cell_magic("terra", "--no-widget", TRAIN.replace("range(12)", "range(70)"))
    assert len(out.stdout.splitlines()) == 18
    html = [o.data["text/html"] for o in out.outputs if "text/html" in o.data][-1]
    text = [o.data["text/plain"] for o in out.outputs if "text/html" in o.data][-1]
    assert html.count("<tr>") == 1 + 60 + 1 and "10 iterations not shown" in html
    assert "... 10 iterations not shown" in text and text.count("\n") == 1 + 60 + 1


def test_a_baseline_in_a_cell_that_builds_its_adam_optimizer(ip):
    """``--baseline 3`` on a cell that builds its model and an Adam optimizer, then trains: Adam
    makes its state per parameter in its first step, an op of it recurred there and anchored with
    no loop tick counted at its runs, was taken as sure, and the baseline's eager turns ran from an
    anchor that never came back: 4 rows for 40 turns. They are 3 eager rows among 40 now."""
    cell = """
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
adam = torch.optim.Adam(net.parameters(), 1e-3)
for i in range(40):
    loss = torch.nn.functional.mse_loss(net(torch.randn(16, 8)), torch.randn(16, 1))
    adam.zero_grad(); loss.backward(); adam.step()
"""
    with capture_output():
        ip.run_cell_magic("terra", "--no-widget --always-coexec --baseline 3 -o report", cell)
    modes = [it.mode for it in ip.user_ns["report"].iterations]
    assert len(modes) >= 38 and modes.count("eager") == 3 and "coexec" in modes, modes


def test_second_cell_with_the_same_step_coexecutes_from_its_first_iteration(ip):
    ip.run_cell("""
def train_step(x, y):
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    return loss
""")
    with capture_output():
        ip.run_cell_magic("terra", "--no-widget -o first", "for i in range(6):\n    train_step(x, y)\n")
        ip.run_cell_magic("terra", "--no-widget -o second", "for j in range(5):\n    loss = train_step(x, y)\n")
    second = ip.user_ns["second"]
    assert [it.mode for it in second.iterations] == ["coexec"] * 5
    assert sum(it.ops_traced for it in second.iterations) == 0, "the second cell did not trace again"


def test_a_cell_that_ends_in_a_call_to_the_training_function_shares_its_nodes(ip):
    """``train(8)`` as a cell's last line (a notebook shows its value): the call ran from the code
    of the cell's last expression, which was not a root, so its ops were keyed by the engine's and
    IPython's frames around the cell as well. Each such cell traced its own nodes again, and a
    second call in one cell traced all of its turns into one row."""
    ip.run_cell("""
def train(n):
    for i in range(n):
        loss = torch.nn.functional.mse_loss(model(x[i:i + 8]), y[i:i + 8])
        opt.zero_grad(); loss.backward(); opt.step()
    return loss.item()
""")
    with capture_output():
        ip.run_cell_magic("terra", "--no-widget -o first", "train(8)")
        ip.run_cell_magic("terra", "--no-widget -o second", "train(6)")
        ip.run_cell_magic("terra", "--no-widget -o third", "train(6)\ntrain(6)")
    second, third = ip.user_ns["second"], ip.user_ns["third"]
    assert [it.mode for it in second.iterations] == ["coexec"] * 6
    assert sum(it.ops_traced for it in second.iterations) == 0, "the second cell traced again"
    # (the second call's first turn follows the first call's return, a path not seen before)
    assert len(third.iterations) == 12 and [it.mode for it in third.iterations].count("coexec") >= 10
    assert isinstance(third.value, float)


def test_options_and_errors(ip):
    with pytest.raises(UsageError):
        ip.run_cell_magic("terra", "--backend nope", "pass")
    with pytest.raises(UsageError, match="baseline"):
        ip.run_cell_magic("terra", "--baseline -2", "pass")
    with pytest.raises(UsageError, match="unknown %terra command"):
        ip.run_line_magic("terra", "frobnicate")
    with pytest.raises(UsageError, match="csv or .parquet"):
        ip.run_line_magic("terra", "export out.txt")
    with pytest.raises(UsageError, match="no folder"):  # (an OSError's traceback from pandas before)
        ip.run_line_magic("terra", "export /no/such/folder/log.csv")
    with capture_output() as out:
        ip.run_cell_magic("terra", "--quiet -o r", "z = torch.ones(2) * 3")
    assert out.outputs == [] and out.stdout == ""
    assert ip.user_ns["z"].tolist() == [3.0, 3.0]


def _session_state():
    sess = terra_nb.session()
    return sess.backend, sess.executor.trace_iters, sess.executor.always_coexec, sess.cells


REFUSED = ["--backend eager --trace 0", "--trace 4 --baseline -1", "--backend inductor --always-coexec -o 1bad"]
if not torch.cuda.is_available():
    REFUSED += ["--backend eager --device cuda", "--trace 3 --backend cudagraphs"]


@pytest.mark.parametrize("options", REFUSED)
def test_a_cell_refused_for_one_bad_option_changes_nothing(ip, options):
    """Options were applied one by one as they were checked: ``--backend eager --trace 0`` was
    refused, but had made the session's backend eager, and ``--trace 4 --baseline -1`` its
    trace count 4. Every option is checked before any is applied: the cell neither runs nor
    changes the session."""
    ip.run_line_magic("terra", "backend auto")
    before = _session_state()
    with capture_output() as out:
        result = ip.run_cell(f"%%terra --no-widget {options}\nran = True\n")
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert "Traceback" not in out.stdout + out.stderr
    assert _session_state() == before
    assert "ran" not in ip.user_ns and "1bad" not in ip.user_ns


@pytest.mark.skipif(torch.cuda.is_available(), reason="cudagraphs is usable on a GPU machine")
def test_the_cell_magic_refuses_a_backend_this_machine_lacks_as_the_line_magic_does(ip):
    """``%%terra --backend cudagraphs`` on a CPU machine raised a BackendError with its traceback
    through the session's code, where ``%terra backend cudagraphs`` says why in one line."""
    with capture_output() as out:
        result = ip.run_cell("%%terra --no-widget --backend cudagraphs\nran = True\n")
    with pytest.raises(UsageError) as line:
        ip.run_line_magic("terra", "backend cudagraphs")
    assert isinstance(result.error_in_exec, UsageError)
    assert str(result.error_in_exec) == str(line.value) and "needs a CUDA device" in str(line.value)
    assert "Traceback" not in out.stdout + out.stderr and "ran" not in ip.user_ns


def test_trace_is_for_its_cell_only(ip):
    """``--trace 5`` on one cell stayed the session's for every later cell (its help did not say
    so, and ``--always-coexec``, the other per-cell option, is put back after its cell). It is
    for its cell only now, as its help says."""
    parser = ip.find_cell_magic("terra").parser
    (trace_help,) = [action.help for action in parser._actions if "--trace" in action.option_strings]
    assert "this cell only" in trace_help
    body = "for i in range(8):\n    h = x * {0}\n    s = h.sum()\n"
    with capture_output():  # (each cell's ops new: traced afresh)
        ip.run_cell_magic("terra", "--no-widget --backend eager --trace 5 -o first", body.format(2))
        ip.run_cell_magic("terra", "--no-widget -o second", body.format(3))
        ip.run_cell_magic("terra", "--no-widget --trace 1 -o third", body.format(4))
    traced = [[it.mode for it in ip.user_ns[name].iterations].count("trace") for name in ("first", "second", "third")]
    assert traced[0] == 5 and traced[1] == traced[2] < 5, traced
    assert terra_nb.session().executor.trace_iters == 1


@pytest.mark.parametrize("line", ["status extra", "reset now", "graph all", "table 2"])
def test_a_line_command_with_words_it_does_not_take_is_refused(ip, line):
    """``%terra reset now``, ``%terra status extra``: the extra words were ignored silently (a
    reset done that the user may have meant otherwise). They are refused, with the command's form."""
    with capture_output():
        ip.run_cell_magic("terra", "--no-widget", "for i in range(4):\n    h = x * 2\n")
    nodes, cells = len(terra_nb.session().graph.nodes), terra_nb.session().cells
    with capture_output() as out, pytest.raises(UsageError, match=f"^usage: %terra {line.split()[0]} "):
        ip.run_line_magic("terra", line)
    assert out.stdout == "" and out.outputs == [], "the command ran"
    assert len(terra_nb.session().graph.nodes) == nodes and terra_nb.session().cells == cells


TINY = """
w = torch.randn(4, 4) * 0.5
h = torch.randn(4, 4)
for step in range(120):
    h = torch.tanh(h @ w) + 0.1
"""


def test_auto_chooses_eager_in_a_cell_unless_told_to_always_coexecute(ip):
    """A loop of tiny ops runs faster eagerly on a CPU: with the auto backend the cell goes on
    eagerly after measuring; --always-coexec keeps that one cell co-executed."""
    try:
        with capture_output():
            ip.run_cell_magic("terra", "--no-widget --backend auto -o chosen", TINY)
            ip.run_cell_magic("terra", "--no-widget --always-coexec -o always", TINY)
    finally:
        ip.run_line_magic("terra", "backend eager")
    assert "eager" in [it.mode for it in ip.user_ns["chosen"].iterations]
    assert "eager" not in [it.mode for it in ip.user_ns["always"].iterations]
    events = terra_nb.session().to_pandas("events")
    assert set(events[events["kind"] == "choice"]["cell"]) == {ip.user_ns["chosen"].cell}
    assert terra_nb.session().executor.always_coexec is False, "the option is for its cell only"


def test_line_magic_commands(ip, tmp_path):
    with capture_output():
        ip.run_cell_magic("terra", "--no-widget", TRAIN)
    with capture_output() as out:
        ip.run_line_magic("terra", "status")
        ip.run_line_magic("terra", "table")
        ip.run_line_magic("terra", f"export {tmp_path / 'log.csv'}")
        (tmp_path / "my runs").mkdir()
        ip.run_line_magic("terra", f"export {tmp_path / 'my runs' / 'log.csv'}")  # a folder with a space
        ip.run_line_magic("terra", "backend eager")
    assert "terra_nb backend: eager" in out.stdout and "nodes" in out.stdout
    assert (tmp_path / "log.csv").exists() and (tmp_path / "log.events.csv").exists()
    assert (tmp_path / "my runs" / "log.csv").exists()
    assert any("text/html" in o.data for o in out.outputs)
    with capture_output() as out:
        ip.run_line_magic("terra", "reset")
    assert len(terra_nb.session().graph.nodes) == 1


def test_user_exception_shows_the_users_line_and_the_session_survives(ip):
    with capture_output() as out:
        result = ip.run_cell("%%terra --no-widget\nfor i in range(5):\n    w = model(x).sum()\n    if i == 3:\n        raise ValueError('bad step')\n")
    assert isinstance(result.error_in_exec, ValueError)
    text = out.stdout + out.stderr
    assert "bad step" in text
    assert "coexec.py" not in text and "session.py" not in text, "engine frames are hidden"
    with capture_output():
        ip.run_cell_magic("terra", "--no-widget", "ok = model(x).sum().item()")
    assert isinstance(ip.user_ns["ok"], float)


@pytest.mark.parametrize("index", ["computed", "made"])
def test_an_error_a_block_raises_shows_the_ops_line_last(ip, index):
    """An index out of range: computed by a deferred op (a future), the embedding's block raises
    at the next sync; made from Python data (real), the skeleton finds it out of range and runs
    the op at once, as eager raises it. Either way the traceback the notebook shows ends at that
    op's line (where eager's ends), and shows no frame of the engine's."""
    ids = {"computed": "torch.tensor([1, 2, 3]) * (1 if i < 10 else 10)",
           "made": "torch.tensor([1, 2, 3 if i < 10 else 30])"}[index]
    cell = ("emb = torch.nn.Embedding(10, 4)\n"
            "for i in range(12):\n"
            f"    loss = emb({ids}).sum()\n"
            "    loss.backward()\n"
            "    print('step', i, round(loss.item(), 4))\n")
    with capture_output() as out:
        result = ip.run_cell("%%terra --no-widget --always-coexec\n" + cell)
    assert isinstance(result.error_in_exec, IndexError)
    text = out.stdout + out.stderr
    assert "index out of range" in text and "step 9" in text and "step 10" not in text
    for engine_file in ("coexec.py", "location.py", "session.py", "future.py"):
        assert engine_file not in text, f"{engine_file} in the traceback"
    if index == "computed":  # the sync's line, then the op's
        assert text.rindex(f"emb({ids}).sum()") > text.rindex("loss.item()")
    else:  # the op's line, then torch's frames below it, as in eager's
        assert f"----> 3     loss = emb({ids}).sum()" in text and "----> 5" not in text


def test_an_error_a_block_raises_as_the_cell_ends_shows_only_the_cells_frames(ip):
    """An op's error that no sync in the loop meets: its block raises as the cell ends, in the
    exit of the engine's ``with``. The traceback showed contextlib's ``__exit__`` frame (``-->
    144 next(self.gen)``) before the op's line; it shows the cell's frames only, as for others."""
    ip.run_cell("emb = torch.nn.Embedding(10, 4)")
    cell = "for i in range(12):\n    loss = emb(torch.tensor([1, 2, 3]) * (1 if i < 10 else 10)).sum()\n"
    with capture_output() as out:
        result = ip.run_cell("%%terra --no-widget --quiet --always-coexec\n" + cell, store_history=True)
    assert isinstance(result.error_in_exec, IndexError)
    text = out.stdout + out.stderr
    frames = re.findall(r"^(?:Cell In\[|File ).*$", text, re.MULTILINE)
    assert [frame.split(",")[1] for frame in frames] == [" line 1", " line 2"], text  # (the magic's call, the op's)
    assert "----> 2     loss = emb(torch.tensor([1, 2, 3]) * (1 if i < 10 else 10)).sum()" in text


def test_a_cells_traceback_names_the_cell_by_its_own_number(ip):
    """A cell that raises, run as In[N] (a notebook's cells are kept in the history): its
    traceback said ``Cell In[N+1]``, the next cell's number (IPython counts a cell before its
    magic runs), and terra_nb's note ``<ipython-input-N+1-...>``. Both say N, as the plain cell's."""
    ip.run_cell("x = torch.ones(2)\nemb = torch.nn.Embedding(10, 4)", store_history=True)
    cells = ["for i in range(5):\n    x = x + 1\n    if i == 3: 1/0\n",
             "for i in range(12):\n    loss = emb(torch.tensor([1, 2, 3]) * (1 if i < 10 else 10)).sum()\n"
             "    print(loss.item())\n"]
    for cell in cells:
        with capture_output() as plain:
            expected = ip.run_cell(cell, store_history=True)
        with capture_output() as out:
            result = ip.run_cell("%%terra --no-widget --quiet --always-coexec\n" + cell, store_history=True)
        assert type(result.error_in_exec) is type(expected.error_in_exec) is not type(None)
        assert set(re.findall(r"Cell In\[(\d+)\]", plain.stdout)) == {str(expected.execution_count)}
        assert set(re.findall(r"Cell In\[(\d+)\]", out.stdout)) == {str(result.execution_count)}, out.stdout
        notes = set(re.findall(r"<ipython-input-(\d+)-", out.stdout))  # (the embedding's note names the cell)
        assert notes == ({str(result.execution_count)} if "emb(" in cell else set()), out.stdout


def test_a_semicolon_after_the_cells_last_expression_hides_its_value(ip):
    """``x;`` as a cell's last line shows nothing and leaves ``_`` and ``Out`` as they were, in a
    plain cell and under ``%%time``; a ``%%terra`` cell showed ``Out[N]: tensor([1., 1.])`` and
    stored it. It shows nothing now; without the semicolon it shows the value, as a plain cell."""
    ip.run_cell("x = torch.ones(2)", store_history=True)
    ip.run_cell("x", store_history=True)
    before, out_before = ip.user_ns["_"], dict(ip.user_ns["Out"])
    for cell in ("x;", "x;  # the value, not shown", "y = x * 2\ny;"):
        with capture_output() as out:
            result = ip.run_cell("%%terra --no-widget --quiet\n" + cell, store_history=True)
        assert result.error_in_exec is None and result.result is None
        assert out.stdout == "" and out.outputs == [], out.stdout
        assert ip.user_ns["_"] is before and ip.user_ns["Out"] == out_before
    with capture_output() as out:
        result = ip.run_cell("%%terra --no-widget --quiet\nx", store_history=True)
    assert f"Out[{result.execution_count}]: tensor([1., 1.])" in out.stdout
    assert ip.user_ns["Out"][result.execution_count] is ip.user_ns["_"] is result.result


def test_ipython_syntax_in_a_cell_runs_as_in_a_plain_cell(ip):
    """Line magics and shell escapes inside a ``%%terra`` cell do what they do in a plain cell."""
    cell = """
seen = []
for step in range(8):
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    if step == 5:
        %time probe = model(x).sum()
        !echo shell-$step
    seen.append(round(loss.item(), 5))
listed = !echo a b
print(seen[-1], listed)
"""
    with capture_output() as out:
        result = ip.run_cell("%%terra --no-widget\n" + cell)
    assert result.error_in_exec is None and result.error_before_exec is None, out.stdout + out.stderr
    assert "Wall time" in out.stdout and "shell-5" in out.stdout and "['a b']" in out.stdout
    assert "probe" in ip.user_ns and len(ip.user_ns["seen"]) == 8
    assert "coexec" in [it.mode for it in terra_nb.session().log.iterations]


AWAITING = """
import asyncio
torch.manual_seed(1)
net = torch.nn.Linear(4, 1)
sgd = torch.optim.SGD(net.parameters(), lr=0.1)

async def batch(i):
    await asyncio.sleep(0)
    return torch.randn(8, 4), torch.randn(8, 1) * i

seen = []
for step in range(10):
    xb, yb = await batch(step)
    loss = torch.nn.functional.mse_loss(net(xb), yb)
    sgd.zero_grad(); loss.backward(); sgd.step()
    a, b = await asyncio.gather(asyncio.sleep(0, loss.item()), asyncio.sleep(0, step))
    seen.append(round(a, 5))
print(seen)
await asyncio.sleep(0, net.weight.sum().item())
"""


def test_top_level_await_in_a_cell_runs_as_in_a_plain_cell(ip):
    """``await`` at a cell's top level (a coroutine fetching the batch, ``asyncio.gather``, an
    awaited last expression): a plain IPython cell allows it; a ``%%terra`` cell gave a
    SyntaxError. It prints and returns what the plain cell does, co-executed."""
    with capture_output() as plain:
        expected = ip.run_cell(AWAITING)
    assert expected.error_in_exec is None and isinstance(expected.result, float)
    terra_nb.session().reset()
    with capture_output() as out:
        result = ip.run_cell("%%terra --no-widget --always-coexec\n" + AWAITING)
    assert result.error_in_exec is None and result.error_before_exec is None, out.stdout + out.stderr
    printed = [line for line in out.stdout.splitlines() if line.startswith("[")]
    assert len(printed) == 1 and printed == [line for line in plain.stdout.splitlines() if line.startswith("[")]
    assert result.result == expected.result  # the awaited last expression, the cell's value
    assert "coexec" in [it.mode for it in terra_nb.session().log.iterations]
    # an error after an await: the cell's lines, not the event loop's
    with capture_output() as out:
        failed = ip.run_cell("%%terra --no-widget\nfor i in range(8):\n    await asyncio.sleep(0)\n"
                             "    y = net(torch.randn(2, 4 if i < 6 else 5))\n")
    assert isinstance(failed.error_in_exec, RuntimeError)
    assert "y = net(torch.randn(2, 4 if i < 6 else 5))" in out.stdout and "base_events" not in out.stdout, out.stdout


def test_unload_removes_the_magics(ip):
    ip.run_line_magic("unload_ext", "terra_nb")
    assert "terra" not in ip.magics_manager.magics["cell"]
    assert "terra" not in ip.magics_manager.magics["line"]
    ip.run_line_magic("load_ext", "terra_nb")


def torch_tensor_type():
    import torch

    return torch.Tensor
