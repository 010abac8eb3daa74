"""The ``file`` sink: the conformance suite plus its layout, rotation and crash recovery."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import orjson
import pytest

from cortex.sinks import PermanentError, SinkContext
from cortex.testing import SinkConformance, make_record, sample_records
from cortex.testing.records import CONTEXT_VALUES
from cortex_file import FileSink, register_sinks
from cortex_file.locking import DirectoryLocked

DAY = "2024-06-01T13:45:30.000Z"
NEXT_DAY = "2024-06-02T00:00:00.000Z"


def make_file_sink(tmp_path: Path, **options) -> FileSink:
    """A file sink (not opened) writing under ``tmp_path/data/events``."""
    return FileSink("archive", options, SinkContext(data_dir=tmp_path / "data"))


def read_lines(path: Path) -> list[dict]:
    """The records of one NDJSON file."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def read_all(root: Path) -> list[dict]:
    """Every record in every NDJSON file under ``root``."""
    return [record for path in sorted(root.rglob("*.ndjson")) for record in read_lines(path)]


class TestFileSinkConformance(SinkConformance):
    """The shared sink conformance suite, run on the file sink."""

    def make_sink(self, tmp_path):
        """A file sink under tmp_path, fsync on as by default."""
        return make_file_sink(tmp_path)

    def stored_records(self, sink):
        """Every line of every file the sink wrote."""
        return read_all(sink.path)


@pytest.fixture
def sink(tmp_path):
    """An opened file sink with a small rotation size; closed afterwards."""
    file_sink = make_file_sink(tmp_path, max_bytes=4096, fsync=False)
    file_sink.open()
    yield file_sink
    file_sink.close()


def test_registers_through_the_hook():
    """register_sinks registers FileSink, type name ``file``, idempotent."""
    registered = []
    register_sinks(registered.append)
    assert registered == [FileSink]
    assert FileSink.type_name == "file" and FileSink.idempotent


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_bytes": 0}, "max_bytes must be a positive integer"),
        ({"max_bytes": -5}, "max_bytes must be a positive integer"),
        ({"max_bytes": "100MB"}, "max_bytes must be a positive integer"),
        ({"max_bytes": True}, "max_bytes must be a positive integer"),
        ({"fsync": "yes"}, "fsync must be true or false"),
        ({"path": ""}, "path must be a directory path"),
        ({"max_byte": 10}, "unknown option(s) max_byte"),
    ],
)
def test_invalid_options_are_refused(tmp_path, options, message):
    """Bad options fail in __init__ with a message naming the sink and the option."""
    with pytest.raises(ValueError) as error:
        make_file_sink(tmp_path, **options)
    assert message in str(error.value) and "'archive'" in str(error.value)


def test_path_defaults_and_relative_paths(tmp_path):
    """path defaults to {data_dir}/events; relative paths and {data_dir} resolve."""
    data = tmp_path / "data"
    assert make_file_sink(tmp_path).path == data / "events"
    assert make_file_sink(tmp_path, path="out").path == data / "out"
    assert make_file_sink(tmp_path, path="{data_dir}/x").path == data / "x"
    assert make_file_sink(tmp_path, path=str(tmp_path / "abs")).path == tmp_path / "abs"
    summary = make_file_sink(tmp_path).describe()
    assert summary["max_bytes"] == 100 * 1024 * 1024 and summary["fsync"] is True


def test_layout_by_org_and_utc_day(sink):
    """One file per org and UTC day of received_at (offsets converted to UTC)."""
    records = [
        make_record("track", "install", org="acme", received_at=DAY),
        make_record("track", "dau", org="globex", received_at=DAY),
        make_record("track", "dau", org="acme", received_at="2024-06-01T23:30:00+00:00"),
        # 01:30 at UTC+02:00 on the 2nd is 23:30 UTC on the 1st
        make_record("track", "dau", org="acme", received_at="2024-06-02T01:30:00+02:00"),
        make_record("track", "event", org="acme", received_at=NEXT_DAY),
    ]
    sink.write(records)
    acme, globex = sink.path / "acme", sink.path / "globex"
    assert sorted(p.name for p in acme.iterdir()) == ["2024-06-01.ndjson", "2024-06-02.ndjson"]
    assert [r["id"] for r in read_lines(acme / "2024-06-01.ndjson")] == [
        records[0]["id"], records[2]["id"], records[3]["id"]
    ]
    assert [r["id"] for r in read_lines(acme / "2024-06-02.ndjson")] == [records[4]["id"]]
    assert [r["id"] for r in read_lines(globex / "2024-06-01.ndjson")] == [records[1]["id"]]


def test_lines_are_the_records_without_context(sink):
    """Each line is the record as received minus context, whose values appear nowhere."""
    records = sample_records()
    sink.write(records)
    raw = b"".join(p.read_bytes() for p in sink.path.rglob("*.ndjson"))
    for value in CONTEXT_VALUES.values():
        assert value.encode() not in raw
    expected = [{k: v for k, v in r.items() if k != "context"} for r in records]
    by_id = lambda record: record["id"]  # noqa: E731
    assert sorted(read_all(sink.path), key=by_id) == sorted(expected, key=by_id)


def test_rejected_records_go_to_the_errors_file(sink):
    """Rejected records go to {day}.errors.ndjson, with reasons and payload."""
    good = make_record("track", "economy", received_at=DAY)
    bad = make_record("rejected", "economy", received_at=DAY, seq=good["seq"])
    sink.write([good, bad])
    org = sink.path / "acme"
    assert [r["id"] for r in read_lines(org / "2024-06-01.ndjson")] == [good["id"]]
    errors = read_lines(org / "2024-06-01.errors.ndjson")
    assert [r["id"] for r in errors] == [bad["id"]]
    assert errors[0]["reasons"] == bad["reasons"] and errors[0]["payload"] == bad["payload"]


def test_rotation_by_size(sink):
    """A file that would pass max_bytes continues in .1, .2 ...; order is kept."""
    records = [make_record("track", "event", received_at=DAY) for _ in range(40)]
    sink.write(records[:25])
    sink.write(records[25:])
    files = sorted((sink.path / "acme").iterdir(), key=lambda p: (len(p.name), p.name))
    names = [p.name for p in files]
    assert names[0] == "2024-06-01.ndjson" and names[1] == "2024-06-01.1.ndjson"
    assert len(names) > 3
    for path in files:
        size = path.stat().st_size
        assert size <= 4096 or len(path.read_bytes().splitlines()) == 1
    assert [r["id"] for path in files for r in read_lines(path)] == [r["id"] for r in records]


def test_rotation_continues_after_reopen(tmp_path):
    """After a restart the newest part is appended to, full parts are left alone."""
    first = make_file_sink(tmp_path, max_bytes=4096, fsync=False)
    first.open()
    first.write([make_record("track", "event", received_at=DAY) for _ in range(12)])
    first.close()
    before = sorted(p.name for p in (first.path / "acme").iterdir())
    second = make_file_sink(tmp_path, max_bytes=4096, fsync=False)
    second.open()
    second.write([make_record("track", "event", received_at=DAY) for _ in range(12)])
    second.close()
    after = sorted(p.name for p in (second.path / "acme").iterdir())
    assert set(before) < set(after)
    for name in before[:-1]:  # full parts are never appended to again
        assert (first.path / "acme" / name).stat().st_size <= 4096


def test_a_line_larger_than_max_bytes_gets_a_file_of_its_own(sink):
    """An over-sized line is written whole, alone in its part."""
    big = make_record("app_log", "log", received_at=DAY, log_line="x" * 10000)
    small = make_record("app_log", "log", received_at=DAY)
    sink.write([big, small])
    org = sink.path / "acme"
    assert [r["id"] for r in read_lines(org / "2024-06-01.ndjson")] == [big["id"]]
    assert [r["id"] for r in read_lines(org / "2024-06-01.1.ndjson")] == [small["id"]]


def test_torn_line_is_repaired_on_open(tmp_path, caplog):
    """A partial last line (crash mid-write) is cut off on open; its re-send lands."""
    records = [make_record("track", "dau", received_at=DAY) for _ in range(3)]
    first = make_file_sink(tmp_path)
    first.open()
    first.write(records)
    first.close()
    path = first.path / "acme" / "2024-06-01.ndjson"
    whole = path.read_bytes()
    torn = make_record("track", "dau", received_at=DAY)
    path.write_bytes(whole + orjson.dumps(torn)[:57])

    second = make_file_sink(tmp_path)
    with caplog.at_level(logging.WARNING):
        second.open()
    assert path.read_bytes() == whole
    assert "torn line" in caplog.text
    # the torn record was never acknowledged: its re-send is written, whole
    second.write([torn])
    second.close()
    assert [r["id"] for r in read_lines(path)] == [r["id"] for r in records] + [torn["id"]]


def test_zero_bytes_after_a_power_cut_are_cut_off(tmp_path):
    """Zero bytes after the last newline are removed on open."""
    first = make_file_sink(tmp_path)
    first.open()
    first.write([make_record("track", "dau", received_at=DAY)])
    first.close()
    path = first.path / "acme" / "2024-06-01.ndjson"
    whole = path.read_bytes()
    path.write_bytes(whole + b"\0" * 4096)
    second = make_file_sink(tmp_path)
    second.open()
    second.close()
    assert path.read_bytes() == whole


def test_resent_batch_after_crash_is_skipped(tmp_path):
    """A batch re-sent after a crash that followed the write is not stored again."""
    batch = sample_records() + sample_records(org="globex")
    first = make_file_sink(tmp_path)
    first.open()
    first.write(batch)
    # crash: the dispatcher never saw write() return, so it re-sends the batch
    second = make_file_sink(tmp_path)
    first.close()  # (a dead process's lock is gone)
    second.open()
    second.write(copy.deepcopy(batch) + sample_records())
    second.close()
    ids = [r["id"] for r in read_all(second.path)]
    assert len(ids) == len(set(ids)) == len(batch) + 11
    assert second.skipped == len(batch)


def test_resent_batch_partly_written_before_the_crash(tmp_path):
    """Only the part of a re-sent batch that never reached the file is written."""
    seq = 10**9
    batch = [make_record("track", "event", received_at=DAY, seq=seq + i // 4) for i in range(12)]
    first = make_file_sink(tmp_path)
    first.open()
    first.write(batch[:6])  # crash in the middle of a queue entry (seq + 1)
    first.close()
    second = make_file_sink(tmp_path)
    second.open()
    second.write(copy.deepcopy(batch))
    second.close()
    ids = [r["id"] for r in read_all(second.path)]
    assert ids == [r["id"] for r in batch]


def test_queue_entry_straddling_a_rotation_is_recognised(tmp_path):
    """Ids of the highest seq are found across a rotation boundary."""
    seq = 2 * 10**9
    batch = [make_record("track", "event", received_at=DAY, seq=seq) for _ in range(20)]
    first = make_file_sink(tmp_path, max_bytes=4096)
    first.open()
    first.write(batch)
    first.close()
    assert len(list((first.path / "acme").iterdir())) > 2
    second = make_file_sink(tmp_path, max_bytes=4096)
    second.open()
    second.write(copy.deepcopy(batch))
    second.close()
    assert len(read_all(second.path)) == 20


def test_old_day_stream_is_checked_lazily(tmp_path):
    """A re-send to an older day's file (not scanned on open) is still skipped."""
    old = [make_record("track", "dau", received_at=DAY) for _ in range(3)]
    new = [make_record("track", "dau", received_at=NEXT_DAY) for _ in range(3)]
    first = make_file_sink(tmp_path)
    first.open()
    first.write(old + new)
    first.close()
    second = make_file_sink(tmp_path)
    second.open()
    second.write(copy.deepcopy(old + new))
    second.close()
    assert len(read_all(second.path)) == 6


def test_records_without_seq_are_always_written(sink):
    """Without an integer seq nothing can be recognised: the record is written."""
    record = make_record("track", "dau", received_at=DAY, seq=None)
    sink.write([record])
    sink.write([record])
    assert len(read_all(sink.path)) == 2


def test_unsafe_org_names_stay_inside_the_directory(sink):
    """An org like ../../etc is escaped into one directory under path."""
    record = make_record("track", "dau", org="../../etc", received_at=DAY)
    sink.write([record])
    written = list(sink.path.rglob("*.ndjson"))
    assert len(written) == 1 and written[0].parent.parent == sink.path
    assert ".." not in written[0].parent.name


@pytest.mark.parametrize("field", ["org", "received_at"])
def test_records_without_org_or_day_are_refused_permanently(sink, field):
    """No org or no received_at: PermanentError (the dead-letter store takes it)."""
    with pytest.raises(PermanentError):
        sink.write([make_record("track", "dau", **{field: None})])


def test_unserialisable_record_is_refused_before_anything_is_written(sink):
    """A record orjson cannot encode fails the batch before any line is written."""
    good = make_record("track", "dau", received_at=DAY)
    bad = make_record("track", "dau", received_at=DAY, extra={"x": object()})
    with pytest.raises(PermanentError):
        sink.write([good, bad])
    sink.write([good])
    assert [r["id"] for r in read_all(sink.path)] == [good["id"]]


def test_failed_write_is_retried_cleanly(sink, monkeypatch):
    """After an OSError mid-write the retry re-reads the files and writes each once."""
    records = [make_record("track", "dau", received_at=DAY) for _ in range(3)]

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sink, "_write_part", broken)
    with pytest.raises(OSError):
        sink.write(records)
    monkeypatch.undo()
    sink.write(records)
    assert [r["id"] for r in read_all(sink.path)] == [r["id"] for r in records]


def test_two_sinks_cannot_share_a_directory(tmp_path):
    """A second sink on a locked directory fails to open with a clear error."""
    first = make_file_sink(tmp_path)
    first.open()
    try:
        with pytest.raises(DirectoryLocked):
            make_file_sink(tmp_path).open()
    finally:
        first.close()


def test_write_before_open_is_an_error(tmp_path):
    """write() on a sink that is not open raises."""
    with pytest.raises(RuntimeError):
        make_file_sink(tmp_path).write([make_record()])
