"""Learning-rate schedulers with the API and behaviour of ``torch.optim.lr_scheduler``.

Every scheduler accepts torch.optim and gradstep optimizers alike (it only uses
``param_groups``, ``defaults`` and ``step``), produces the same lr sequence as
torch's, and reads and writes torch's state-dict format.  ``LRScheduler`` and
``ReduceLROnPlateau`` subclass torch's classes of the same name so that
``isinstance`` checks in other libraries pass; no torch scheduler code runs.
"""

from ._base import EPOCH_DEPRECATION_WARNING, LRScheduler, _LRScheduler
from ._compose import ChainedScheduler, SequentialLR
from ._cosine import CosineAnnealingLR, CosineAnnealingWarmRestarts
from ._cyclic import CyclicLR, OneCycleLR
from ._plateau import ReduceLROnPlateau
from ._simple import (
    ConstantLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    MultiplicativeLR,
    MultiStepLR,
    PolynomialLR,
    StepLR,
)

__all__ = [
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "SequentialLR",
    "CosineAnnealingLR",
    "ChainedScheduler",
    "ReduceLROnPlateau",
    "CyclicLR",
    "CosineAnnealingWarmRestarts",
    "OneCycleLR",
    "PolynomialLR",
    "LRScheduler",
]

# Public home of every class is this module (stable pickles, readable reprs).
for _cls in (_LRScheduler, *(globals()[_name] for _name in __all__)):
    _cls.__module__ = __name__
del _cls
