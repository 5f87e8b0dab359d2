"""gradstep.swa_utils against torch.optim.swa_utils: SWALR schedules, AveragedModel
averages (SWA, EMA, custom), update_bn, checkpoints, and the documented recipes end to end."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.optim.lr_scheduler as T
import torch.optim.swa_utils as TS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_lr_scheduler import (
    Spec,
    assert_resume_parity,
    assert_twin,
    opt_specs,
    steps,
)

import gradstep
import gradstep.lr_scheduler as G
import gradstep.swa_utils as GS

LR_MODULE = {TS: T, GS: G}


@pytest.fixture(autouse=True)
def _single_thread():
    """These models are tiny: intra-op threads only spin (seconds of CPU on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- SWALR


def test_public_names():
    assert GS.__all__ == TS.__all__


swalr_specs = st.builds(
    lambda swa_lr, epochs, strategy: Spec(
        "SWALR", swa_lr=swa_lr, anneal_epochs=epochs, anneal_strategy=strategy
    ),
    st.one_of(st.floats(1e-3, 0.5), st.lists(st.floats(1e-3, 0.5), min_size=1, max_size=1)),
    st.integers(0, 25),
    st.sampled_from(["cos", "linear"]),
)


def _fit_groups(spec, opt_spec):
    n = len(opt_spec[1])
    if isinstance(spec.kwargs["swa_lr"], list):
        spec.kwargs["swa_lr"] = (spec.kwargs["swa_lr"] * n)[:n]
    return spec


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(opt_specs(), swalr_specs, st.integers(1, 60))
def test_swalr_matches_torch(opt_spec, spec, n):
    assert_twin(_fit_groups(spec, opt_spec), steps(n), opt_spec, oracle=TS, ours=GS)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(opt_specs(), swalr_specs, st.integers(0, 29))
def test_swalr_state_dict_resume_and_cross_load(opt_spec, spec, k):
    spec = _fit_groups(spec, opt_spec)
    assert_resume_parity(spec, steps(30), opt_spec, 2 * k, oracle=TS, ours=GS)


def test_swalr_after_another_scheduler_as_documented():
    """MultiplicativeLR until swa_start, then SWALR, both on one optimizer (the docstring)."""
    traces = []
    for swa in (TS, GS):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.5)
        scheduler = LR_MODULE[swa].MultiplicativeLR(opt, lr_lambda=lambda epoch: 0.9)
        swa_scheduler = swa.SWALR(opt, anneal_strategy="linear", anneal_epochs=20, swa_lr=0.05)
        lrs = []
        for epoch in range(60):
            opt.step()
            (swa_scheduler if epoch > 30 else scheduler).step()
            lrs.append(opt.param_groups[0]["lr"])
        traces.append(lrs)
    assert traces[1] == traces[0]
    assert traces[1][-1] == pytest.approx(0.05)


def test_swalr_tensor_lr_and_zero_anneal_epochs():
    for anneal_epochs in (0, 1, 4):
        assert_twin(
            Spec("SWALR", 0.05, anneal_epochs=anneal_epochs),
            steps(8),
            ("adam", (0.5, 0.2), torch.float64),
            oracle=TS,
            ours=GS,
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(swa_lr=0.1, anneal_strategy="foo"),
        dict(swa_lr=0.1, anneal_epochs=-1),
        dict(swa_lr=0.1, anneal_epochs=2.0),
        dict(swa_lr=[0.1, 0.2, 0.3]),
    ],
)
def test_swalr_errors_match_torch(kwargs):
    outcomes = []
    for swa in (TS, GS):
        params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
        opt = torch.optim.SGD([{"params": [p]} for p in params], lr=0.1)
        with pytest.raises(Exception) as info:
            swa.SWALR(opt, **kwargs)
        outcomes.append((info.type, str(info.value)))
    assert outcomes[0] == outcomes[1]


# --------------------------------------------------------------------------- averaging functions


@pytest.mark.parametrize("name", ["get_ema_multi_avg_fn", "get_ema_avg_fn"])
@pytest.mark.parametrize("decay", [-0.1, 1.5])
def test_invalid_decay(name, decay):
    for swa in (TS, GS):
        with pytest.raises(ValueError, match=f"Invalid decay value {decay} provided"):
            getattr(swa, name)(decay)


def _tensors(dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(5, 3, generator=gen, dtype=torch.float64) * 10).to(dtype),
        (torch.randn(7, generator=gen, dtype=torch.float64) * 10).to(dtype),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.int64])
@pytest.mark.parametrize("n_averaged", [3, "tensor"])
def test_multi_avg_fns_match_torch(dtype, n_averaged):
    n = torch.tensor(3) if n_averaged == "tensor" else n_averaged
    for factory, args in (("get_ema_multi_avg_fn", (0.9,)), ("get_swa_multi_avg_fn", ())):
        results = []
        for swa in (TS, GS):
            averaged, current = _tensors(dtype, 0), _tensors(dtype, 1)
            if dtype == torch.int64 and factory == "get_swa_multi_avg_fn":
                averaged = [a.to(torch.float32) for a in averaged]  # addcdiv_ needs floats
                current = [c.to(torch.float32) for c in current]
            getattr(swa, factory)(*args)(averaged, current, n)
            results.append(averaged)
        for ours, theirs in zip(results[1], results[0]):
            assert torch.equal(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_single_avg_fns_match_torch(dtype):
    for factory, args in (("get_ema_avg_fn", (0.75,)), ("get_swa_avg_fn", ())):
        outs = [
            getattr(swa, factory)(*args)(_tensors(dtype, 0)[0], _tensors(dtype, 1)[0], torch.tensor(4))
            for swa in (TS, GS)
        ]
        assert torch.equal(outs[1], outs[0])


# --------------------------------------------------------------------------- AveragedModel


class Net(torch.nn.Module):
    """Conv + BatchNorm + Linear: parameters, float buffers and an integer buffer."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 6 * 6, 3)
        self.bn1d = torch.nn.BatchNorm1d(3, momentum=0.3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.bn1d(self.fc(x.flatten(1)))


def _data(n_batches=6, seed=0, with_targets=True):
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        x = torch.randn(8, 1, 8, 8, generator=gen)
        y = torch.randint(0, 3, (8,), generator=gen)
        batches.append((x, y) if with_targets else x)
    return batches


def _perturb(model, step):
    """A deterministic stand-in for training: move every parameter and buffer."""
    gen = torch.Generator().manual_seed(100 + step)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        model.train()
        model(torch.randn(8, 1, 8, 8, generator=gen))  # updates BN running stats


def _full_state(averaged):
    return {k: v.clone() for k, v in averaged.state_dict().items()}


AVERAGING = {
    "swa default": lambda swa: {},
    "ema multi": lambda swa: dict(multi_avg_fn=swa.get_ema_multi_avg_fn(0.9)),
    "ema single": lambda swa: dict(avg_fn=swa.get_ema_avg_fn(0.8)),
    "swa multi": lambda swa: dict(multi_avg_fn=swa.get_swa_multi_avg_fn()),
    "swa single": lambda swa: dict(avg_fn=swa.get_swa_avg_fn()),
    "custom lambda": lambda swa: dict(avg_fn=lambda a, m, n: 0.6 * a + 0.4 * m),
}


@pytest.mark.parametrize("use_buffers", [False, True])
@pytest.mark.parametrize("averaging", sorted(AVERAGING))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_averaged_model_matches_torch(averaging, use_buffers, dtype):
    """Same parameters, buffers and n_averaged, bit for bit, after several updates."""
    states = []
    for swa in (TS, GS):
        torch.manual_seed(0)
        model = Net().to(dtype)
        averaged = swa.AveragedModel(model, use_buffers=use_buffers, **AVERAGING[averaging](swa))
        try:
            for step in range(4):
                _perturb(model.float(), step)
                model.to(dtype)
                averaged.update_parameters(model)
        except RuntimeError as exc:  # torch's SWA multi_avg_fn rejects integer buffers
            states.append(("raised", str(exc)))
            continue
        states.append(_full_state(averaged))
    if isinstance(states[0], tuple):
        assert states[1] == states[0]
        return
    assert list(states[1]) == list(states[0])  # n_averaged, module.* in torch's order
    for key in states[0]:
        assert states[1][key].dtype == states[0][key].dtype, key
        assert torch.equal(states[1][key], states[0][key]), key


def test_averaged_model_structure_and_checkpoints_cross_load():
    torch.manual_seed(0)
    model = Net()
    ours, theirs = GS.AveragedModel(model), TS.AveragedModel(model)
    assert isinstance(ours, torch.nn.Module)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert ours.n_averaged.dtype == torch.long and ours.n_averaged.item() == 0
    assert repr(ours) == repr(theirs)
    for step in range(3):
        _perturb(model, step)
        theirs.update_parameters(model)
    ours.load_state_dict(theirs.state_dict())  # torch -> gradstep
    assert ours.n_averaged.item() == 3
    back = TS.AveragedModel(Net())
    back.load_state_dict(ours.state_dict())  # gradstep -> torch
    for (k, a), (_, b) in zip(back.state_dict().items(), theirs.state_dict().items()):
        assert torch.equal(a, b), k


def test_averaged_model_copies_the_model_and_forwards():
    torch.manual_seed(0)
    model = Net().eval()
    averaged = GS.AveragedModel(model)
    assert averaged.module is not model
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # the copy is independent
    assert not torch.equal(next(averaged.parameters()), next(model.parameters()))
    x = torch.randn(4, 1, 8, 8)
    averaged.update_parameters(model)
    averaged.eval()
    assert torch.equal(averaged(x), model(x))
    assert torch.equal(averaged(x), averaged.module(x))


def test_averaged_model_device_argument_and_argument_check():
    model = torch.nn.Linear(2, 2)
    averaged = GS.AveragedModel(model, device="cpu")
    assert averaged.n_averaged.device.type == "cpu"
    with pytest.raises(AssertionError, match="Only one of avg_fn and multi_avg_fn"):
        GS.AveragedModel(model, avg_fn=GS.get_swa_avg_fn(), multi_avg_fn=GS.get_swa_multi_avg_fn())


def test_avg_fn_receives_n_averaged_as_a_tensor():
    seen = []

    def avg_fn(averaged, current, n):
        seen.append((type(n), int(n)))
        return averaged

    model = torch.nn.Linear(2, 1)
    averaged = GS.AveragedModel(model, avg_fn=avg_fn)
    for _ in range(3):
        averaged.update_parameters(model)
    # Not called on the first update (a copy); then once per parameter.
    assert seen == [(torch.Tensor, 1)] * 2 + [(torch.Tensor, 2)] * 2


# --------------------------------------------------------------------------- update_bn


@pytest.mark.parametrize("batches", ["tensors", "tuples", "dataloader"])
@pytest.mark.parametrize("was_training", [True, False])
def test_update_bn_matches_torch(batches, was_training):
    results = []
    for swa in (TS, GS):
        torch.manual_seed(0)
        model = Net()
        for step in range(2):
            _perturb(model, step)
        model.train(was_training)
        if batches == "tensors":
            loader = _data(with_targets=False)
        elif batches == "tuples":
            loader = _data()
        else:
            xs, ys = zip(*_data())
            dataset = torch.utils.data.TensorDataset(torch.cat(xs), torch.cat(ys))
            loader = torch.utils.data.DataLoader(dataset, batch_size=8)
        swa.update_bn(loader, model, device=torch.device("cpu"))
        assert model.training == was_training
        assert model.bn.momentum == 0.1 and model.bn1d.momentum == 0.3
        results.append({k: v.clone() for k, v in model.state_dict().items()})
    for key in results[0]:
        assert torch.equal(results[1][key], results[0][key]), key
    assert results[1]["bn.num_batches_tracked"].item() == 6


def test_update_bn_without_batchnorm_does_nothing():
    class NoCalls(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("update_bn must not run a model without BatchNorm")

    model = NoCalls().eval()
    GS.update_bn([torch.zeros(1)], model)
    assert not model.training


# --------------------------------------------------------------------------- documented recipes


def _recipe(swa, lr_mod, opt_cls, kind, epochs=12, swa_start=6):
    """The SWA or EMA recipe of the torch.optim docs on a small BatchNorm network."""
    torch.manual_seed(0)
    model = Net()
    loader = _data(n_batches=4, seed=3)
    opt = opt_cls(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    if kind == "swa":
        averaged = swa.AveragedModel(model)
        scheduler = lr_mod.CosineAnnealingLR(opt, T_max=epochs)
        swa_scheduler = swa.SWALR(opt, swa_lr=0.01, anneal_epochs=3)
    else:
        averaged = swa.AveragedModel(model, multi_avg_fn=swa.get_ema_multi_avg_fn(0.9))
    lrs = []
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            if kind == "ema":
                averaged.update_parameters(model)
        if kind == "swa":
            if epoch > swa_start:
                averaged.update_parameters(model)
                swa_scheduler.step()
            else:
                scheduler.step()
        lrs.append(opt.param_groups[0]["lr"])
    swa.update_bn(loader, averaged)
    averaged.eval()
    preds = averaged(torch.cat([x for x, _ in loader]))
    return lrs, {k: v.clone() for k, v in averaged.state_dict().items()}, preds.detach()


@pytest.mark.parametrize("kind", ["swa", "ema"])
def test_documented_recipe_end_to_end(kind):
    """Same lrs, averaged weights, BatchNorm statistics and predictions as torch's utilities
    (torch.optim.SGD drives both, so equality is exact)."""
    lrs_t, state_t, preds_t = _recipe(TS, T, torch.optim.SGD, kind)
    lrs_g, state_g, preds_g = _recipe(GS, G, torch.optim.SGD, kind)
    assert lrs_g == lrs_t
    assert list(state_g) == list(state_t)
    for key in state_t:
        assert torch.equal(state_g[key], state_t[key]), key
    assert torch.equal(preds_g, preds_t)


@pytest.mark.parametrize("kind", ["swa", "ema"])
def test_documented_recipe_with_gradstep_sgd(kind):
    """The whole stack from gradstep: optimizer, schedulers, averaging, BatchNorm update."""
    lrs_t, state_t, preds_t = _recipe(TS, T, torch.optim.SGD, kind)
    lrs_g, state_g, preds_g = _recipe(GS, G, gradstep.SGD, kind)
    assert lrs_g == lrs_t
    for key in state_t:
        torch.testing.assert_close(state_g[key], state_t[key], rtol=1e-4, atol=1e-5, msg=key)
    torch.testing.assert_close(preds_g, preds_t, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("averaging", ["swa default", "ema multi", "swa multi"])
def test_averaged_model_on_cuda_uses_the_same_kernels(averaging):
    """On CUDA the default SWA average takes the multi-tensor path, as torch's does."""
    states = []
    for swa in (TS, GS):
        torch.manual_seed(0)
        model = Net()
        averaged = swa.AveragedModel(model, device="cuda", **AVERAGING[averaging](swa))
        for step in range(4):
            _perturb(model, step)
            averaged.update_parameters(model)
        states.append({k: v.cpu() for k, v in averaged.state_dict().items()})
    for key in states[0]:
        assert torch.equal(states[1][key], states[0][key]), key
    swa_model = copy.deepcopy(averaged)
    GS.update_bn(_data(with_targets=False), swa_model, device="cuda")
