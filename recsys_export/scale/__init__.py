"""Scale-out top-k scoring with Ray: every user's top-k list as a directory of Parquet files.

:func:`score_topk_ray` splits the user indices ``0..n_users-1`` into blocks and scores
them on a pool of Ray actors. Each actor opens the bundle once with the one engine
factory (:func:`recsys_export.engines.open_engine`, checksums verified) and answers a
block through the runtime's writers (:func:`recsys_export.runtime.writers.topk_table`),
so the output equals ``write_topk``'s, split into one file per block::

    OUT/
      part-000000.parquet    # columns user, rank, item, score (raw ids), users of block 0
      part-000001.parquet
      ...
      _SUCCESS               # JSON summary + list of parts, written last

Read it with ``pyarrow.parquet.read_table(OUT)`` or ``pandas.read_parquet(OUT)`` (both
skip names starting with ``_`` or ``.``). A directory without ``_SUCCESS`` is incomplete.

Design (see ``docs/scaling.md``):

* Ray core actors + :class:`ray.util.ActorPool`, not Ray Data: the unit of work is a
  block of user indices whose output file is written by the actor itself, with a
  deterministic name, to a temporary name and then ``os.replace``-d into place. A
  block that Ray retries therefore rewrites the same file and can never duplicate or
  lose rows; nothing but a few small dicts travels back to the driver.
* Actors are created with ``max_restarts`` and ``max_task_retries``: when a worker
  process dies, Ray restarts the actor (which reloads the bundle) and re-runs the
  block it was working on.
* Bundles reach workers by path (a filesystem every node sees), or with
  ``ship_bundle="object_store"`` as bytes put into Ray's object store once and
  materialised in a temporary directory on each worker. The output directory must be
  on a filesystem every worker can write (NFS, a shared disk; on one machine any
  directory).

* With ``device`` set, each actor runs the torch engine
  (:class:`~recsys_export.torch_runtime.engine.TorchEngine`, the bundle's pt2/TorchScript
  program) instead of onnxruntime: ``device="cuda"`` places one actor per GPU (Ray's
  ``num_gpus=1``; Ray sets each actor's ``CUDA_VISIBLE_DEVICES``, so it sees its GPU as
  ``cuda:0``); ``device="cpu"`` runs the same code on CPU actors.
* Without ``device``, ``providers`` are the onnxruntime execution providers of every
  actor's sessions (``Recommender.load(..., providers=...)``, e.g.
  ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` with ``onnxruntime-gpu`` on the
  workers). Names are checked by :func:`~recsys_export.runtime.engines.check_providers`,
  the rule of ``Recommender.load``: on the driver when this call starts a local Ray
  (the workers share its onnxruntime), by each worker otherwise (a cluster's workers
  may have another onnxruntime than the driver).

Ray is imported lazily: this module imports without it, and :func:`score_topk_ray`
raises :class:`~recsys_export.errors.ConfigError` saying how to install it.
"""

from __future__ import annotations

from recsys_export.errors import WorkerError
from recsys_export.scale.driver import SHIP_MODES, default_block_users, score_topk_ray
from recsys_export.scale.worker import PART_PATTERN, SUCCESS_NAME, BlockScorer

__all__ = [
    "PART_PATTERN",
    "SHIP_MODES",
    "SUCCESS_NAME",
    "BlockScorer",
    "WorkerError",
    "default_block_users",
    "score_topk_ray",
]
