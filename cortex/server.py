"""Running Cortex under gunicorn: ``cortex serve`` and the hooks ``config/gunicorn.conf.py`` uses."""

from __future__ import annotations

import gc
from typing import Any

from gunicorn.app.base import BaseApplication


def freeze_startup_heap() -> None:
    """Exempt what exists once the app is loaded (modules, the app, its configuration) from
    the garbage collector's full collections, which would otherwise walk all of it each time.

    A dispatcher's batches keep thousands of records alive at once, so full collections
    come often; each walked the whole heap (in a worker delivering 100-event bundles,
    about 1 s of CPU in 25 s, against 0.1 s after freezing).  Startup garbage is collected
    first; what is frozen is never freed, as a process's startup objects never are anyway.
    """
    gc.collect()
    gc.freeze()


def post_worker_init(worker) -> None:
    """gunicorn hook: start the dispatcher election in each worker, after the fork."""
    from cortex.dispatcher import start_embedded

    freeze_startup_heap()
    app = worker.wsgi
    state = getattr(app, "extensions", {}).get("cortex")
    if state is not None:
        start_embedded(state)


def worker_exit(server, worker) -> None:
    """gunicorn hook: let the embedded dispatcher finish its batch before the worker exits."""
    from cortex.dispatcher import stop_embedded
    from cortex.metrics import flush

    stop_embedded()
    flush()


def on_starting(server) -> None:
    """gunicorn hook (master, before the workers fork): put prometheus-client in
    multiprocess mode and remove the values of processes that are gone."""
    from cortex.config import load_config
    from cortex.metrics import prepare_multiprocess_dir

    prepare_multiprocess_dir(load_config(), clean=True)


def when_ready(server) -> None:
    """gunicorn hook (master, listening): serve ``/metrics`` on ``metrics.bind`` if set."""
    from cortex.config import load_config
    from cortex.metrics_listener import start_metrics_listener

    start_metrics_listener(load_config(), log=server.log)


def child_exit(server, worker) -> None:
    """gunicorn hook (master, a worker is gone, even by SIGKILL): drop its live gauges."""
    from cortex.metrics import mark_worker_dead

    mark_worker_dead(worker.pid)


def rate_limit_warning(config: dict, workers: int):
    """A gunicorn ``when_ready`` hook that warns when rate limits are counted per worker."""
    from cortex.ratelimit import per_worker_warning

    def when_ready(server) -> None:
        if "rate_limits" not in config:  # options made for another app (the benchmark's floor)
            return
        message = per_worker_warning(config["rate_limits"], server.cfg.workers or workers)
        if message:
            server.log.warning("%s", message)

    return when_ready


def when_ready_in_order(*hooks):
    """One gunicorn ``when_ready(server)`` hook that calls ``hooks`` in order (gunicorn
    checks a hook's arity, so this takes exactly one argument)."""

    def when_ready_all(server) -> None:
        for hook in hooks:
            hook(server)

    return when_ready_all


def gunicorn_options(config: dict, bind: str | None = None, workers: int | None = None) -> dict[str, Any]:
    """gunicorn settings from Cortex's ``[server]`` table (command-line values win)."""
    server = config["server"]
    return {
        "bind": bind or server["bind"],
        "workers": workers or server["workers"],
        "threads": server["threads"],
        "worker_class": server["worker_class"],
        "timeout": server["timeout"],
        "graceful_timeout": server["graceful_timeout"],
        "keepalive": server["keepalive"],
        "max_requests": server["max_requests"],
        "max_requests_jitter": max(1, server["max_requests"] // 10) if server["max_requests"] else 0,
        "accesslog": server.get("accesslog"),
        "limit_request_line": server["limit_request_line"],
        "limit_request_fields": server["limit_request_fields"],
        "limit_request_field_size": server["limit_request_field_size"],
        # gunicorn's control socket is not used by Cortex; several servers on one host would share it
        "control_socket_disable": True,
        "post_worker_init": post_worker_init,
        "worker_exit": worker_exit,
        "on_starting": on_starting,
        "when_ready": when_ready_in_order(when_ready, rate_limit_warning(config, workers or server["workers"])),
        "child_exit": child_exit,
    }


class CortexServer(BaseApplication):
    """gunicorn running the Cortex app factory in every worker (no preloading: each worker
    opens its own database connections after the fork)."""

    def __init__(self, app_factory, options: dict[str, Any]):
        self.app_factory = app_factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if value is not None and key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self):
        return self.app_factory()
