"""The dispatcher: per-sink cursors, retries, dead letters, replay, isolation of sinks."""

from __future__ import annotations

import threading
import time
import pytest

from conftest import iso
from conftest import make_plugin
from cortex import PermanentError, Sink, hookimpl
from cortex.dispatcher import Dispatcher


class MemorySink(Sink):
    """Keeps what it is given; can be told to fail."""

    type_name = "memory"
    stores: dict[str, list] = {}
    temporary_failures: dict[str, int] = {}
    refuse_marker = "poison"

    def open(self):
        self.stores.setdefault(self.name, [])

    def write(self, records):
        if self.temporary_failures.get(self.name, 0) > 0:
            self.temporary_failures[self.name] -= 1
            raise ConnectionError("database is down")
        if any(r.get("kingdom") == self.refuse_marker for r in records):
            raise PermanentError("value out of range")
        self.stores[self.name].extend(records)


class HangingSink(MemorySink):
    """Never returns from write until released."""

    type_name = "hanging"
    release = threading.Event()
    entered = threading.Event()

    def write(self, records):
        self.entered.set()
        self.release.wait(30)
        super().write(records)


def _register_sinks(register):
    register(MemorySink)
    register(HangingSink)


test_plugin = make_plugin("test_sinks", register_sinks=hookimpl(_register_sinks))


@pytest.fixture(autouse=True)
def _reset():
    MemorySink.stores.clear()
    MemorySink.temporary_failures.clear()
    HangingSink.release.clear()
    HangingSink.entered.clear()
    yield
    HangingSink.release.set()


def two_sinks(make_cortex, **settings):
    return make_cortex(
        plugins=[test_plugin],
        sinks={"a": {"type": "memory"}, "b": {"type": "memory"}},
        dispatcher={"retry_initial": 0.01, "retry_max": 0.05, "poll_interval": 0.01, **settings},
    )


def post_events(cortex, count, kingdom="k", start=0):
    events = [{"type": "event", "event_datetime": iso(), "event_index": start + i, "kingdom": kingdom}
              for i in range(count)]
    for i in range(0, count, 100):
        assert cortex.post(cortex.bundle(events[i:i + 100])).status_code == 200


def test_every_sink_gets_everything_with_its_own_cursor(make_cortex):
    cortex = two_sinks(make_cortex, batch_size=50)
    post_events(cortex, 230)
    cortex.deliver()
    assert len(MemorySink.stores["a"]) == len(MemorySink.stores["b"]) == 230
    assert all("context" not in r for r in MemorySink.stores["a"])
    status = cortex.state.queue.sink_status(["a", "b"])
    assert status["a"]["delivered"] == status["b"]["delivered"] == 230
    assert status["a"]["pending"] == 0
    assert cortex.state.queue.depth()["entries"] == 0, "delivered entries are pruned"


def test_temporary_failures_are_retried_without_loss(make_cortex):
    cortex = two_sinks(make_cortex)
    MemorySink.temporary_failures["a"] = 3
    post_events(cortex, 10)
    cortex.deliver()
    assert len(MemorySink.stores["a"]) == 10
    assert cortex.state.queue.dead_letters() == []


def test_permanent_failure_dead_letters_only_the_refused_records(make_cortex):
    cortex = two_sinks(make_cortex)
    post_events(cortex, 40)
    post_events(cortex, 1, kingdom="poison", start=100)
    post_events(cortex, 9, start=200)
    cortex.deliver()
    assert len(MemorySink.stores["a"]) == 49
    letters = cortex.state.queue.dead_letters("a")
    assert [l["record"]["kingdom"] for l in letters] == ["poison"]
    assert "value out of range" in letters[0]["error"]
    # after the sink is fixed, cortex replay delivers the dead letters
    MemorySink.refuse_marker = "nothing"
    try:
        result = cortex.cli("replay", "--dead-letters", "--sink", "a")
    finally:
        MemorySink.refuse_marker = "poison"
    assert result.exit_code == 0, result.output
    assert cortex.state.queue.dead_letters("a") == []


def test_a_hanging_sink_does_not_hold_up_the_others(make_cortex):
    cortex = make_cortex(
        plugins=[test_plugin],
        sinks={"fast": {"type": "memory"}, "stuck": {"type": "hanging"}},
        dispatcher={"poll_interval": 0.01},
    )
    post_events(cortex, 20)
    dispatcher = Dispatcher(cortex.state)
    dispatcher.start()
    try:
        deadline = time.monotonic() + 10
        while len(MemorySink.stores.get("fast", [])) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(MemorySink.stores["fast"]) == 20
        assert MemorySink.stores.get("stuck", []) == []
        HangingSink.release.set()
        while len(MemorySink.stores.get("stuck", [])) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(MemorySink.stores["stuck"]) == 20, "the stuck sink catches up once it returns"
    finally:
        HangingSink.release.set()
        dispatcher.shutdown()
        dispatcher.join(5)


def test_a_hanging_sink_holds_up_no_request_of_the_dispatchers_process(make_cortex):
    # the dispatcher's batches and the process's request commits take turns
    # (cortex.turns); a batch that hangs must not keep the requests waiting
    cortex = make_cortex(plugins=[test_plugin], sinks={"stuck": {"type": "hanging"}},
                         dispatcher={"poll_interval": 0.01})
    post_events(cortex, 5)
    dispatcher = Dispatcher(cortex.state)
    dispatcher.start()
    try:
        assert HangingSink.entered.wait(10), "the sink is writing a batch"
        answers = []
        request = threading.Thread(target=lambda: answers.append(cortex.post(cortex.bundle(
            [{"type": "event", "event_datetime": iso(), "event_index": 100, "kingdom": "k"}])).status_code))
        request.start()
        request.join(5)
        assert answers == [200], "the request is answered while the sink still hangs"
    finally:
        HangingSink.release.set()
        dispatcher.shutdown()
        dispatcher.join(5)


def test_a_sink_that_cannot_open_is_retried(make_cortex):
    cortex = two_sinks(make_cortex)
    post_events(cortex, 5)
    calls = {"n": 0}
    original = MemorySink.open

    def flaky_open(self):
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("not yet")
        original(self)

    MemorySink.open = flaky_open
    try:
        cortex.deliver()
    finally:
        MemorySink.open = original
    assert len(MemorySink.stores["a"]) == 5


def test_replay_errors_after_the_app_leaves_strict_mode(cortex):
    cortex.state.control.set_app_strict("demo", "default", True)
    cortex.state.keys.clear()
    events = [{"type": "dau", "event_datetime": iso()}, {"type": "economy", "event_datetime": iso()}]
    assert cortex.post(cortex.bundle(events)).status_code == 400
    cortex.state.control.set_app_strict("demo", "default", False)
    result = cortex.cli("replay", "--errors")
    assert result.exit_code == 0, result.output
    assert '"accepted": 1' in result.output and '"still_invalid": 1' in result.output
    cortex.deliver()
    assert cortex.sql("SELECT type FROM events") == [("dau",)]
    # replaying again changes nothing
    again = cortex.cli("replay", "--errors")
    assert '"accepted": 0' in again.output
