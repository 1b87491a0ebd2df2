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


def _bench(*args):
    return subprocess.run([sys.executable, "-m", "terra_nb.cli", "bench", *args], capture_output=True, text=True,
                          timeout=300)


def test_bench_rejects_unknown_programs_and_lists_the_known_ones():
    """``--programs nope`` said "unknown program or variant: nope" and not which names there are."""
    result = _bench("--programs", "lstm_lm,nope", "--variants", "eager,fast")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown program: nope" in result.stderr and "unknown variant: fast" in result.stderr
    assert "dcgan, resnet" in result.stderr and "eager, compile, terra, coexec, graph_only" in result.stderr
    assert " / " not in result.stderr, "a program ran"


@pytest.mark.parametrize("option, value", [("--programs", ","), ("--programs", ""), ("--variants", ","),
                                           ("--variants", " ")])
def test_bench_refuses_an_empty_list_of_programs_or_variants(option, value):
    """``--variants ,`` crashed (ZeroDivisionError: integer modulo by zero); ``--programs ,`` and
    ``--programs ''`` printed an empty table and exited 0, as if the benchmark had run."""
    result = _bench("--programs", "lstm_lm", "--variants", "eager", option, value)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{option} {value!r} names no" in result.stderr and "give one or more of" in result.stderr
    assert " / " not in result.stderr and result.stdout == "", "a program ran"


@pytest.mark.parametrize("where", ["missing/bench.json", "."])
def test_bench_refuses_a_json_path_it_cannot_write_before_any_program_runs(tmp_path, where):
    """``--json /nonexistent/x.json`` ran the whole benchmark, then crashed writing the file
    (FileNotFoundError): the records were lost. The path is checked first, as ``run --export``'s."""
    result = _bench("--programs", "lstm_lm", "--variants", "eager", "--iters", "4", "--json", str(tmp_path / where))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "--json" in result.stderr and ("no folder" in result.stderr or "is a folder" in result.stderr)
    assert " / " not in result.stderr and result.stdout == "", "a program ran"


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


def test_a_program_named_twice_runs_once(tmp_path):
    """``--programs lstm_lm,lstm_lm`` ran it twice and reported the second run's figures twice."""
    out = tmp_path / "bench.json"
    result = _bench("--programs", "lstm_lm,lstm_lm", "--variants", "eager", "--iters", "4", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert [r["program"] for r in json.loads(out.read_text())] == ["lstm_lm"]
    assert result.stderr.count("lstm_lm / eager") == 1, result.stderr
