"""The same app as a Ray Serve deployment (``recsys-export serve --ray --replicas N``).

Every replica builds the app of :func:`~recsys_export.serve.app.create_app` from the
same settings (its own batcher, watcher and metrics); Ray Serve's proxy binds the host
and port and spreads requests over the replicas. Ray is imported inside the functions:
this module loads without it (the ``ray`` extra brings ``ray[serve]``).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from recsys_export.serve.config import ServeConfig

__all__ = ["APP_NAME", "deployment", "start_on_ray"]

#: The Ray Serve application name.
APP_NAME = "recsys-export"


def deployment(config: ServeConfig, replicas: int, cpus_per_replica: float = 1.0) -> Any:
    """A bound Ray Serve deployment of the app (``serve.run`` it).

    Parameters
    ----------
    config : ServeConfig
        The settings every replica builds its app from.
    replicas : int
        Number of replicas.
    cpus_per_replica : float
        Ray CPUs each replica reserves.
    """
    from ray import serve

    def build_app() -> Any:
        from recsys_export.serve.app import create_app

        return create_app(config)

    ingress = serve.ingress(build_app)()
    return serve.deployment(
        ingress,
        name="recsys",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica},
    ).bind()


#: Ray Serve replicas of ``serve --ray`` when none are asked for.
DEFAULT_REPLICAS = 1


def start_on_ray(
    config: ServeConfig,
    *,
    replicas: int = DEFAULT_REPLICAS,
    address: str | None = None,
) -> str:
    """Start Ray (or join ``address``), deploy ``replicas`` replicas behind Ray's proxy.

    Returns once the replicas are up, with the proxy's URL; ``ray.serve.shutdown()``
    stops them.
    """
    import ray
    from ray import serve

    from recsys_export.core.validation import check_int

    replicas = check_int("--replicas", replicas, low=1)
    config.check()
    cpus = os.cpu_count() or 1
    if config.threads is None:  # replicas share the cores
        config = replace(config, threads=max(1, cpus // replicas))
    if not ray.is_initialized():
        if address is None:
            ray.init(num_cpus=max(cpus, replicas), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    serve.start(http_options={"host": config.host, "port": config.port})
    per_replica = min(1.0, max(cpus, replicas) / replicas)
    serve.run(
        deployment(config, replicas, per_replica),
        name=APP_NAME,
        route_prefix="/",
        blocking=False,
    )
    from recsys_export.serve.server import url_of

    return url_of(config.host, config.port)
