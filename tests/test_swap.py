"""swap_in_optimizer_params_and_state behaves as torch.optim's."""

import copy

import pytest
import torch

import gradstep


def _run(cls, swap):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = cls(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in params.values():
        p.grad = torch.ones_like(p)
    osd = copy.deepcopy(opt.state_dict())
    with swap(opt, params, osd):
        opt.step()
    return model, opt, params, osd


def test_matches_torch_and_restores_live_optimizer():
    gm, gopt, gparams, gosd = _run(gradstep.Adam, gradstep.swap_in_optimizer_params_and_state)
    tm, topt, tparams, tosd = _run(torch.optim.Adam, torch.optim.swap_in_optimizer_params_and_state)
    for name in gparams:
        torch.testing.assert_close(gparams[name], tparams[name])
    for k in tosd["state"]:
        for key, value in tosd["state"][k].items():
            torch.testing.assert_close(gosd["state"][k][key], value)
    torch.testing.assert_close(gm.weight, tm.weight)
    assert gopt.state[gm.weight]["step"].item() == 1.0
    assert gopt.param_groups[0]["params"][0] is gm.weight


def test_wrong_parameter_count_raises():
    model = torch.nn.Linear(3, 2)
    opt = gradstep.Adam(model.parameters())
    with pytest.raises(ValueError):
        with gradstep.swap_in_optimizer_params_and_state(opt, {"w": torch.zeros(2, 3)}, opt.state_dict()):
            pass
