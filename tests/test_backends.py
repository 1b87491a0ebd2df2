"""A compile running in the background must not change what the program's own thread sees."""

import threading
import time

import torch

from terra_nb.runtime import backends


def test_is_compiling_is_true_only_in_the_compiling_thread():
    backends._thread_aware_is_compiling()
    seen_outside: list[bool] = []

    def slow_to_trace(x):
        for _ in range(200):  # enough Python for the compile session to stay open a while
            x = torch.sin(x) + 1
        return x

    def compile_in_background():
        torch.compile(slow_to_trace, backend="eager")(torch.ones(3))

    thread = threading.Thread(target=compile_in_background)
    thread.start()
    while thread.is_alive():
        seen_outside.append(torch.compiler.is_compiling())
        time.sleep(0.001)
    thread.join()
    assert seen_outside and not any(seen_outside)

    # inside a compiled function the check still folds to True, as upstream
    branch = torch.compile(lambda x: x + 1 if torch.compiler.is_compiling() else x - 1, backend="eager")
    assert branch(torch.zeros(1)).item() == 1.0
