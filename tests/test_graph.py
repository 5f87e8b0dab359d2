"""Tracing a rule records exactly what the rule computes (the fused backends' input)."""

import itertools
from types import SimpleNamespace

import pytest
import torch

from gradstep.algorithms.adam import AdamConfig, adam_rule
from gradstep.backends.graph import evaluate, trace
from gradstep.backends.reference import TorchOps

NAMES = ("lr", "beta1", "beta2", "eps", "weight_decay", "step_size", "bias_correction2_sqrt")


@pytest.mark.parametrize("cfg", [AdamConfig(*c) for c in itertools.product([False, True], repeat=4)]
                         + [AdamConfig(False, True, True, amsgrad, capturable_foreach=True) for amsgrad in (False, True)])
def test_traced_adam_equals_rule(cfg):
    n_states = 3 if cfg.amsgrad else 2
    graph = trace(adam_rule, cfg, NAMES, n_states)
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(7, generator=gen) for _ in range(2)]
    tensors += [torch.rand(7, generator=gen) for _ in range(n_states)]
    s = SimpleNamespace(lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, step_size=0.2,
                        bias_correction2_sqrt=0.3)
    for a, b in zip(evaluate(graph, tensors, s, TorchOps), adam_rule(TorchOps, cfg, s, *tensors)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_branching_on_traced_value_is_an_error():
    def bad_rule(ops, cfg, s, p, g):
        return (p if g > 0 else -p,)

    with pytest.raises(TypeError, match="branched on a traced value"):
        trace(bad_rule, None, (), 0)
