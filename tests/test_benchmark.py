"""``gradstep bench``: the benchmark runs, reports every implementation and writes JSON."""

import json

import pytest

from gradstep import benchmark, cli
from gradstep.backends.cpu import available

pytestmark = pytest.mark.skipif(not available(), reason="no C compiler")


def test_traffic_model_counts_reads_and_writes():
    import torch

    adam = benchmark.traffic(benchmark.kernel_spec("Adam", torch.float32))
    assert adam["reads"] == [0, 1, 2, 3] and adam["writes"] == [0, 2, 3]
    assert adam["bytes_per_param"] == 28
    assert benchmark.traffic(benchmark.kernel_spec("Adam", torch.bfloat16))["bytes_per_param"] == 14
    assert benchmark.traffic(benchmark.kernel_spec("SGD", torch.float32))["bytes_per_param"] == 20


def test_bench_command_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = cli.main(["bench", "--quick", "--algorithms", "SGD", "Adam", "--sets", "overhead",
                     "--repeats", "1", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "overhead" in table and "us/tensor" in table and "SGD" in table
    result = json.loads(out.read_text())
    impls = {(r["algorithm"], r["impl"]) for r in result["rows"]}
    assert ("Adam", "torch fused") in impls and ("SGD", "roofline") in impls
    assert result["machine"]["bandwidth_gbs"] > 0


def test_bench_rejects_unsupported_device(capsys):
    assert cli.main(["bench", "--device", "mps"]) == 2
    assert "not supported" in capsys.readouterr().err
