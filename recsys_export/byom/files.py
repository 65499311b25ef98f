"""Bring your own model from files: a class named on the command line, a state dict, ids.

What ``recsys-export export STATE_DICT --model ...`` needs before
:func:`recsys_export.byom.export_model` runs: :func:`load_class` (``MODULE:CLASS`` or
``file.py:CLASS``), :func:`module_from_files` (the module built and loaded, or the state
dict itself for the post's classes) and :func:`ids_from_file` (``--ids-from``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from recsys_export.byom.convert import _key_problems, load_state_dict_file
from recsys_export.byom.generic import _first_line
from recsys_export.errors import CheckpointError, ConfigError, RecsysExportError


def load_class(spec: str) -> type[nn.Module]:
    """``package.module:Class`` or ``path/to/file.py:Class`` -> the class (its code runs).

    Raises
    ------
    ConfigError
        A malformed spec, a module or file that cannot be imported, or no such class.
    """
    import importlib
    import importlib.util

    target, sep, cls_name = spec.rpartition(":")
    if not sep or not target or not cls_name.isidentifier():
        raise ConfigError(
            f"--model {spec!r}: expected mf, densenet, package.module:Class or file.py:Class"
        )
    try:
        if target.endswith(".py"):
            file = Path(target)
            if not file.is_file():
                raise ConfigError(f"--model {spec!r}: no file {file}")
            mod_spec = importlib.util.spec_from_file_location(f"_byom_{file.stem}", file)
            assert mod_spec is not None and mod_spec.loader is not None
            mod = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(target)
    except RecsysExportError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"--model {spec!r}: cannot import {target} ({_first_line(exc)})"
        ) from None
    cls = getattr(mod, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"--model {spec!r}: {target} has no nn.Module subclass {cls_name}")
    return cls


def module_from_files(
    state_path: str | Path, spec: str, model_args: Mapping[str, Any] | None = None
) -> nn.Module | dict[str, Tensor]:
    """What ``recsys-export export STATE_DICT --model SPEC`` exports.

    ``mf``/``densenet``: the state dict itself (sizes read from the tensors). Otherwise
    ``SPEC`` names a class, built with ``model_args`` and loaded with the state dict
    (strictly: a message lists missing and unexpected keys).
    """
    state = load_state_dict_file(state_path)
    if spec in ("mf", "densenet"):
        return state
    cls = load_class(spec)
    try:
        module = cls(**dict(model_args or {}))
    except Exception as exc:
        raise ConfigError(
            f"cannot build {cls.__name__}(**model_args): {_first_line(exc)}"
        ) from None
    expected = module.state_dict()
    problem = _key_problems(state, list(expected), [])
    if problem:
        raise CheckpointError(f"{state_path} does not match {cls.__name__}: {problem}")
    shapes = [
        f"{k} is {list(v.shape)}, {cls.__name__} expects {list(expected[k].shape)}"
        for k, v in state.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if shapes:
        raise CheckpointError(f"{state_path} does not match {cls.__name__}: " + "; ".join(shapes))
    module.load_state_dict(state)
    return module.eval()


def ids_from_file(path: str | Path, **columns: Any) -> Any:
    """The ratings file of ``--ids-from`` (:func:`recsys_export.data.read_ratings`)."""
    from recsys_export.data import read_ratings

    return read_ratings(path, **{k: v for k, v in columns.items() if v is not None})
