"""gradstep under torch.distributed: DDP, ZeRO, FSDP2 (DTensor) and distributed checkpoints.

Each scenario runs as two real processes on the gloo backend (CPU), rendezvousing through a
file store, so no port has to be found. The ranks do the checking themselves (see
_distributed_worker.py) and exit non-zero on any mismatch; a hung job is killed at its deadline.
Select or skip these with ``-m distributed`` / ``-m "not distributed"``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()),
        reason="torch.distributed with gloo is not available",
    ),
]

WORKER = Path(__file__).with_name("_distributed_worker.py")
WORLD = 2
DEADLINE_S = 150  # for the whole job; a healthy run of all scenarios takes ~20 s
SCENARIOS = {
    "ddp": "DDP-AdamW-every-backend-matches-single-process",
    "zero": "ZeroRedundancyOptimizer-train-consolidate-resume",
    "fsdp2": "FSDP2-DTensor-every-backend-and-algorithm",
    "dcp": "DCP-get-set-optimizer-state-dict-save-load",
}


def run_ranks(scenarios: list[str], workdir: Path) -> tuple[list[str], list[int]]:
    """Run both ranks over ``scenarios``; their outputs and exit codes (killed: -9)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # both ranks are on this machine
    for name in scenarios:
        (workdir / name).mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(WORKER), ",".join(scenarios), str(workdir / "store")]
    procs = [
        subprocess.Popen(
            command + [str(rank), str(workdir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(WORLD)
    ]
    outputs = []
    try:
        for proc in procs:
            try:
                out, _ = proc.communicate(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                for other in procs:
                    other.kill()
                out, _ = proc.communicate()
                out += f"\n[killed after {DEADLINE_S} s]"
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs, [proc.returncode for proc in procs]


@pytest.fixture(scope="module")
def job(request, tmp_path_factory):
    """One 2-rank job for every scenario selected in this session (imports dominate the cost)."""
    selected = {
        item.callspec.params["scenario"]
        for item in request.session.items
        if item.path == Path(__file__) and hasattr(item, "callspec")
    }
    scenarios = [name for name in SCENARIOS if name in selected]
    return run_ranks(scenarios, tmp_path_factory.mktemp("distributed"))


@pytest.mark.parametrize("scenario", list(SCENARIOS), ids=list(SCENARIOS.values()))
def test_distributed(scenario, job):
    outputs, codes = job
    for rank, out in enumerate(outputs):
        if f"rank {rank}: {scenario} OK" not in out:
            pytest.fail(
                f"{scenario}: rank {rank} did not pass (exit code {codes[rank]})\n"
                f"{out[-6000:]}"
            )
