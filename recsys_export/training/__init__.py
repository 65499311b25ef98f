"""Training and evaluation: what a run is asked to do, the loops, the metrics.

Modules (torch-free ones marked):

* :mod:`.recipes` (torch-free): the recommended recipes and presets as plain values.
* :mod:`.config` (torch-free): :class:`TrainConfig`, its vocabularies,
  :func:`default_config`, :func:`batch_size_for`.
* :mod:`.baselines` (torch-free): the popularity and damped bias baselines.
* :mod:`.objectives`: the ranking losses (softmax, sampled softmax, BPR).
* :mod:`.history`: :class:`History`, early stopping, the weight average.
* :mod:`.steps`: what the loops share (optimizers, the divergence check).
* :mod:`.ranking`: the ranking objective's loop; :mod:`.fit`: :func:`fit`, the rating
  loops (minibatch and the post's per-rating loop).
* :mod:`.evaluate`: metrics, models beside baselines.
* :mod:`.experiment`: :func:`train_checkpoint`, :func:`evaluate_checkpoint`: the
  library functions behind ``train`` and ``evaluate``.

The names below are loaded on first use, so importing a torch-free submodule (as the
CLI does for ``train --help``) imports no torch. ``fit`` is the module: import
:func:`~recsys_export.training.fit.fit` from it.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule that defines it
_NAMES = {
    "config": ("TrainConfig", "default_config"),
    "experiment": ("evaluate_checkpoint", "train_checkpoint"),
}
_WHERE = {name: mod for mod, names in _NAMES.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
