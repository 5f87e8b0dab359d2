"""Sparse-gradient backend: a rule applied only where a sparse gradient has entries.

Adagrad's update of a parameter with a sparse gradient touches just the gradient's support
(its coalesced indices): there the rule runs on the gathered values of the parameter and its
state, and the results are scattered back; everything else is left as it was. Dense gradients
in the same group go through the reference backend.
"""

from __future__ import annotations

from typing import Any

import torch

from .reference import TorchOps, run_reference


def run_on_support(rule, cfg: Any, scalars: list[Any], tensors: list[list[torch.Tensor]]) -> None:
    """Apply ``rule`` tensor by tensor, to the entries present in each sparse gradient."""
    for i, s in enumerate(scalars):
        p, g, *states = (lst[i] for lst in tensors)
        if not g.is_sparse:
            run_reference(rule, cfg, [s], [[t] for t in (p, g, *states)])
            continue
        g = g.coalesce()  # the update is not linear in g: duplicate indices must be summed first
        index = tuple(g._indices())
        dsts = [p, *states]
        ins = [t[index] for t in dsts]
        outs = rule(TorchOps, cfg, s, ins[0], g._values(), *ins[1:])
        for dst, src, new in zip(dsts, ins, outs):
            if new is not src:
                dst[index] = new
