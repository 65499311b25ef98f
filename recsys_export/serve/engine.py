"""The one place the server touches the runtime: load a bundle, answer batches.

:class:`ServedModel` wraps :class:`~recsys_export.runtime.Recommender` (the engine
contract of the architecture refactor replaces it here, and only here). It

* loads and checks a bundle: checksums (the runtime's), and the parity verdict recorded
  in the manifest (a bundle whose recorded check failed is refused);
* warms every onnxruntime session and table a request can touch, so that the bundle
  directory may disappear afterwards (``export --force`` deletes the replaced one);
* answers a *batch* of recommend requests with one engine call per compatible group,
  and a batch of score requests with one call, carving each request's rows back out;
  one request's bad input fails that request only;
* names itself: a version (a digest of the manifest, which lists every file's sha256)
  and a summary for ``GET /model``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys_export.bundle import Manifest, dir_identity
from recsys_export.engines import open_engine
from recsys_export.errors import BundleError, RecsysExportError
from recsys_export.runtime import Recommender

__all__ = [
    "RecommendRequest",
    "Recommendations",
    "ScoreRequest",
    "ServedModel",
    "manifest_version",
]


@dataclass(eq=False)
class RecommendRequest:
    """One ``/recommend`` (or OIP ``infer``) request, parsed.

    ``k`` None means 10, or every item if the model knows fewer (as the CLI); ``exclude``
    is a list of items for every user or a dict user -> items; ``unknown`` one of
    ``raise``, ``skip``, ``popular`` (as :meth:`Recommender.recommend`).
    """

    users: list[Any]
    k: int | None = None
    exclude_seen: bool = True
    exclude: list[Any] | dict[Any, list[Any]] | None = None
    include: list[Any] | None = None
    unknown: str = "raise"

    @property
    def batchable(self) -> bool:
        """Whether it can share an engine call with others of the same ``key``."""
        return self.exclude is None and self.include is None


@dataclass(eq=False)
class ScoreRequest:
    """One ``/score`` request: pairs of raw ids."""

    users: list[Any]
    items: list[Any]


@dataclass
class Recommendations:
    """One request's rows of a recommend batch (numpy views of the batch's arrays)."""

    users: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    fallback: np.ndarray
    names: np.ndarray | None
    skipped: list[Any] = field(default_factory=list)
    int_items: bool = True  # the bundle's item ids are integers


def manifest_version(manifest: Manifest) -> str:
    """A bundle's version: 12 hex digits of the sha256 of its canonical manifest.

    The manifest lists every file's sha256 and the export time, so two exports never
    share a version, and the same bundle always has the same one.
    """
    raw = manifest.to_dict()
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


class ServedModel:
    """A loaded, checked and warmed bundle, as the server uses it.

    Create it with :meth:`load`. Thread-safe: batches run on several threads at once.

    Attributes
    ----------
    version : str
        :func:`manifest_version` of the bundle.
    identity : tuple or None
        The bundle directory's identity when loading began (see
        :func:`recsys_export.bundle.dir_identity`): the watcher compares it.
    """

    def __init__(self, rec: Recommender, identity: tuple[int, int, int] | None) -> None:
        self.rec = rec
        self.identity = identity
        self.version = manifest_version(rec.manifest)
        self.kind = rec.kind
        self.n_users = rec.n_users
        self.n_items = rec.n_items
        self.user_kind = rec.user_map.kind
        self.item_kind = rec.item_map.kind
        self.has_names = rec.manifest.item_names_file is not None

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, threads: int | None = None) -> ServedModel:
        """Load, check and warm the bundle at ``path``.

        Raises
        ------
        BundleError
            Missing or corrupted bundle (checksums), or its recorded parity check failed.
        ConfigError
            Invalid ``threads``.
        """
        identity = dir_identity(Path(os.path.abspath(os.fspath(path))))
        rec = open_engine(path, threads=threads)
        parity = rec.manifest.parity
        if parity is not None and not parity.passed:
            failed = parity.failed()
            raise BundleError(
                f"bundle {rec.bundle.root}: its recorded parity check failed "
                f"({', '.join(failed[:3]) or 'see parity.json'}); refusing to serve it: "
                "export it again or run 'recsys-export verify' on it"
            )
        model = cls(rec, identity)
        model.warm()
        return model

    def warm(self) -> None:
        """Open every session and read every table a request can use, now."""
        rec = self.rec
        first_user = rec.user_map.raw_ids[:1].tolist()
        first_item = rec.item_map.raw_ids[:1].tolist()
        rec.recommend(first_user, k=1)  # single-user path, seen items, names
        rec.recommend(first_user * 2, k=1)  # batched path
        rec.recommend(first_user * 2, k=1, include=first_item)  # score_all path
        rec.score(first_user, first_item)

    # ------------------------------------------------------------------ describing
    def describe(self) -> dict[str, Any]:
        """The bundle's summary for ``GET /model`` (no file system paths)."""
        man = self.rec.manifest
        parity = man.parity
        verdict = None
        if parity is not None:
            verdict = {
                "passed": parity.passed,
                "max_abs_diff": parity.max_abs_diff,
                "atol": parity.atol,
                "rtol": parity.rtol,
            }
        return {
            "version": self.version,
            "kind": self.kind,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "user_id_type": self.user_kind,
            "item_id_type": self.item_kind,
            "item_names": self.has_names,
            "formats": sorted(man.formats.names),
            "fast_paths": self.rec.fast_paths,
            "format_version": man.format_version,
            "created": man.created,
            "parity": verdict,
        }

    # ------------------------------------------------------------------ answering
    def recommend_batch(self, reqs: list[RecommendRequest]) -> list[Any]:
        """Answer requests: one :class:`Recommendations` or one exception per request.

        Batchable requests with the same ``k`` and ``exclude_seen`` share one engine
        call; unknown users are handled per request by its policy, so that one
        request's unknown id fails that request only.
        """
        out: list[Any] = [None] * len(reqs)
        groups: dict[tuple[int, bool], list[int]] = defaultdict(list)
        default_k = min(10, self.n_items)
        for i, req in enumerate(reqs):
            k = default_k if req.k is None else req.k
            if req.batchable:
                groups[k, req.exclude_seen].append(i)
            else:
                out[i] = self._alone(req, k)
        for (k, exclude_seen), members in groups.items():
            self._group(reqs, members, k, exclude_seen, out)
        return out

    def _alone(self, req: RecommendRequest, k: int) -> Any:
        try:
            res = self.rec.recommend(
                req.users,
                k=k,
                exclude_seen=req.exclude_seen,
                exclude=req.exclude,
                include=req.include,
                unknown=req.unknown,
            )
        except RecsysExportError as exc:
            return exc
        return Recommendations(
            res.users,
            res.items,
            res.scores,
            res.fallback,
            res.names,
            list(res.skipped),
            self.item_kind == "int",
        )

    def _group(
        self,
        reqs: list[RecommendRequest],
        members: list[int],
        k: int,
        exclude_seen: bool,
        out: list[Any],
    ) -> None:
        """One engine call for ``members`` (unknown users served the popularity fallback
        there, then each request's own policy applied to its rows)."""
        users: list[Any] = []
        for i in members:
            users.extend(reqs[i].users)
        try:
            res = self.rec.recommend(
                np.asarray(users, dtype=object), k=k, exclude_seen=exclude_seen, unknown="popular"
            )
        except RecsysExportError as exc:
            if len(members) == 1:  # k out of range, or an id that is no id (a boolean)
                out[members[0]] = exc
            else:  # find the request at fault: one call each
                for i in members:
                    self._group(reqs, [i], k, exclude_seen, out)
            return
        start = 0
        for i in members:
            req = reqs[i]
            stop = start + len(req.users)
            rows: Any = slice(start, stop)
            skipped: list[Any] = []
            unknown = res.fallback[rows]
            if req.unknown != "popular" and unknown.any():
                if req.unknown == "raise":
                    try:  # the runtime's message, naming the unknown ids
                        self.rec.user_map.to_index(req.users)
                    except RecsysExportError as exc:
                        out[i] = exc
                        start = stop
                        continue
                skipped = [u for u, bad in zip(req.users, unknown.tolist()) if bad]
                rows = np.arange(start, stop)[~unknown]
            out[i] = Recommendations(
                res.users[rows],
                res.items[rows],
                res.scores[rows],
                res.fallback[rows],
                None if res.names is None else res.names[rows],
                skipped,
                self.item_kind == "int",
            )
            start = stop

    def score_batch(self, reqs: list[ScoreRequest]) -> list[Any]:
        """Answer score requests with one engine call: ``float32[n]`` or an exception each."""
        out: list[Any] = [None] * len(reqs)
        users, items, spans = [], [], []
        start = 0
        for i, req in enumerate(reqs):
            try:
                u = self.rec.user_map.to_index(req.users)
                it = self.rec.item_map.to_index(req.items)
            except RecsysExportError as exc:
                out[i] = exc
                continue
            users.append(u)
            items.append(it)
            spans.append((i, start, start + u.size))
            start += u.size
        if spans:
            scores = self.rec.score(np.concatenate(users), np.concatenate(items), by_index=True)
            for i, lo, hi in spans:
                out[i] = scores[lo:hi]
        return out
