"""The benchmark programs, co-executed, print byte for byte what they print eagerly (slow)."""

import pathlib
import subprocess
import sys

import pytest

PROGRAMS = sorted(p.stem for p in (pathlib.Path(__file__).resolve().parent.parent / "examples" / "programs").glob("*.py")
                  if not p.stem.startswith("_"))


@pytest.mark.slow
@pytest.mark.parametrize("name", PROGRAMS)
def test_program_coexecuted_prints_what_eager_prints(name, tmp_path):
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "programs" / f"{name}.py"
    eager = subprocess.run([sys.executable, str(path), "--iters", "8"], capture_output=True, text=True, timeout=600)
    log = tmp_path / "log.csv"
    terra = subprocess.run([sys.executable, "-m", "terra_nb.cli", "run", str(path), "--export", str(log), "--", "--iters", "8"],
                           capture_output=True, text=True, timeout=600)
    assert eager.returncode == 0, eager.stderr
    assert terra.returncode == 0, terra.stderr
    assert terra.stdout == eager.stdout
    import pandas as pd

    modes = pd.read_csv(log)["mode"].tolist()
    assert "coexec" in modes, f"{name}: nothing was co-executed: {modes}"
