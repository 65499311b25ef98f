"""Bring your own model: export PyTorch recommenders trained elsewhere.

:func:`export_model` takes a module (or a state dict) trained outside recsys-export and
writes the same verified bundle as ``recsys-export export`` does for our checkpoints.
Two paths:

``converted``
    A module or state dict with the parameter names and shapes of the post's classes
    (``user_factors``/``item_factors`` embeddings, optionally ``user_bias``/``item_bias``;
    for the dense net also ``linear1`` and ``linear2`` with one output) is converted to our
    :class:`~recsys_export.models.MatrixFactorization` or
    :class:`~recsys_export.models.DenseNet`, so the bundle gets everything ours get:
    fast-path kernels, in-graph top-k, the split DenseNet layer.
``generic``
    Any other ``nn.Module`` whose ``forward(users, items)`` returns one score per pair
    (``[N]`` or ``[N, 1]``). ``score`` is the module, ``score_all`` broadcasts users x
    items through it in bounded blocks (:class:`ModuleRecommender`), ``recommend`` is
    :func:`~recsys_export.torch_runtime.ops.topk_excluding` on that. The bundle has no fast-path
    kernels; the runtime runs its ONNX entry points.

Either way, parity is checked against the user's own module (not only our copy of it):
the eager reference of :func:`~recsys_export.parity.run_parity` is the user's ``forward``.
The path taken is recorded in the manifest under ``training.config.origin``.

Modules: :mod:`.export` (:func:`export_model`), :mod:`.verify` (:func:`verify_module`),
:mod:`.convert` (the post's classes to ours), :mod:`.generic` (any pairwise module as the
three entry points), :mod:`.ids` (id maps and seen items) and :mod:`.files` (the CLI's
helpers: a class, a state dict and ids from files). This package re-exports their public
names.
"""

from __future__ import annotations

from recsys_export.byom.convert import load_state_dict_file, model_from_state_dict, recognise
from recsys_export.byom.export import PATHS, ExportResult, export_model
from recsys_export.byom.files import ids_from_file, load_class, module_from_files
from recsys_export.byom.generic import (
    DEFAULT_BLOCK_PAIRS,
    GENERIC_KIND,
    MAX_ITEM_TILES,
    MIN_ITEM_BLOCK,
    ModuleRecommender,
    source_missing,
)
from recsys_export.byom.ids import IdsAndSeen, IdsOptions, resolve_ids
from recsys_export.byom.verify import verify_module

__all__ = [
    "DEFAULT_BLOCK_PAIRS",
    "GENERIC_KIND",
    "MAX_ITEM_TILES",
    "MIN_ITEM_BLOCK",
    "PATHS",
    "ExportResult",
    "IdsAndSeen",
    "IdsOptions",
    "ModuleRecommender",
    "export_model",
    "ids_from_file",
    "load_class",
    "load_state_dict_file",
    "model_from_state_dict",
    "module_from_files",
    "recognise",
    "resolve_ids",
    "source_missing",
    "verify_module",
]
