"""This process's id, without a system call each time it is asked.

Connections and metrics must not cross a fork (a gunicorn worker opens its own), so the
request path asks for the process id several times per request to notice one.
``os.getpid()`` is a system call every time (C libraries no longer cache it); this module
reads it once and again in the child of every fork Python makes (``os.fork``, which
gunicorn and ``multiprocessing`` use).
"""

from __future__ import annotations

import os

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def current_pid() -> int:
    """The id of the calling process (as ``os.getpid()``)."""
    return _pid
