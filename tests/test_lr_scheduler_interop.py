"""Interoperability: gradstep schedulers pass torch's isinstance checks without running any
torch scheduler code, mix with torch's schedulers, and drive gradstep and torch optimizers."""

from __future__ import annotations

import inspect
import pickle
import sys
import warnings

import pytest
import torch
import torch.optim.lr_scheduler as T
import torch.optim.swa_utils as TS
from test_lr_scheduler import assert_same, make_optimizer, typical_spec, snapshot

import gradstep
import gradstep.lr_scheduler as G
import gradstep.swa_utils as GS

@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny models: intra-op threads would only spin on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PAIRS = [(getattr(G, n), getattr(T, n)) for n in T.__all__] + [(G._LRScheduler, T._LRScheduler)]
# C-level slots that torch's base class happens to own; they run no torch.optim code.
SLOT_DESCRIPTORS = {"__dict__", "__weakref__"}


def _owner(cls, attr):
    """The class in cls's MRO whose __dict__ provides attr."""
    return next(c for c in cls.__mro__ if attr in vars(c))


# --------------------------------------------------------------------------- class structure


def test_isinstance_checks_of_other_libraries_pass():
    opt = make_optimizer()
    assert isinstance(G.StepLR(opt, 2), T.LRScheduler)
    plateau = G.ReduceLROnPlateau(opt)
    assert isinstance(plateau, T.ReduceLROnPlateau)
    assert isinstance(plateau, T.LRScheduler) and isinstance(plateau, G.LRScheduler)
    assert issubclass(G._LRScheduler, T._LRScheduler)
    for ours, theirs in PAIRS:
        assert issubclass(ours, T.LRScheduler)
    assert issubclass(GS.SWALR, G.LRScheduler) and issubclass(GS.SWALR, T.LRScheduler)


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=lambda c: c.__name__)
def test_every_torch_attribute_resolves_to_gradstep(ours, theirs):
    """All of torch's names exist on our class, and every name of our class (methods,
    properties, static methods, class attributes), walked through the MRO, is defined
    by gradstep or by ``object`` -- never by a torch.optim class."""
    missing = sorted(set(dir(theirs)) - set(dir(ours)))
    assert not missing, f"{ours.__name__} lacks {missing}"
    for attr in dir(ours):
        owner = _owner(ours, attr)
        if owner is object or attr in SLOT_DESCRIPTORS:
            continue
        assert owner.__module__.startswith("gradstep."), (
            f"{ours.__name__}.{attr} resolves to {owner.__module__}.{owner.__qualname__}"
        )


def test_swalr_attributes_resolve_to_gradstep():
    missing = sorted(set(dir(TS.SWALR)) - set(dir(GS.SWALR)))
    assert not missing
    for attr in dir(GS.SWALR):
        owner = _owner(GS.SWALR, attr)
        if owner is not object and attr not in SLOT_DESCRIPTORS:
            assert owner.__module__.startswith("gradstep."), (attr, owner)


# --------------------------------------------------------------------------- no torch code runs


class _TorchSchedulerCodeTracer:
    """Records every Python call executed in torch's lr_scheduler.py or swa_utils.py."""

    WATCHED = {inspect.getsourcefile(T), inspect.getsourcefile(TS)}

    def __enter__(self):
        self.calls = []
        self._previous = sys.getprofile()

        def profile(frame, event, arg):
            if event == "call" and frame.f_code.co_filename in self.WATCHED:
                self.calls.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename})")

        sys.setprofile(profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(self._previous)


def _exercise_schedulers(module):
    """Construct, step, inspect and checkpoint every scheduler of ``module``."""
    for name in T.__all__:
        if name in ("LRScheduler",):
            continue
        opt = make_optimizer("sgd", (0.1, 0.02))
        if name == "SequentialLR":
            sched = module.SequentialLR(opt, [module.ConstantLR(opt), module.StepLR(opt, 2)], [3])
        elif name == "ChainedScheduler":
            sched = module.ChainedScheduler([module.ConstantLR(opt), module.ExponentialLR(opt, 0.9)])
        elif name == "ReduceLROnPlateau":
            sched = module.ReduceLROnPlateau(opt, patience=0)
        else:
            sched = typical_spec(name)(module, opt)
        for i in range(6):
            opt.step()
            if name == "ReduceLROnPlateau":
                sched.step(float(i))
                sched.in_cooldown
            else:
                sched.step()
        if name not in ("SequentialLR", "ChainedScheduler", "ReduceLROnPlateau"):
            sched.step(3)
            sched.get_lr()
        sched.get_last_lr()
        state = sched.state_dict()
        sched.load_state_dict(state)
        pickle.loads(pickle.dumps(sched))


def _exercise_swa(swa):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    for averaged in (
        swa.AveragedModel(model),
        swa.AveragedModel(model, multi_avg_fn=swa.get_ema_multi_avg_fn(0.9), use_buffers=True),
        swa.AveragedModel(model, avg_fn=swa.get_ema_avg_fn(0.9)),
        swa.AveragedModel(model, avg_fn=swa.get_swa_avg_fn()),
        swa.AveragedModel(model, multi_avg_fn=swa.get_swa_multi_avg_fn()),
    ):
        for _ in range(3):
            averaged.update_parameters(model)
        averaged(torch.randn(5, 3))
    swa.update_bn([torch.randn(5, 3), [torch.randn(5, 3), 0]], averaged)
    opt = make_optimizer("sgd", (0.1,))
    sched = swa.SWALR(opt, swa_lr=0.05, anneal_epochs=3, anneal_strategy="linear")
    for _ in range(5):
        opt.step()
        sched.step()
    sched.load_state_dict(sched.state_dict())


def test_no_torch_scheduler_or_swa_code_runs():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _TorchSchedulerCodeTracer() as ours:
            _exercise_schedulers(G)
            _exercise_swa(GS)
        with _TorchSchedulerCodeTracer() as theirs:  # the tracer does see torch's code
            _exercise_schedulers(T)
            _exercise_swa(TS)
    assert ours.calls == []
    assert len(theirs.calls) > 100


# --------------------------------------------------------------------------- mixing with torch


def _lr_trace(build, n=30, kind="sgd"):
    opt = make_optimizer(kind, (0.1, 0.03))
    scheds = build(opt)
    scheds = scheds if isinstance(scheds, list) else [scheds]
    trace = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n):
            opt.step()
            for s in scheds:
                s.step()
            trace.append(snapshot([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]))
    return trace


@pytest.mark.parametrize(
    "outer,inner",
    [(T, G), (G, T)],
    ids=["torch composite of gradstep children", "gradstep composite of torch children"],
)
def test_composites_accept_the_other_librarys_schedulers(outer, inner):
    def sequential(o, m_outer, m_inner):
        children = [m_inner.LinearLR(o, 0.2, 1.0, 4), m_inner.CosineAnnealingWarmRestarts(o, 5), m_inner.StepLR(o, 3)]
        return m_outer.SequentialLR(o, children, [6, 14])

    def chained(o, m_outer, m_inner):
        return m_outer.ChainedScheduler([m_inner.ConstantLR(o, 0.5, 5), m_inner.ExponentialLR(o, 0.95)])

    for build in (sequential, chained):
        expected = _lr_trace(lambda o: build(o, T, T))
        assert_same(_lr_trace(lambda o: build(o, outer, inner)), expected)


def test_torch_and_gradstep_schedulers_chain_on_one_optimizer():
    def build(m1, m2):
        return lambda o: [m1.ExponentialLR(o, 0.9), m2.MultiStepLR(o, [5, 9], 0.5), m1.CosineAnnealingLR(o, 7)]

    expected = _lr_trace(build(T, T))
    assert_same(_lr_trace(build(G, T)), expected)
    assert_same(_lr_trace(build(T, G)), expected)


def test_torch_composites_reject_gradstep_plateau():
    opt = make_optimizer()
    with pytest.raises(ValueError, match="does not support `ReduceLROnPlateau`"):
        T.ChainedScheduler([T.StepLR(opt, 2), G.ReduceLROnPlateau(opt)])


# --------------------------------------------------------------------------- gradstep optimizers


def _train(opt_cls, sched_fn, steps=40, **opt_kwargs):
    """A small regression model trained with a scheduler; returns lrs/momenta and weights."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 4, generator=gen), torch.randn(64, 1, generator=gen)
    opt = opt_cls(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.02}],
        **opt_kwargs,
    )
    sched = sched_fn(opt)
    hyper = []
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
        hyper.append(
            snapshot([{k: g[k] for k in ("lr", "momentum", "betas") if k in g} for g in opt.param_groups])
        )
    return hyper, [p.detach().clone() for p in model.parameters()]


TRAINING_CASES = {
    "SGD OneCycleLR": ("SGD", dict(lr=0.05, momentum=0.9), lambda m, o: m.OneCycleLR(o, [0.1, 0.05], 40)),
    "SGD CyclicLR": ("SGD", dict(lr=0.05, momentum=0.9), lambda m, o: m.CyclicLR(o, 0.01, 0.1, 5)),
    "SGD StepLR": ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True), lambda m, o: m.StepLR(o, 7, 0.5)),
    "SGD SequentialLR": (
        "SGD",
        dict(lr=0.05),
        lambda m, o: m.SequentialLR(o, [m.LinearLR(o, 0.1, 1.0, 5), m.CosineAnnealingLR(o, 35)], [5]),
    ),
    "Adam OneCycleLR betas": ("Adam", dict(lr=0.01), lambda m, o: m.OneCycleLR(o, 0.02, 40, three_phase=True)),
    "Adam CyclicLR betas": ("Adam", dict(lr=0.01), lambda m, o: m.CyclicLR(o, 0.001, 0.01, 4, mode="exp_range", gamma=0.99)),
    "AdamW ExponentialLR": ("AdamW", dict(lr=0.01), lambda m, o: m.ExponentialLR(o, 0.95)),
}


@pytest.mark.parametrize("case", sorted(TRAINING_CASES))
@pytest.mark.parametrize(
    "sched_module,opt_module",
    [(G, gradstep), (T, gradstep), (G, torch.optim)],
    ids=["gradstep sched + gradstep opt", "torch sched + gradstep opt", "gradstep sched + torch opt"],
)
def test_training_with_schedulers_matches_torch(case, sched_module, opt_module):
    """Hyperparameters are identical at every step; weights match to float32 tolerance."""
    opt_name, kwargs, sched_fn = TRAINING_CASES[case]
    expected_hyper, expected_weights = _train(
        getattr(torch.optim, opt_name), lambda o: sched_fn(T, o), **kwargs
    )
    hyper, weights = _train(getattr(opt_module, opt_name), lambda o: sched_fn(sched_module, o), **kwargs)
    assert_same(hyper, expected_hyper)
    for w, e in zip(weights, expected_weights):
        torch.testing.assert_close(w, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in T.__all__ if n not in ("LRScheduler", "SequentialLR", "ChainedScheduler", "ReduceLROnPlateau")])
def test_every_scheduler_on_gradstep_sgd(name):
    """Same lr/momentum sequence on gradstep.SGD as on torch.optim.SGD."""

    def trace(opt_cls):
        params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
        opt = opt_cls([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.02}], lr=0.1, momentum=0.9)
        sched = typical_spec(name)(G, opt)
        out = []
        for _ in range(20):  # OneCycleLR's configuration has 20 steps
            for p in params:
                p.grad = torch.full_like(p, 0.5)
            opt.step()
            sched.step()
            out.append(snapshot([(g["lr"], g["momentum"], g.get("initial_lr")) for g in opt.param_groups]))
        return out, sched.state_dict()

    ours, ours_state = trace(gradstep.SGD)
    theirs, theirs_state = trace(torch.optim.SGD)
    assert_same(ours, theirs)
    assert_same(snapshot(ours_state), snapshot(theirs_state))


@pytest.mark.parametrize("kind", ["onecycle per step", "plateau on a metric", "sequential per epoch"])
def test_lightning_accepts_gradstep_schedulers(kind, tmp_path):
    """Lightning validates schedulers with isinstance(LRScheduler / ReduceLROnPlateau) and
    steps them itself; gradstep's pass and are stepped as torch's would be."""
    pl = pytest.importorskip("lightning.pytorch")

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss, on_epoch=True, on_step=False)
            return loss

        def configure_optimizers(self):
            opt = gradstep.SGD(self.parameters(), lr=0.1, momentum=0.9)
            if kind == "onecycle per step":
                sched = {"scheduler": G.OneCycleLR(opt, 0.5, total_steps=12), "interval": "step"}
            elif kind == "plateau on a metric":
                sched = {"scheduler": G.ReduceLROnPlateau(opt, patience=0), "monitor": "train_loss"}
            else:
                sched = G.SequentialLR(opt, [G.LinearLR(opt, 0.5, 1.0, 2), G.ExponentialLR(opt, 0.5)], [2])
            return {"optimizer": opt, "lr_scheduler": sched}

    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(32, 3, generator=gen), torch.randn(32, 1, generator=gen)),
        batch_size=8,
    )
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Module(), data)
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert type(sched).__module__ == "gradstep.lr_scheduler"
    expected_last_epoch = {"onecycle per step": 12, "plateau on a metric": 3, "sequential per epoch": 3}
    assert sched.last_epoch == expected_last_epoch[kind]
