"""Connecting the driver to Ray: the one place that calls ``ray.init`` (the job and the bank build use it)."""

from __future__ import annotations

import logging
import os


def init_ray(address: str | None = None, *, verbose: bool = True, include_dashboard: bool | None = None) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS), else start a local instance; no-op when connected.

    ``verbose=False``: Ray's start-up banner, worker log forwarding and Ray Data's progress/status
    lines are off (errors still surface: a failing image becomes an error row, a failing job raises).
    ``include_dashboard``: for a local instance, start Ray's dashboard or not (None: Ray's default).
    """
    import ray

    if not verbose:
        for name in ("ray", "ray.data", "ray._private", "ray.util"):
            logging.getLogger(name).setLevel(logging.ERROR)
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
        if hasattr(ctx, "enable_rich_progress_bars"):
            ctx.enable_rich_progress_bars = False
        ctx.print_on_execution_start = False
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {} if verbose else {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, ignore_reinit_error=True, **({"log_to_driver": True} | kwargs))
    else:
        ray.init(**kwargs, **({} if include_dashboard is None else {"include_dashboard": include_dashboard}))
