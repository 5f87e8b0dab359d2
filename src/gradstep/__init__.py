"""gradstep: an independent, faster implementation of ``torch.optim``.

``import gradstep as optim`` offers the same names as ``torch.optim``.
"""

from .algorithms.adadelta import Adadelta
from .algorithms.adafactor import Adafactor
from .algorithms.adagrad import Adagrad
from .algorithms.adam import Adam, AdamW
from .algorithms.asgd import ASGD
from .algorithms.adamax import Adamax
from .algorithms.lbfgs import LBFGS
from .algorithms.muon import Muon
from .algorithms.nadam import NAdam
from .algorithms.radam import RAdam
from .algorithms.rmsprop import RMSprop
from .algorithms.rprop import Rprop
from .algorithms.sgd import SGD
from .algorithms.sparse_adam import SparseAdam
from .optimizer import (
    Optimizer,
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from .swap import swap_in_optimizer_params_and_state

from . import lr_scheduler, swa_utils

__version__ = "0.1.0"

__all__ = [
    "ASGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "LBFGS",
    "Muon",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SGD",
    "SparseAdam",
    "Optimizer",
    "register_optimizer_step_post_hook",
    "register_optimizer_step_pre_hook",
    "swap_in_optimizer_params_and_state",
    "lr_scheduler",
    "swa_utils",
]
