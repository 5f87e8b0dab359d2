"""One rank of a 2-process gloo job for tests/test_distributed.py.

Usage: ``python _distributed_worker.py SCENARIO[,SCENARIO...] STORE_FILE RANK WORKDIR``.
Each scenario trains a small model the distributed way with gradstep and checks it against a
single-process torch.optim run on the full batch (computed locally on every rank); a mismatch
raises, the rank reports ``<scenario> FAILED`` and exits non-zero without running the rest.
The scenarios share one process group (importing torch dominates their cost), which is always
destroyed on the way out.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
import traceback

import torch
import torch.distributed as dist
import torch.nn as nn

import gradstep

WORLD = 2
STEPS = 5
LR = 0.05
# float32 parity tolerance of tests/parity.py: all-reduce only reorders a two-term sum.
TOL = dict(rtol=1e-5, atol=1e-6)
BACKENDS = [dict(foreach=False), dict(foreach=True), dict(), dict(fused=True)]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def batches(n: int = STEPS, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 8, generator=gen), torch.randn(8, 4, generator=gen)) for _ in range(n)]


def train(model, opt, data, shard: bool) -> None:
    """Mean-squared-error steps; with ``shard`` each rank takes its half of every batch."""
    rank = dist.get_rank()
    for x, y in data:
        if shard:
            x, y = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def reference(data, cls=torch.optim.AdamW, model=None, **kwargs):
    """The single-process run every distributed run must reproduce."""
    model = model or make_model()
    opt = cls(model.parameters(), **kwargs)
    train(model, opt, data, shard=False)
    return model, opt


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def assert_params_match(model, ref_model, what: str) -> None:
    for (name, a), b in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(
            full(a.detach()), b.detach(), **TOL, msg=lambda m: f"{what}: {name}: {m}"
        )


def assert_state_matches(state: dict, ref_state: dict, what: str) -> None:
    """Compare per-parameter optimizer state (DTensors compared as full tensors)."""
    assert state.keys() == ref_state.keys(), (what, state.keys(), ref_state.keys())
    for key in ref_state:
        assert state[key].keys() == ref_state[key].keys(), (what, key)
        for name, ref in ref_state[key].items():
            torch.testing.assert_close(
                full(state[key][name]), full(ref), **TOL, msg=lambda m: f"{what}: {key}.{name}: {m}"
            )


# ------------------------------------------------------------------ scenarios


def ddp(workdir: str) -> None:
    """DDP averages gradients; gradstep.AdamW then matches full-batch torch.optim.AdamW."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    from torch.nn.parallel import DistributedDataParallel as DDP

    data = batches()
    ref_model, ref_opt = reference(data, lr=LR)
    for kwargs in BACKENDS:
        model = DDP(make_model())
        opt = gradstep.AdamW(model.parameters(), lr=LR, **kwargs)
        train(model, opt, data, shard=True)
        assert_params_match(model.module, ref_model, f"DDP {kwargs}")
        assert_state_matches(opt.state_dict()["state"], ref_opt.state_dict()["state"], f"DDP {kwargs}")
        # DCP's helpers work on DDP models too (keys become parameter names).
        osd = get_optimizer_state_dict(model, opt)
        assert set(osd["state"]) == {f"{n}" for n, _ in model.module.named_parameters()}, osd["state"].keys()


def zero(workdir: str) -> None:
    """ZeroRedundancyOptimizer(optimizer_class=gradstep.AdamW): train, consolidate, reload."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    data = batches(STEPS + 2)
    ref_model, ref_opt = reference(data[:STEPS], lr=LR, weight_decay=0.1)
    for kwargs in [dict(foreach=False), dict(), dict(parameters_as_bucket_view=True)]:
        model = DDP(make_model())
        opt = ZeroRedundancyOptimizer(
            model.parameters(), optimizer_class=gradstep.AdamW, lr=LR, weight_decay=0.1, **kwargs
        )
        assert isinstance(opt.optim, gradstep.AdamW)
        train(model, opt, data[:STEPS], shard=True)
        assert_params_match(model.module, ref_model, f"ZeRO {kwargs}")
        opt.consolidate_state_dict(to=0)
        holder = [opt.state_dict() if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(holder, src=0)
        sd = holder[0]
        assert_state_matches(sd["state"], ref_opt.state_dict()["state"], f"ZeRO {kwargs} consolidated")
        # Resume from the consolidated checkpoint in a fresh ZeRO and train on.
        resumed = DDP(make_model())
        resumed.module.load_state_dict(model.module.state_dict())
        opt2 = ZeroRedundancyOptimizer(
            resumed.parameters(), optimizer_class=gradstep.AdamW, lr=LR, weight_decay=0.1, **kwargs
        )
        opt2.load_state_dict(sd)
        train(resumed, opt2, data[STEPS:], shard=True)
        train(ref_model, ref_opt, data[STEPS:], shard=False)
        assert_params_match(resumed.module, ref_model, f"ZeRO {kwargs} resumed")
        ref_model, ref_opt = reference(data[:STEPS], lr=LR, weight_decay=0.1)


def _fsdp2(model: nn.Module) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _algorithms() -> list[tuple[str, dict]]:
    """Every gradstep algorithm with a torch.optim twin taking dense gradients and no closure."""
    extra = {"SGD": dict(momentum=0.9), "Muon": None, "LBFGS": None, "SparseAdam": None}
    out = []
    for name in gradstep.__all__:
        cls = getattr(gradstep, name)
        if not (isinstance(cls, type) and issubclass(cls, gradstep.Optimizer)):
            continue
        if cls is gradstep.Optimizer or not hasattr(torch.optim, name) or extra.get(name, {}) is None:
            continue
        out.append((name, dict(lr=0.01, **extra.get(name, {}))))
    return out


def fsdp2(workdir: str) -> None:
    """FSDP2 (DTensor parameters, gloo on CPU) with every backend and every algorithm."""
    from torch.distributed.tensor import DTensor

    data = batches()
    ref_model, ref_opt = reference(data, lr=LR)
    for kwargs in BACKENDS:
        model = _fsdp2(make_model())
        opt = gradstep.AdamW(model.parameters(), lr=LR, **kwargs)
        train(model, opt, data, shard=True)
        assert_params_match(model, ref_model, f"FSDP2 AdamW {kwargs}")
        p = next(model.parameters())
        assert isinstance(p, DTensor) and isinstance(opt.state[p]["exp_avg"], DTensor)
        assert type(opt.state[p]["step"]) is torch.Tensor
        assert_state_matches(
            opt.state_dict()["state"], ref_opt.state_dict()["state"], f"FSDP2 AdamW {kwargs}"
        )
    _dtensor_layouts(data)
    for name, kwargs in _algorithms():
        ref_model, _ = reference(data, cls=getattr(torch.optim, name), **kwargs)
        for backend in (dict(foreach=False), dict()):
            model = _fsdp2(make_model())
            opt = getattr(gradstep, name)(model.parameters(), **kwargs, **backend)
            train(model, opt, data, shard=True)
            assert_params_match(model, ref_model, f"FSDP2 {name} {backend}")


def _dtensor_layouts(data) -> None:
    """Replicated DTensors (tensor parallel keeps such params) take the local-shard path; a
    gradient laid out unlike its parameter falls back to DTensor ops on the reference backend."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    gen = torch.Generator().manual_seed(3)
    full = torch.randn(4, 3, generator=gen)
    grads = [torch.randn(4, 3, generator=gen) for _ in range(3)]
    for p_layout, g_layout in [(Replicate(), Replicate()), (Shard(0), Shard(0)), (Shard(0), Replicate())]:
        for kwargs in BACKENDS:
            ref = nn.Parameter(full.clone())
            ref_opt = torch.optim.AdamW([ref], lr=LR)
            p = nn.Parameter(distribute_tensor(full.clone(), mesh, [p_layout]))
            opt = gradstep.AdamW([p], lr=LR, **kwargs)
            for g in grads:
                ref.grad, p.grad = g.clone(), distribute_tensor(g.clone(), mesh, [g_layout])
                ref_opt.step()
                opt.step()
            torch.testing.assert_close(p.full_tensor().detach(), ref.detach(), **TOL,
                                       msg=lambda m: f"DTensor {p_layout}/{g_layout} {kwargs}: {m}")


def dcp(workdir: str) -> None:
    """torch.distributed.checkpoint: get/set_optimizer_state_dict and save/load on FSDP2."""
    import torch.distributed.checkpoint as dcp_io
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    data = batches(STEPS + 2)
    head, tail = data[:3], data[3:]

    def trained(cls):
        model = _fsdp2(make_model())
        opt = cls(model.parameters(), lr=LR)
        train(model, opt, head, shard=True)
        return model, opt

    def fresh(cls, weights):
        model = _fsdp2(make_model())
        set_model_state_dict(model, weights)
        return model, cls(model.parameters(), lr=LR)

    model, opt = trained(gradstep.AdamW)
    tmodel, topt = trained(torch.optim.AdamW)
    osd, tosd = get_optimizer_state_dict(model, opt), get_optimizer_state_dict(tmodel, topt)
    assert osd["param_groups"] == tosd["param_groups"], (osd["param_groups"], tosd["param_groups"])
    assert_state_matches(osd["state"], tosd["state"], "DCP state vs torch")

    full_opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full_sd = _cloned(get_optimizer_state_dict(model, opt, options=full_opts))
    if dist.get_rank() == 0:
        assert not any(isinstance(v, torch.Tensor) and hasattr(v, "placements")
                       for st in full_sd["state"].values() for v in st.values())

    weights = {k: v.detach().clone() for k, v in get_model_state_dict(model).items()}
    ckpt = os.path.join(workdir, "checkpoint")
    dcp_io.save({"optim": osd}, checkpoint_id=ckpt)

    # Each way of resuming starts from an empty optimizer, so set_optimizer_state_dict first
    # runs DCP's state initialisation (a zero-gradient, lr=0 step) and then loads.
    osd = _cloned(osd)  # the live state dict aliases the optimizer's state, which trains on
    resumes = {"sharded": lambda m, o: osd, "torch's": lambda m, o: tosd}
    resumes["full"] = lambda m, o: full_sd
    resumes["from disk"] = lambda m, o: _dcp_load(dcp_io, ckpt, m, o)
    train(model, opt, tail, shard=True)
    for what, source in resumes.items():
        rmodel, ropt = fresh(gradstep.AdamW, weights)
        options = None
        if what == "full":  # only rank 0 holds the full state dict; it broadcasts it
            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_optimizer_state_dict(rmodel, ropt, source(rmodel, ropt), options=options)
        steps = {float(st["step"]) for st in ropt.state.values()}
        assert steps == {float(len(head))}, (what, steps)
        train(rmodel, ropt, tail, shard=True)
        for (n, a), b in zip(rmodel.named_parameters(), model.parameters()):
            torch.testing.assert_close(full(a.detach()), full(b.detach()), **TOL,
                                       msg=lambda m: f"DCP resume {what}: {n}: {m}")


def _cloned(tree):
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, tree)


def _dcp_load(dcp_io, ckpt, model, opt):
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    target = {"optim": get_optimizer_state_dict(model, opt)}
    dcp_io.load(target, checkpoint_id=ckpt)
    return target["optim"]


SCENARIOS = {f.__name__: f for f in (ddp, zero, fsdp2, dcp)}


def main() -> None:
    """Run the comma-separated scenarios in order; stop at the first failure."""
    names, store, rank, workdir = sys.argv[1:5]
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=int(rank),
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=30),
    )
    failed = False
    try:
        for name in names.split(","):
            start = time.perf_counter()
            try:
                SCENARIOS[name](os.path.join(workdir, name))
                dist.barrier()
            except Exception:
                traceback.print_exc()
                print(f"rank {rank}: {name} FAILED", flush=True)
                failed = True
                break
            print(f"rank {rank}: {name} OK in {time.perf_counter() - start:.1f} s", flush=True)
    finally:
        dist.destroy_process_group()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
