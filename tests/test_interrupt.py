"""Interrupting a co-executed cell (Ctrl-C, JupyterLab's stop button): it stops soon, and what the
user had is eager's at the point where it stopped; nothing computed is lost."""

from __future__ import annotations

import _thread
import threading
import time
import traceback

import pytest

import terra_nb
from terra_nb.runtime.future import FutureTensor

LOOP = """
import torch
w = torch.zeros(4, 4)
x = torch.ones(4, 4)
done = 0
for i in range(10 ** 6):
    y = x * 2.0
    w.add_(y)
    z = w.sum() * 0.5
    done = i + 1
"""


@pytest.fixture(autouse=True)
def _ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt, as in a terminal or a kernel: a process started in the
    background by a shell without job control (``cmd &``) ignores SIGINT, and then Python, and
    ``_thread.interrupt_main``, leave it ignored."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _interrupt_when(condition, timeout: float = 60.0) -> threading.Thread:
    """Interrupt the main thread (as Ctrl-C does) once ``condition()`` holds."""

    def watch():
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)
        _thread.interrupt_main()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_an_interrupt_during_co_execution_leaves_eagers_state_at_that_point():
    session = terra_nb.Session()
    namespace: dict = {}
    coexecuted = lambda: sum(it.mode == "coexec" for it in session.log.iterations) >= 50  # noqa: E731
    watcher = _interrupt_when(coexecuted)
    with pytest.raises(KeyboardInterrupt) as caught:
        session.run_cell(LOOP, namespace)
    watcher.join()
    done = namespace["done"]
    assert 50 <= done < 10 ** 6
    # Iteration `done` was stopped before `done = i + 1`: before w.add_, between it and z, or after z.
    w = namespace["w"]
    assert type(w) is not FutureTensor and w[0, 0].item() in (2.0 * done, 2.0 * done + 2)
    z = namespace["z"].item()  # computed, not lost
    assert z in (16.0 * done, 16.0 * done + 16) and z <= 8 * w[0, 0].item()
    assert namespace["y"].eq(2.0).all()
    assert any(entry.filename == "<terra-cell-1>" for entry in traceback.extract_tb(caught.value.__traceback__))
    # the session goes on: the next cell sees that state, and co-executes
    session.run_cell("total = 0.0\nfor k in range(20):\n    total += (w * 1.0).sum().item()", namespace)
    assert namespace["total"] == 20 * 16 * w[0, 0].item()
    assert any(it.mode == "coexec" for it in session.log.iterations if it.cell == 2)


def test_an_interrupt_in_the_users_python_code_is_raised_there_at_once():
    """Between the cell's tensor work and its end, plain Python runs; the interrupt lands there."""
    session = terra_nb.Session()
    namespace: dict = {"started": threading.Event()}
    source = (
        "import time, torch\n"
        "w = torch.zeros(3)\n"
        "for i in range(30):\n"
        "    w.add_(1.0)\n"
        "started.set()\n"
        "until = time.monotonic() + 60\n"
        "while time.monotonic() < until:\n"
        "    pass\n"
    )
    watcher = _interrupt_when(namespace["started"].is_set)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as caught:
        session.run_cell(source, namespace)
    watcher.join()
    assert time.monotonic() - t0 < 30
    last_user = [e for e in traceback.extract_tb(caught.value.__traceback__) if e.filename == "<terra-cell-1>"][-1]
    assert last_user.lineno in (7, 8), last_user
    assert namespace["w"].tolist() == [30.0, 30.0, 30.0]


def test_the_interrupt_handler_is_put_back_after_the_cell():
    import signal

    before = signal.getsignal(signal.SIGINT)
    session = terra_nb.Session()
    session.run_cell("import torch\nfor i in range(5):\n    y = torch.ones(2) * i", {})
    assert signal.getsignal(signal.SIGINT) is before


def test_a_handler_the_program_installs_stays_installed():
    import signal

    before = signal.getsignal(signal.SIGINT)
    namespace: dict = {}
    source = ("import signal, torch\n"
              "def graceful(signum, frame):\n"
              "    pass\n"
              "for i in range(5):\n"
              "    y = torch.ones(2) * i\n"
              "    if i == 2:\n"
              "        signal.signal(signal.SIGINT, graceful)\n")
    try:
        terra_nb.Session().run_cell(source, namespace)
        assert signal.getsignal(signal.SIGINT) is namespace["graceful"]
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.slow
def test_jupyters_interrupt_stops_a_co_executed_cell_and_keeps_its_state():
    """A real kernel, interrupted as JupyterLab's stop button does (SIGINT to the kernel process)."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        kc.execute_interactive("%load_ext terra_nb\nimport terra_nb", timeout=120)
        msg_id = kc.execute("%%terra --no-widget --backend eager\n" + LOOP.replace("done = i + 1", "done = i + 1\n    if done == 200: print('running', flush=True)"))
        while True:  # wait until the loop co-executes
            reply = kc.get_iopub_msg(timeout=120)
            if reply["parent_header"].get("msg_id") == msg_id and reply["msg_type"] == "stream" \
                    and "running" in reply["content"]["text"]:
                break
        km.interrupt_kernel()
        shell = kc.get_shell_msg(timeout=120)
        while shell["parent_header"].get("msg_id") != msg_id:
            shell = kc.get_shell_msg(timeout=120)
        assert shell["content"]["status"] == "error" and shell["content"]["ename"] == "KeyboardInterrupt"
        out: list[str] = []
        check = ("print(done < 10 ** 6, w[0, 0].item() in (2.0 * done, 2.0 * done + 2), "
                 "z.item() in (16.0 * done, 16.0 * done + 16), "
                 "sum(it.mode == 'coexec' for it in terra_nb.session().log.iterations) > 100)")
        kc.execute_interactive(check, timeout=120,
                               output_hook=lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert "".join(out).split() == ["True"] * 4, out
