"""gunicorn settings for running Cortex directly with gunicorn.

    gunicorn -c config/gunicorn.conf.py wsgi:app

``cortex serve`` does the same from the ``[server]`` table of the Cortex configuration;
use this file when a process manager expects a gunicorn command line.  Values come from the
same Cortex configuration (``$CORTEX_CONFIG`` and ``CORTEX_*`` variables), so both ways of
starting agree.
"""

from cortex.config import load_config
from cortex.server import gunicorn_options

_options = gunicorn_options(load_config())

bind = _options["bind"]
workers = _options["workers"]
threads = _options["threads"]
worker_class = _options["worker_class"]
timeout = _options["timeout"]
graceful_timeout = _options["graceful_timeout"]
keepalive = _options["keepalive"]
max_requests = _options["max_requests"]
max_requests_jitter = _options["max_requests_jitter"]
limit_request_line = _options["limit_request_line"]
limit_request_fields = _options["limit_request_fields"]
limit_request_field_size = _options["limit_request_field_size"]

# Each worker builds its own app after the fork (no preload): database connections are
# never shared between processes.
preload_app = False

# Start the embedded dispatcher election in every worker; one of them wins.
post_worker_init = _options["post_worker_init"]
worker_exit = _options["worker_exit"]

# Master hooks: Prometheus multiprocess mode set up before the workers fork, /metrics on
# metrics.bind if set, the values of dead workers accounted for, and a warning at startup
# when rate limits are counted per worker (memory storage, several workers).
on_starting = _options["on_starting"]
when_ready = _options["when_ready"]
child_exit = _options["child_exit"]
