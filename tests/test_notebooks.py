"""Every notebook in examples/ executed headless with nbclient, asserting on its outputs."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def _execute(path: pathlib.Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    return notebook


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output["text"])
        for mime in ("text/html", "text/plain"):
            if mime in output.get("data", {}):
                parts.append(output["data"][mime])
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path):
    notebook = _execute(path)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", f"{path.name}: {output.get('ename')}: {output.get('evalue')}"
    if path.name == "quickstart.ipynb":
        _check_quickstart(notebook)


def _check_quickstart(notebook):
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    training = [c for c in cells if c.source.startswith("%%terra")]
    assert len(training) == 2
    first_table = _text(training[0])
    assert "speedup" in first_table and "coexec" in first_table and "x eager over" in first_table
    checks = _text(cells[-1])
    lines = {line.split(":")[0]: line for line in checks.splitlines() if line.startswith("cell ")}
    first, second = lines["cell 1"], lines["cell 2"]
    assert "coexec" in first and "eager" in first, first
    # the auto backend may go on eagerly after timing both ways; it never traces again
    modes = second.split("modes ")[1].split("]")[0]
    assert "traced ops 0" in second and "'trace'" not in modes and "'fallback'" not in modes, \
        "the second training cell did not trace again"
    assert "'coexec'" in modes, second


def _execute_as_jupyterlab(kc, code: str, cell_id: str) -> str:
    """Send an execute_request whose metadata names the cell, as JupyterLab does; return its stdout."""
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
               "allow_stdin": False, "stop_on_error": True}
    msg = kc.session.msg("execute_request", content, metadata={"cellId": cell_id})
    kc.shell_channel.send(msg)
    out = []
    while True:
        reply = kc.get_iopub_msg(timeout=120)
        if reply["parent_header"].get("msg_id") != msg["header"]["msg_id"]:
            continue
        if reply["msg_type"] == "stream":
            out.append(reply["content"]["text"])
        elif reply["msg_type"] == "error":
            raise AssertionError("\n".join(reply["content"]["traceback"]))
        elif reply["msg_type"] == "status" and reply["content"]["execution_state"] == "idle":
            return "".join(out)


@pytest.mark.slow
def test_editing_a_cell_retires_its_stale_nodes():
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        _execute_as_jupyterlab(kc, "%load_ext terra_nb\nimport torch, terra_nb\nw = torch.ones(3, requires_grad=True)", "setup")
        show = "print(sorted({n['op'] for n in terra_nb.session().to_json()['nodes']}))"
        _execute_as_jupyterlab(kc, "%%terra --no-widget\nfor i in range(3):\n    a = (w * 2).sum()\n    b = (w + 1).exp().sum()", "train")
        before = _execute_as_jupyterlab(kc, show, "look")
        # the user edits the training cell and runs it again
        _execute_as_jupyterlab(kc, "%%terra --no-widget\nfor i in range(3):\n    a = (w * 2).sum()\n    b = (w - 1).tanh().sum()", "train")
        after = _execute_as_jupyterlab(kc, show, "look")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert "'exp'" in before and "'mul'" in before
    assert "'exp'" not in after and "'add'" not in after, after
    assert "'tanh'" in after and "'mul'" in after, after


@pytest.mark.slow
def test_top_level_await_in_a_terra_cell_runs_in_a_kernel():
    """In a Jupyter kernel a cell runs from the kernel's event loop, which a cell magic cannot
    await: the ``%%terra`` cell's coroutine runs on a loop of its own, and the kernel's loop serves
    the next plain cell's ``await`` as before."""
    from jupyter_client.manager import start_new_kernel

    cell = """
import asyncio, torch
torch.manual_seed(0)
w = torch.zeros(3, requires_grad=True)
sgd = torch.optim.SGD([w], lr=0.1)
async def target(i):
    await asyncio.sleep(0.001)
    return torch.full((3,), float(i % 3))
for i in range(12):
    loss = (w - await target(i)).pow(2).sum()
    sgd.zero_grad(); loss.backward(); sgd.step()
print("final", [round(v, 5) for v in w.tolist()])
"""
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        plain = _execute_as_jupyterlab(kc, cell, "plain")
        _execute_as_jupyterlab(kc, "%load_ext terra_nb", "load")
        terra = _execute_as_jupyterlab(kc, "%%terra --no-widget --always-coexec" + cell, "terra")
        modes = _execute_as_jupyterlab(kc, "import terra_nb\nprint([it.mode for it in terra_nb.session().log.iterations])", "modes")
        after = _execute_as_jupyterlab(kc, "import asyncio\nprint('after', await asyncio.sleep(0.01, 7))", "after")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    final = [line for line in plain.splitlines() if line.startswith("final")]
    assert final and final == [line for line in terra.splitlines() if line.startswith("final")], terra
    assert "'coexec'" in modes, modes
    assert "after 7" in after


@pytest.mark.slow
def test_a_warning_in_a_terra_cell_names_the_cells_line_once_as_in_a_plain_cell():
    """torch's warning from an op in a loop: a plain cell shows it once, at the cell's line; so does
    a ``%%terra`` cell (it named terra_nb's own line, and a block's generated code's, each once)."""
    from jupyter_client.manager import start_new_kernel

    cell = """
import torch
import torch.nn.functional as F
torch.manual_seed(0)
w = torch.randn(4, 3, requires_grad=True)
for i in range(30):
    p = F.softmax(torch.randn(5, 4) @ w)
    loss = -p[:, 0].log().mean()
    loss.backward()
    with torch.no_grad():
        w -= 0.1 * w.grad
        w.grad = None
print("final", round(loss.item(), 5))
"""
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        plain = _execute_as_jupyterlab(kc, cell, "plain")
        _execute_as_jupyterlab(kc, "%load_ext terra_nb", "load")
        terra = _execute_as_jupyterlab(kc, "%%terra --no-widget --always-coexec" + cell, "terra")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

    def warnings_in(out):
        return [line.split(": UserWarning: ")[0].rsplit(":", 1)[1] for line in out.splitlines() if ": UserWarning: " in line]
    def finals(out):
        return [line for line in out.splitlines() if line.startswith("final")]
    assert finals(terra) and finals(terra) == finals(plain), terra
    assert warnings_in(plain) == ["6"], plain
    assert warnings_in(terra) == ["6"], terra


@pytest.mark.slow
def test_the_table_stays_when_the_cell_clears_its_output():
    """A training loop that prints its progress after ``clear_output(wait=True)``: the clear took
    the live table's output away, its updates reached nothing, and the cell ended with no table."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("%load_ext terra_nb"), nbformat.v4.new_code_cell("""%%terra --no-widget
import torch
from IPython.display import clear_output
w = torch.zeros(3, requires_grad=True)
for i in range(20):
    loss = (w - 1).pow(2).sum()
    loss.backward()
    with torch.no_grad():
        w -= 0.1 * w.grad
        w.grad = None
    clear_output(wait=True)
    print("step", i, round(loss.item(), 4))
""")]
    NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    text = _text(notebook.cells[1])
    assert "step 19" in text and "step 18" not in text, text
    assert "iterations" in text and "coexec" in text, text
