"""What each forked process (a gunicorn worker) must have of its own: its id and fresh
request ids."""

from __future__ import annotations

import os

import orjson

from cortex.pid import current_pid
from cortex.requestlog import new_request_id


def _in_children(task, children: int = 2) -> list:
    """Run ``task`` in ``children`` processes forked from this one; their results."""
    results = []
    for _ in range(children):
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe
            try:
                os.write(write_end, orjson.dumps(task()))
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            results.append(orjson.loads(pipe.read()))
        os.waitpid(child, 0)
    return results


def test_the_process_id_is_the_childs_after_a_fork():
    parent = current_pid()
    assert parent == os.getpid()
    for child_pid, os_pid in _in_children(lambda: (current_pid(), os.getpid())):
        assert child_pid == os_pid != parent


def test_forked_processes_make_different_request_ids():
    new_request_id()  # the parent's generator is in use before the fork, as in gunicorn
    first, second = _in_children(lambda: [new_request_id() for _ in range(5)])
    assert len(set(first) | set(second)) == 10
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in first + second)
