"""gradstep in the PyTorch ecosystem: torch's schedulers, AMP's GradScaler, gradient clipping,
torch.compile, PyTorch Lightning and Hugging Face transformers.

Every test runs the same loop twice, once with a gradstep optimizer and once with its
torch.optim twin, and asks for the same numbers (float32 parity tolerance of tests/parity.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings

import pytest
import torch
import torch.nn as nn
from torch.optim import lr_scheduler as torch_sched

import gradstep

TOL = dict(rtol=1e-5, atol=1e-6)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def batches(n: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)) for _ in range(n)]


def loss_of(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def assert_models_close(a: nn.Module, b: nn.Module, **tol) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, **(tol or TOL), msg=lambda m: f"{name}: {m}")


def twins(make_opt, seed: int = 0):
    """(model, optimizer) for gradstep and for torch.optim, with identical weights."""
    out = []
    for lib in (gradstep, torch.optim):
        model = make_model(seed)
        out.append((model, make_opt(lib, model)))
    return out


# ------------------------------------------------------------------ torch's LR schedulers

TORCH_SCHEDULERS = {
    "StepLR": lambda o: torch_sched.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda o: torch_sched.MultiStepLR(o, milestones=[2, 5, 9], gamma=0.3),
    "ExponentialLR": lambda o: torch_sched.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda o: torch_sched.CosineAnnealingLR(o, T_max=5, eta_min=1e-4),
    "CosineAnnealingWarmRestarts": lambda o: torch_sched.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2),
    "LinearLR": lambda o: torch_sched.LinearLR(o, start_factor=0.1, total_iters=4),
    "ConstantLR": lambda o: torch_sched.ConstantLR(o, factor=0.5, total_iters=3),
    "PolynomialLR": lambda o: torch_sched.PolynomialLR(o, total_iters=8, power=2.0),
    "LambdaLR": lambda o: torch_sched.LambdaLR(o, lambda e: 1 / (1 + e)),
    "MultiplicativeLR": lambda o: torch_sched.MultiplicativeLR(o, lambda e: 0.95),
    "CyclicLR": lambda o: torch_sched.CyclicLR(o, base_lr=1e-3, max_lr=1e-2, step_size_up=3),
    "OneCycleLR": lambda o: torch_sched.OneCycleLR(o, max_lr=0.05, total_steps=12),
    "ReduceLROnPlateau": lambda o: torch_sched.ReduceLROnPlateau(o, patience=1, factor=0.5),
    "SequentialLR": lambda o: torch_sched.SequentialLR(
        o,
        [torch_sched.LinearLR(o, start_factor=0.2, total_iters=3), torch_sched.ExponentialLR(o, 0.8)],
        milestones=[3],
    ),
    "ChainedScheduler": lambda o: torch_sched.ChainedScheduler(
        [torch_sched.ConstantLR(o, factor=0.5, total_iters=4), torch_sched.ExponentialLR(o, 0.9)]
    ),
}


@pytest.mark.parametrize("name", list(TORCH_SCHEDULERS))
@pytest.mark.parametrize("algorithm", ["AdamW", "SGD"])
def test_torch_lr_scheduler_drives_gradstep(name, algorithm):
    """Same lrs (and cycled momentum/betas), same weights, same scheduler state, no warning."""
    if not hasattr(gradstep, algorithm):
        pytest.skip(f"gradstep.{algorithm} does not exist yet")
    kwargs = dict(lr=0.01, momentum=0.9) if algorithm == "SGD" else dict(lr=0.01)
    runs = []
    for (model, opt), lib in zip(twins(lambda lib, m: getattr(lib, algorithm)(m.parameters(), **kwargs)), "gt"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
            sched = TORCH_SCHEDULERS[name](opt)
            trace = []
            for batch in batches(12):
                opt.zero_grad()
                loss = loss_of(model, batch)
                loss.backward()
                opt.step()
                sched.step(loss.item()) if name == "ReduceLROnPlateau" else sched.step()
                group = opt.param_groups[0]
                trace.append((group["lr"], group.get("betas"), group.get("momentum")))
        runs.append((model, trace, sched.state_dict()))
    (gm, gtrace, gsd), (tm, ttrace, tsd) = runs
    assert gtrace == ttrace
    assert_models_close(gm, tm)
    assert gsd.keys() == tsd.keys()
    for key in tsd:
        if key not in ("_schedulers", "lr_lambdas", "_scale_fn_ref", "_scale_fn_custom"):
            assert gsd[key] == tsd[key], key


# ------------------------------------------------------------------ AMP: GradScaler


def _amp_run(lib, fused, dtype, unscale_and_clip, poison, algorithm="AdamW"):
    model = make_model()
    opt = getattr(lib, algorithm)(model.parameters(), lr=0.01, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    history = []
    for i, batch in enumerate(batches(7)):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            out = model(batch[0])
        loss = nn.functional.mse_loss(out.float(), batch[1])
        scaler.scale(loss).backward()
        if i in poison:
            model[0].weight.grad[0, 0] = poison[i]
        if unscale_and_clip:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
        before = [p.detach().clone() for p in model.parameters()]
        scaler.step(opt)
        scaler.update()
        skipped = all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
        steps = sorted({float(st["step"]) for st in opt.state.values()})
        history.append((scaler.get_scale(), skipped, steps))
    return model, history


@pytest.mark.parametrize("fused", [None, True], ids=["default", "fused"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("unscale_and_clip", [False, True], ids=["step", "unscale-clip-step"])
@pytest.mark.parametrize(
    "poison",
    [{0: float("inf")}, {2: float("inf"), 4: float("nan")}],
    ids=["inf-on-first-step", "inf-and-nan-later"],
)
def test_grad_scaler_skips_inf_nan_steps_like_torch(fused, dtype, unscale_and_clip, poison):
    """torch.amp.GradScaler("cpu"): steps with inf/NaN gradients are skipped, the scale backs
    off, and everything else matches torch.optim, on the default and the fused path."""
    g_model, g_hist = _amp_run(gradstep, fused, dtype, unscale_and_clip, poison)
    t_model, t_hist = _amp_run(torch.optim, fused, dtype, unscale_and_clip, poison)
    assert g_hist == t_hist
    for i in poison:
        assert g_hist[i][1], f"step {i} was not skipped"
    assert_models_close(g_model, t_model)


@pytest.mark.parametrize("algorithm", ["Adam", "SGD", "Adagrad"])
@pytest.mark.parametrize("unscale_and_clip", [False, True], ids=["step", "unscale-clip-step"])
def test_grad_scaler_with_other_fused_algorithms(algorithm, unscale_and_clip):
    """The other algorithms torch.optim has a fused kernel for, through the same protocol."""
    if not hasattr(gradstep, algorithm):
        pytest.skip(f"gradstep.{algorithm} does not exist yet")
    poison = {0: float("inf"), 3: float("nan")}
    runs = [_amp_run(lib, True, torch.bfloat16, unscale_and_clip, poison, algorithm)
            for lib in (gradstep, torch.optim)]
    assert runs[0][1] == runs[1][1]
    assert_models_close(runs[0][0], runs[1][0])


def test_fused_optimizer_declares_amp_scaling_support():
    opt = gradstep.AdamW(make_model().parameters(), fused=True)
    assert opt._step_supports_amp_scaling
    assert not getattr(gradstep.AdamW(make_model().parameters()), "_step_supports_amp_scaling", False)


# ------------------------------------------------------------------ gradient clipping


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("clip", ["norm", "value"])
def test_clip_grad_then_step_matches_torch(foreach, clip):
    runs = twins(lambda lib, m: lib.AdamW(m.parameters(), lr=0.05, foreach=foreach))
    for model, opt in runs:
        for batch in batches(8):
            opt.zero_grad()
            loss_of(model, batch).backward()
            if clip == "norm":
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.1, foreach=foreach)
            else:
                nn.utils.clip_grad_value_(model.parameters(), clip_value=0.01, foreach=foreach)
            opt.step()
    assert_models_close(runs[0][0], runs[1][0])


# ------------------------------------------------------------------ torch.compile


def test_torch_compile_training_step_matches_eager():
    """The model compiles; gradstep's step runs eagerly behind a graph break (it is marked
    dynamo-disabled), once per step and without recompiling as the step count changes."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    (cm, copt), (em, eopt) = twins(lambda lib, m: gradstep.AdamW(m.parameters(), lr=0.05))
    tm = make_model()
    topt = torch.optim.AdamW(tm.parameters(), lr=0.05)

    def train_step(model, opt, batch):
        loss = loss_of(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    compiled = torch.compile(train_step, backend="aot_eager")
    graphs = []
    for batch in batches(6):
        compiled(cm, copt, batch)
        train_step(em, eopt, batch)
        train_step(tm, topt, batch)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] == graphs[-1], f"recompiled while stepping: {graphs}"
    assert_models_close(cm, em)
    assert_models_close(cm, tm)
    torch._dynamo.reset()


def test_torch_compile_of_step_alone_runs_eagerly():
    """``torch.compile(opt.step)`` (torch's compiled-optimizer recipe) gives eager results."""
    torch._dynamo.reset()
    (cm, copt), (tm, topt) = twins(lambda lib, m: lib.Adam(m.parameters(), lr=0.05))
    step = torch.compile(copt.step, backend="eager")
    for batch in batches(4):
        for model, opt, do_step in ((cm, copt, step), (tm, topt, topt.step)):
            opt.zero_grad()
            loss_of(model, batch).backward()
            do_step()
    assert_models_close(cm, tm)
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop"])
@pytest.mark.parametrize("lr", [0.05, torch.tensor(0.05)], ids=["float lr", "tensor lr"])
def test_optimizer_built_inside_compiled_code_matches_torch(name, lr):
    """An optimizer constructed inside a compiled function (as torch's dynamo test-suite does)
    is complete and steps like torch's; a tensor lr (a data-dependent check) included."""
    torch._dynamo.reset()
    results = []
    for lib in (gradstep, torch.optim):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(3, 2)) for _ in range(2)]

        def build_and_step(params=params, lib=lib):
            opt = getattr(lib, name)(params, lr=lr.clone() if torch.is_tensor(lr) else lr)
            for p in params:
                p.grad = torch.ones_like(p)
            opt.step()
            return opt

        opt = torch.compile(build_and_step, backend="eager")()
        results.append((opt.state_dict(), [p.detach().clone() for p in params]))
    (ours_sd, ours), (theirs_sd, theirs) = results
    assert [sorted(g) for g in ours_sd["param_groups"]] == [sorted(g) for g in theirs_sd["param_groups"]]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    torch._dynamo.reset()


# ------------------------------------------------------------------ PyTorch Lightning


def _gradstep_lr_scheduler():
    if importlib.util.find_spec("gradstep.lr_scheduler") is None:
        return None
    module = importlib.import_module("gradstep.lr_scheduler")
    return module if hasattr(module, "StepLR") else None


SCHEDULER_SOURCES = ["torch", "gradstep"]


@pytest.mark.parametrize("sched_source", SCHEDULER_SOURCES)
def test_lightning_trains_checkpoints_and_resumes(sched_source, tmp_path):
    L = pytest.importorskip("lightning")
    from torch.utils.data import DataLoader, TensorDataset

    sched_module = torch_sched if sched_source == "torch" else _gradstep_lr_scheduler()
    if sched_module is None:
        pytest.skip("gradstep.lr_scheduler is not available yet")

    class Module(L.LightningModule):
        def __init__(self, lib):
            super().__init__()
            self.lib = lib
            self.net = make_model()

        def training_step(self, batch, batch_idx):
            return loss_of(self.net, batch)

        def configure_optimizers(self):
            opt = self.lib.AdamW(self.parameters(), lr=0.02)
            sched = sched_module.StepLR(opt, step_size=2, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    data = batches(1)[0]
    loader = DataLoader(TensorDataset(*[torch.cat([t] * 4) for t in data]), batch_size=8)
    settings = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )

    def fit(lib, max_steps, ckpt_in=None, ckpt_out=None):
        module = Module(lib)
        trainer = L.Trainer(max_steps=max_steps, **settings)
        resumed = {}

        class Capture(L.Callback):
            def on_train_start(self, trainer, pl_module):
                opt = trainer.optimizers[0]
                resumed["type"] = type(opt)
                resumed["steps"] = {float(st["step"]) for st in opt.state.values()}
                resumed["lr"] = opt.param_groups[0]["lr"]

        trainer.callbacks.append(Capture())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, loader, ckpt_path=ckpt_in)
        if ckpt_out:
            trainer.save_checkpoint(ckpt_out)
        return module, trainer, resumed

    ckpt = tmp_path / "half.ckpt"
    g_half, g_trainer, _ = fit(gradstep, 3, ckpt_out=ckpt)
    assert isinstance(g_trainer.optimizers[0], gradstep.AdamW)
    g_full, g_trainer, resumed = fit(gradstep, 6, ckpt_in=ckpt)
    assert resumed["type"] is gradstep.AdamW
    assert resumed["steps"] == {3.0}, "optimizer state was not restored"
    assert resumed["lr"] == 0.02 * 0.5, "scheduler state was not restored"
    t_straight, _, _ = fit(torch.optim, 6)
    g_straight, _, _ = fit(gradstep, 6)
    assert_models_close(g_full.net, t_straight.net)
    assert_models_close(g_full.net, g_straight.net)
    assert g_trainer.optimizers[0].param_groups[0]["lr"] == 0.02 * 0.5**3


# ------------------------------------------------------------------ Hugging Face transformers

HF_SCHEDULERS = {
    "linear": {},
    "cosine": {},
    "cosine_with_restarts": {},
    "polynomial": {},
    "constant": {},
    "constant_with_warmup": {},
    "inverse_sqrt": {},
    "reduce_lr_on_plateau": {},
    "cosine_with_min_lr": dict(min_lr=1e-4),
    "cosine_warmup_with_min_lr": dict(min_lr=1e-4),
    "warmup_stable_decay": dict(num_decay_steps=4),
}


@pytest.mark.parametrize("name", list(HF_SCHEDULERS))
def test_transformers_get_scheduler(name):
    transformers = pytest.importorskip("transformers")
    traces = []
    for model, opt in twins(lambda lib, m: lib.AdamW(m.parameters(), lr=0.01)):
        sched = transformers.get_scheduler(
            name, opt, num_warmup_steps=3, num_training_steps=12,
            scheduler_specific_kwargs=HF_SCHEDULERS[name] or None,
        )
        trace = []
        for batch in batches(12):
            opt.zero_grad()
            loss = loss_of(model, batch)
            loss.backward()
            opt.step()
            sched.step(loss.item()) if name == "reduce_lr_on_plateau" else sched.step()
            trace.append(opt.param_groups[0]["lr"])
        traces.append((model, trace))
    (gm, gtrace), (tm, ttrace) = traces
    assert gtrace == ttrace
    assert_models_close(gm, tm)


def test_every_transformers_scheduler_is_covered():
    transformers = pytest.importorskip("transformers")
    names = {s.value for s in transformers.SchedulerType} - {"greedy"}  # greedy: a Trainer mode
    assert names <= set(HF_SCHEDULERS), names - set(HF_SCHEDULERS)



class _TokenDataset(torch.utils.data.Dataset):
    """64 random token sequences with binary labels (no download)."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 100, (64, 12), generator=gen)
        self.y = torch.randint(0, 2, (64,), generator=gen)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.y[i]}


def _hf_train(lib, outdir, resume_from=None):
    """A tiny BERT trained 8 steps by transformers' Trainer with ``lib``'s AdamW and LambdaLR,
    gradient clipping on, a checkpoint every 4 steps; returns the final parameters."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32,
    )
    model = transformers.BertForSequenceClassification(config)
    opt = lib.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sched = lib.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    args = transformers.TrainingArguments(
        output_dir=str(outdir), max_steps=8, per_device_train_batch_size=8, save_steps=4,
        logging_steps=100, report_to=[], use_cpu=True, seed=0, data_seed=0, max_grad_norm=1.0,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_TokenDataset(),
                                   optimizers=(opt, sched))
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return [p.detach().clone() for p in model.parameters()]


def test_transformers_trainer_trains_checkpoints_and_resumes(tmp_path):
    """Trainer with gradstep's AdamW matches torch.optim's, and resumes from its own and from
    torch.optim's checkpoint (optimizer.pt and scheduler.pt) to the same parameters."""
    pytest.importorskip("accelerate")  # Trainer needs it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = _hf_train(torch.optim, tmp_path / "torch")
        got = _hf_train(gradstep, tmp_path / "gradstep")
        resumed = _hf_train(gradstep, tmp_path / "gradstep", tmp_path / "gradstep" / "checkpoint-4")
        crossed = _hf_train(gradstep, tmp_path / "torch", tmp_path / "torch" / "checkpoint-4")
    for params in (got, resumed, crossed):
        for a, b in zip(params, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
