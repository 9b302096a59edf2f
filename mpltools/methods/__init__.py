"""Training steps, one per method: pure torch, no I/O (DESIGN §4, §5).

Every step has the signature
``step(nets: Networks, batch: Batch, step: int, hp: MPLHyper, reducer=LOCAL, generator=None)
-> dict[str, Tensor]`` and is looked up by its recipe name in `STEPS`.
"""

from mpltools.methods.baselines import pseudo_label_step, supervised_step, uda_step
from mpltools.methods.common import Batch, MPLHyper, Networks, NonFiniteError, hyper_from, measurement_mode
from mpltools.methods.fixmatch import fixmatch_step
from mpltools.methods.mpl import mpl_step
from mpltools.methods.optim import (
    EMA,
    apply_weight_decay_and_clip,
    build_sgd,
    ema_decay_at,
    learning_rate,
    norm_parameter_names,
)
from mpltools.methods.released import released_step
from mpltools.reducer import LOCAL, Reducer, TorchDistributedReducer

STEPS = {
    "mpl": mpl_step,
    "released": released_step,
    "supervised": supervised_step,
    "uda": uda_step,
    "pseudo-label": pseudo_label_step,
    "fixmatch": fixmatch_step,
}

__all__ = [
    "EMA",
    "LOCAL",
    "STEPS",
    "Batch",
    "MPLHyper",
    "Networks",
    "NonFiniteError",
    "Reducer",
    "TorchDistributedReducer",
    "apply_weight_decay_and_clip",
    "build_sgd",
    "ema_decay_at",
    "fixmatch_step",
    "hyper_from",
    "learning_rate",
    "measurement_mode",
    "mpl_step",
    "norm_parameter_names",
    "pseudo_label_step",
    "released_step",
    "supervised_step",
    "uda_step",
]
