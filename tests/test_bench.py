"""terra-nb bench end to end on one program, all five variants (slow: torch.compile compiles)."""

import json
import subprocess
import sys

import pytest

KEYS = {"program", "device", "eager_ms", "compile_ms", "terra_ms", "graph_only_ms", "terra_vs_eager",
        "terra_vs_compile", "terra_vs_graph_only", "steady_s_compile", "steady_s_terra", "dynamo_graphs",
        "dynamo_breaks", "blocks_per_iter", "syncs_per_iter", "skeleton_us_per_op", "peak_mb", "matched_eager",
        "coexec_ms", "coexec_vs_eager", "eager_share"}


@pytest.mark.slow
def test_bench_one_program_all_variants(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "terra_nb.cli", "bench", "--programs", "lstm_lm", "--iters", "8",
                             "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "lstm_lm" in result.stdout and "t/eager" in result.stdout
    (record,) = json.loads(out.read_text())
    assert KEYS <= record.keys()
    assert not record["errors"], record["errors"]
    for key in ("eager_ms", "compile_ms", "terra_ms", "coexec_ms", "graph_only_ms", "skeleton_us_per_op"):
        assert record[key] > 0, key
    assert record["terra_vs_eager"] == pytest.approx(record["terra_ms"] / record["eager_ms"])
    assert record["matched_eager"]["terra"] is True and record["matched_eager"]["coexec"] is True
    assert 0.0 <= record["eager_share"] <= 1.0
    # torch.compile's dropout draws another random stream: its losses need not match eager's
    assert record["matched_eager"]["compile"] is not None, "the comparison ran"
    assert record["dynamo_graphs"] >= 1 and record["blocks_per_iter"] >= 1


def test_bench_rejects_unknown_programs():
    result = subprocess.run([sys.executable, "-m", "terra_nb.cli", "bench", "--programs", "nope"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown program" in result.stderr


@pytest.mark.slow
def test_skeleton_micro_benchmark_prints_its_table():
    result = subprocess.run([sys.executable, "-m", "terra_nb.cli", "bench", "--skeleton"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "mode dispatch" in lines[1] and "skeleton alone" in lines[1]
    rows = [line.split() for line in lines[2:]]
    assert [(r[0], r[1]) for r in rows] == [("4x4", "4"), ("4x4", "32"), ("64x64", "4"), ("64x64", "32")]
    assert all(float(x) > 0 for r in rows for x in r[2:])
