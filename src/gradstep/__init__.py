"""gradstep: an independent, faster implementation of ``torch.optim``.

``import gradstep as optim`` offers the same names as ``torch.optim``.
"""

from .algorithms.adam import Adam, AdamW
from .algorithms.asgd import ASGD
from .algorithms.nadam import NAdam
from .algorithms.radam import RAdam
from .algorithms.rprop import Rprop
from .optimizer import (
    Optimizer,
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from .swap import swap_in_optimizer_params_and_state

__version__ = "0.1.0"

__all__ = [
    "ASGD",
    "Adam",
    "AdamW",
    "NAdam",
    "RAdam",
    "Rprop",
    "Optimizer",
    "register_optimizer_step_post_hook",
    "register_optimizer_step_pre_hook",
    "swap_in_optimizer_params_and_state",
]
