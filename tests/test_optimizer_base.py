"""The Optimizer base class: groups, validation, hooks, checkpoints, closures, interop."""

import copy
import inspect
import io
import pickle

import pytest
import torch

import gradstep
from gradstep.optimizer import Optimizer


def params(*shapes):
    return [torch.nn.Parameter(torch.randn(s)) for s in shapes]


def with_grads(ps):
    for p in ps:
        p.grad = torch.ones_like(p)
    return ps


# ------------------------------------------------------------------ interop: isinstance, no torch code


def test_isinstance_torch_optimizer():
    assert isinstance(gradstep.Adam(params(2)), torch.optim.Optimizer)


def test_every_public_torch_member_is_overridden():
    """Every method/attribute torch.optim.Optimizer offers resolves to gradstep's own code."""
    torch_members = {
        name
        for name, _ in inspect.getmembers(torch.optim.Optimizer)
        if not name.startswith("__") or name in ("__init__", "__repr__", "__getstate__", "__setstate__")
    }
    for name in sorted(torch_members):
        owner = next(k for k in Optimizer.__mro__ if name in vars(k))
        assert owner is not torch.optim.Optimizer, f"{name} resolves to torch.optim.Optimizer"


def test_no_torch_optim_code_runs(monkeypatch):
    """Make every torch.optim.Optimizer method raise; a full gradstep workflow still works."""

    def boom(*a, **k):
        raise AssertionError("torch.optim code ran")

    for name, member in vars(torch.optim.Optimizer).items():
        if callable(member) and not isinstance(member, type):
            monkeypatch.setattr(torch.optim.Optimizer, name, boom)
    ps = with_grads(params(3, 2))
    opt = gradstep.Adam(ps, lr=0.1)
    opt.register_step_pre_hook(lambda *a: None)
    opt.step()
    opt.zero_grad()
    sd = opt.state_dict()
    opt.load_state_dict(sd)
    opt.add_param_group({"params": params(4)})
    repr(opt)
    copy.deepcopy(opt)


# ------------------------------------------------------------------ construction and validation


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda P: P(torch.nn.Parameter(torch.randn(2))), TypeError, "should be an iterable of Tensors or dicts"),
        (lambda P: P([]), ValueError, "optimizer got an empty parameter list"),
        (lambda P: P([{"params": [p := torch.nn.Parameter(torch.randn(2))]}, {"params": [p]}]), ValueError, "more than one parameter group"),
        (lambda P: P([torch.nn.Parameter(torch.randn(2)) * 2]), ValueError, "can't optimize a non-leaf Tensor"),
        (lambda P: P([("a", torch.nn.Parameter(torch.randn(2))), torch.nn.Parameter(torch.randn(2))]), ValueError, "Some param names are missing"),
        (lambda P: P([{"params": [torch.nn.Parameter(torch.randn(2))]}, {"params": [("w", torch.nn.Parameter(torch.randn(2)))]}]), ValueError, "cannot add param group with names"),
        (lambda P: P([{"params": {torch.nn.Parameter(torch.randn(2))}}]), TypeError, "ordered collections"),
        (lambda P: P([1.0]), TypeError, "optimizer can only optimize Tensors"),
        (lambda P: P(params(2), bogus=1), TypeError, "unexpected keyword argument 'bogus'"),
    ],
)
def test_construction_errors_match_torch(make, error, match):
    for cls in (gradstep.Adam, torch.optim.Adam):
        with pytest.raises(error, match=match):
            make(cls)


def test_duplicate_params_warn_like_torch():
    p = torch.nn.Parameter(torch.randn(2))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        gradstep.Adam([p, p])


def test_group_defaults_and_key_order_match_torch():
    a, b = params(2), params(3)
    spec = lambda ps, qs: [{"params": ps, "lr": 0.5}, {"params": qs, "weight_decay": 0.1}]
    ga = gradstep.AdamW(spec(a, b), lr=0.01)
    ta = torch.optim.AdamW(spec(params(2), params(3)), lr=0.01)
    for g, t in zip(ga.param_groups, ta.param_groups):
        assert list(g.keys()) == list(t.keys())
        assert {k: v for k, v in g.items() if k != "params"} == {k: v for k, v in t.items() if k != "params"}
    assert ga.defaults == ta.defaults
    assert repr(ga) == repr(ta)


def test_named_parameters_are_kept_like_torch():
    model = torch.nn.Linear(3, 2)
    twin = copy.deepcopy(model)
    g = gradstep.Adam(model.named_parameters(), lr=0.1)
    t = torch.optim.Adam(twin.named_parameters(), lr=0.1)
    assert g.param_groups[0]["param_names"] == ["weight", "bias"]
    assert g.state_dict()["param_groups"] == t.state_dict()["param_groups"]
    assert repr(g) == repr(t)


def test_add_param_group_errors_leave_optimizer_unchanged():
    ps = params(2)
    opt = gradstep.Adam(ps, lr=0.1)
    before = copy.deepcopy(opt.param_groups)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": ps})
    with pytest.raises(TypeError, match="param_group must be a dict"):
        opt.add_param_group(ps)
    with pytest.raises(ValueError, match="non-leaf"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2)) * 3]})
    assert len(opt.param_groups) == 1
    assert opt.param_groups[0].keys() == before[0].keys()
    extra = params(4)
    opt.add_param_group({"params": extra, "lr": 0.3})
    assert opt.param_groups[1]["lr"] == 0.3 and opt.param_groups[1]["betas"] == (0.9, 0.999)


def test_add_param_group_does_not_mutate_callers_dict():
    opt = gradstep.Adam(params(2))
    group = {"params": params(3)}
    opt.add_param_group(group)
    assert set(group) == {"params"}


# ------------------------------------------------------------------ step, closure, zero_grad


def test_closure_reevaluated_with_grad_enabled_and_loss_returned():
    ps = params(3)
    opt = gradstep.Adam(ps, lr=0.1)
    seen = []

    def closure():
        seen.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = (ps[0] ** 2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert seen == [True]
    assert isinstance(loss, torch.Tensor) and loss.requires_grad


def test_params_without_grad_are_skipped():
    a, b = params(2, 3)
    a.grad = torch.ones(2)
    opt = gradstep.Adam([a, b], lr=0.1)
    b0 = b.detach().clone()
    opt.step()
    assert torch.equal(b, b0)
    assert b not in opt.state and a in opt.state


@pytest.mark.parametrize("foreach", [False, True])
def test_zero_grad(foreach):
    ps = with_grads(params(2, 3))
    opt = gradstep.Adam(ps, foreach=foreach)
    opt.zero_grad(set_to_none=False)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in ps)
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


# ------------------------------------------------------------------ hooks


def test_step_hooks_order_args_and_removal():
    ps = with_grads(params(2))
    opt = gradstep.Adam(ps)
    calls = []
    h1 = gradstep.register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global_pre"))
    h2 = gradstep.register_optimizer_step_post_hook(lambda o, a, k: calls.append("global_post"))
    h3 = opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    h4 = opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    try:
        opt.step()
        assert calls == ["global_pre", "pre", "post", "global_post"]
    finally:
        for h in (h1, h2, h3, h4):
            h.remove()
    calls.clear()
    opt.step()
    assert calls == []


def test_torch_global_hooks_fire_for_gradstep_optimizers():
    from torch.optim.optimizer import register_optimizer_step_post_hook

    calls = []
    handle = register_optimizer_step_post_hook(lambda o, a, k: calls.append(type(o).__name__))
    try:
        gradstep.Adam(with_grads(params(2))).step()
    finally:
        handle.remove()
    assert calls == ["Adam"]


def test_step_pre_hook_can_replace_arguments():
    ps = params(2)
    opt = gradstep.Adam(ps)

    def closure():
        ps[0].grad = torch.ones(2)
        return torch.tensor(3.0)

    opt.register_step_pre_hook(lambda o, a, k: ((closure,), {}))
    out = opt.step()
    assert out == 3.0


def test_step_pre_hook_bad_return_raises():
    opt = gradstep.Adam(with_grads(params(2)))
    opt.register_step_pre_hook(lambda o, a, k: 5)
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        opt.step()


def test_state_dict_hooks():
    opt = gradstep.Adam(with_grads(params(2)))
    opt.step()
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    opt.register_state_dict_pre_hook(lambda o: calls.append("pre0"), prepend=True)
    sd = opt.state_dict()
    assert calls == ["pre0", "pre"] and sd["extra"] == 1


def test_load_state_dict_hooks():
    src = gradstep.Adam(with_grads(params(2)), lr=0.5)
    src.step()
    opt = gradstep.Adam(params(2), lr=0.1)
    calls = []

    def pre(o, sd):
        calls.append("pre")
        sd = copy.deepcopy(sd)
        sd["param_groups"][0]["lr"] = 0.25
        return sd

    opt.register_load_state_dict_pre_hook(pre)
    opt.register_load_state_dict_post_hook(lambda o: calls.append("post"))
    opt.load_state_dict(src.state_dict())
    assert calls == ["pre", "post"]
    assert opt.param_groups[0]["lr"] == 0.25


# ------------------------------------------------------------------ checkpoints


def _trained(cls, ps):
    opt = cls(ps, lr=0.1, amsgrad=True)
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    return opt


def test_state_dict_loads_with_weights_only_and_round_trips():
    opt = _trained(gradstep.Adam, params(3, (2, 2)))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    fresh = gradstep.Adam(params(3, (2, 2)), lr=0.7)
    fresh.load_state_dict(loaded)
    assert fresh.param_groups[0]["lr"] == 0.1
    for k, v in opt.state_dict()["state"].items():
        for name, t in v.items():
            assert torch.equal(fresh.state_dict()["state"][k][name], t)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda sd: sd["param_groups"].append(copy.deepcopy(sd["param_groups"][0])), "different number of parameter groups"),
        (lambda sd: sd["param_groups"][0]["params"].pop(), "doesn't match the size"),
        (lambda sd: sd["state"][0].__setitem__("exp_avg", torch.zeros(7)), "shape"),
    ],
)
def test_bad_state_dict_raises_and_changes_nothing(mutate, match):
    opt = _trained(gradstep.Adam, params(3, (2, 2)))
    before = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(opt.state_dict())
    mutate(bad)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for k in before["state"]:
        for name, t in before["state"][k].items():
            assert torch.equal(after["state"][k][name], t)


def test_missing_key_raises_keyerror_and_changes_nothing():
    opt = _trained(gradstep.Adam, params(3))
    with pytest.raises(KeyError):
        opt.load_state_dict({"state": {}})
    assert len(opt.state) == 1


def test_load_casts_state_to_param_dtype_and_keeps_step_float32():
    src = _trained(gradstep.Adam, params(3))
    sd = src.state_dict()
    p64 = [torch.nn.Parameter(torch.randn(3, dtype=torch.float64))]
    dst = gradstep.Adam(p64)
    dst.load_state_dict(sd)
    st = dst.state[p64[0]]
    assert st["exp_avg"].dtype == torch.float64 and st["step"].dtype == torch.float32


def test_pickle_and_deepcopy():
    opt = _trained(gradstep.Adam, params(3))
    for clone in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)):
        assert clone.defaults == opt.defaults
        assert repr(clone) == repr(opt)
        assert len(clone.state) == 1
        assert clone._optimizer_step_pre_hooks == {}


def test_drop_in_training_loop_matches_torch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    twin = copy.deepcopy(model)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    opts = [
        gradstep.AdamW([{"params": model[0].parameters(), "lr": 3e-3}, {"params": model[2].parameters()}], lr=1e-3),
        torch.optim.AdamW([{"params": twin[0].parameters(), "lr": 3e-3}, {"params": twin[2].parameters()}], lr=1e-3),
    ]
    for _ in range(40):
        for m, opt in zip((model, twin), opts):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_torch_lr_scheduler_drives_gradstep_optimizer():
    opt = gradstep.SGD(params(2), lr=1.0) if hasattr(gradstep, "SGD") else gradstep.Adam(params(2), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    lrs = []
    for _ in range(5):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25]


def test_differentiable_step_gradcheck():
    """Autograd differentiates through a step, as torch.optim's differentiable=True allows."""

    def step_fn(p, grad, exp_avg, exp_avg_sq):
        p = p.clone()
        p.grad = grad
        opt = gradstep.Adam([p], lr=0.1, differentiable=True, amsgrad=False)
        opt.state[p] = {"step": torch.tensor(2.0), "exp_avg": exp_avg.clone(), "exp_avg_sq": exp_avg_sq.clone()}
        opt.step()
        return (p, opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"])

    inputs = (
        torch.randn(4, dtype=torch.float64, requires_grad=True),
        torch.randn(4, dtype=torch.float64, requires_grad=True),
        torch.randn(4, dtype=torch.float64, requires_grad=True),
        torch.rand(4, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(step_fn, inputs)


def test_load_nontensor_step_is_converted():
    opt = _trained(gradstep.Adam, params(3))
    sd = copy.deepcopy(opt.state_dict())
    for st in sd["state"].values():
        st["step"] = st["step"].item()
    fresh = gradstep.Adam(params(3), lr=0.1, amsgrad=True)
    fresh.load_state_dict(sd)
    step = next(iter(fresh.state.values()))["step"]
    assert torch.is_tensor(step) and step.item() == 3.0


def test_older_state_dict_without_new_keys_loads():
    opt = _trained(gradstep.Adam, params(3))
    sd = copy.deepcopy(opt.state_dict())
    for g in sd["param_groups"]:
        for key in ("foreach", "fused", "capturable", "differentiable", "maximize", "decoupled_weight_decay"):
            g.pop(key)
    fresh = gradstep.Adam(params(3), lr=0.1, amsgrad=True)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["decoupled_weight_decay"] is False
    assert fresh.param_groups[0]["foreach"] is None


@pytest.mark.parametrize("scaled", [False, True])
def test_fused_amp_protocol_skips_on_inf_and_unscales(scaled):
    for cls in (gradstep.Adam, torch.optim.Adam):
        ps = with_grads(params(3))
        before = [p.detach().clone() for p in ps]
        opt = cls(ps, lr=0.1, fused=True)
        assert opt._step_supports_amp_scaling
        opt.grad_scale = torch.full((1,), 4.0) if scaled else None
        opt.found_inf = torch.ones(())
        opt.step()
        assert torch.equal(ps[0], before[0]) and opt.state[ps[0]]["step"].item() == 0
    results = []
    for cls in (gradstep.Adam, torch.optim.Adam):
        ps = params(3)
        torch.manual_seed(1)
        with torch.no_grad():
            ps[0].copy_(torch.arange(3.0))
        ps[0].grad = torch.tensor([4.0, -8.0, 2.0])
        opt = cls(ps, lr=0.1, fused=True)
        opt.grad_scale = torch.full((1,), 4.0) if scaled else None
        opt.found_inf = torch.zeros(())
        opt.step()
        results.append((ps[0].detach().clone(), ps[0].grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


_SUBCLASS_HOOKS = """
import sys, torch, gradstep
import torch.optim.optimizer as torch_optimizer
mod = torch.optim if sys.argv[1] == "torch" else gradstep
register = (torch_optimizer if mod is torch.optim else gradstep).register_optimizer_step_post_hook

class MyAdam(mod.Adam):
    def step(self, closure=None):
        return super().step(closure)

calls = []
p = torch.nn.Parameter(torch.randn(3))
opt = MyAdam([p])
opt.register_step_pre_hook(lambda *a: calls.append("pre"))
opt.register_step_post_hook(lambda *a: calls.append("post"))
register(lambda *a: calls.append("global_post"))
p.grad = torch.ones(3)
opt.step()
print(calls)
"""


def test_subclass_step_calling_super_runs_hooks_once_like_torch():
    """A user subclass whose step calls super().step(): torch wraps only the instantiated
    class's step, so each hook runs once per step (fresh processes: torch's wrapping of a base
    class depends on whether that class was instantiated before)."""
    import subprocess
    import sys

    out = {}
    for which in ("torch", "gradstep"):
        run = subprocess.run(
            [sys.executable, "-c", _SUBCLASS_HOOKS, which], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr[-800:]
        out[which] = run.stdout.strip().splitlines()[-1]
    assert out["gradstep"] == out["torch"] == "['pre', 'post', 'global_post']"


@pytest.mark.parametrize("change", ["groups", "sizes"])
def test_load_state_dict_mismatch_messages_are_torchs_exactly(change):
    """The two mismatch errors torch.optim raises on load carry its exact words (code that
    compares the message string, not just a regex, keeps working)."""
    def build(module, n_groups, n_params):
        groups = [{"params": [torch.nn.Parameter(torch.zeros(2)) for _ in range(n_params)]}
                  for _ in range(n_groups)]
        return module.SGD(groups, lr=0.1)

    shape = (2, 1) if change == "groups" else (1, 2)
    messages = []
    for module in (torch.optim, gradstep):
        saved = build(module, 1, 1).state_dict()
        with pytest.raises(ValueError) as info:
            build(module, *shape).load_state_dict(saved)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
