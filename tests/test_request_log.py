"""Request ids and the structured request log."""

from __future__ import annotations

import logging
import re

import orjson
import pytest
import requests

from conftest import ServerProcess, iso
from cortex.logs import JsonFormatter, PlainFormatter


@pytest.fixture
def request_log(caplog):
    caplog.set_level(logging.INFO, logger="cortex.request")
    return caplog


def _lines(caplog) -> list[dict]:
    return [orjson.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "cortex.request"]


def test_every_answer_has_a_request_id(cortex):
    made = cortex.post(cortex.bundle([{"type": "dau", "event_datetime": iso()}]))
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-Id"])
    kept = cortex.post(cortex.bundle([{"type": "dau", "event_datetime": iso()}]),
                       headers={"X-Request-Id": "lb-4f2a.9:1"})
    assert kept.headers["X-Request-Id"] == "lb-4f2a.9:1"
    for insane in ("has spaces", "<script>", "x" * 129, ""):
        replaced = cortex.client.get("/-/health", headers={"X-Request-Id": insane})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["X-Request-Id"])
    assert cortex.post(b"not json").headers["X-Request-Id"]
    assert cortex.client.get("/no/such/page").headers["X-Request-Id"]


def test_one_line_per_request_with_counts_and_reason(cortex, request_log):
    ok = cortex.post(cortex.bundle([{"type": "dau", "event_datetime": iso()},
                                    {"type": "nonsense", "event_datetime": iso()}]))
    refused = cortex.post(cortex.bundle([{"type": "event", "event_datetime": "yesterday"}]))
    lines = _lines(request_log)
    assert len(lines) == 2
    first, second = lines
    assert first["request_id"] == ok.headers["X-Request-Id"]
    assert (first["method"], first["path"], first["endpoint"], first["status"]) == ("POST", "/demo/1/track", "/<org>/1/track", 200)
    assert (first["org"], first["accepted"], first["duplicate"], first["rejected"]) == ("demo", 1, 0, 1)
    assert first["duration_ms"] > 0 and first["level"] == "INFO" and first["logger"] == "cortex.request"
    assert "reason" not in first
    assert second["request_id"] == refused.headers["X-Request-Id"]
    assert second["status"] == 400 and "event_datetime" in second["reason"]
    plain = PlainFormatter().format(next(r for r in request_log.records if r.name == "cortex.request"))
    assert f"request_id={first['request_id']} " in plain and "status=200" in plain


def test_health_checks_are_not_logged_at_info(cortex, request_log):
    cortex.client.get("/-/health")
    cortex.client.get("/-/ready")
    assert _lines(request_log) == []


def test_refused_events_carry_the_request_id(cortex):
    first = cortex.post(cortex.bundle([{"type": "dau", "event_datetime": iso()}, {"type": "bogus"}]))
    second = cortex.post(cortex.bundle([{"type": "economy", "event_datetime": iso(), "spend_amount": "x"}]),
                         headers={"X-Request-Id": "client-chosen-1"})
    assert second.status_code == 400
    ids = [row["request_id"] for row in cortex.state.queue.ingest_errors()]
    assert ids == [first.headers["X-Request-Id"], "client-chosen-1"]
    cortex.deliver()
    stored = sorted(row[0] for row in cortex.sql("SELECT request_id FROM ingest_errors"))
    assert stored == sorted(ids)


def test_an_old_queue_gets_the_request_id_column(tmp_path):
    import sqlite3

    from cortex.queue import SQLiteQueue

    path = tmp_path / "queue.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE ingest_errors (id INTEGER PRIMARY KEY, org TEXT NOT NULL, app_id INTEGER NOT NULL, "
                 "record_id TEXT NOT NULL, received_at TEXT NOT NULL, record BLOB NOT NULL, replayed_at REAL)")
    conn.close()
    SQLiteQueue(str(path)).create_schema()
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(ingest_errors)")]
    assert columns[-1] == "request_id"


@pytest.mark.slow
def test_json_logs_under_gunicorn_never_show_the_api_key(tmp_path):
    server = ServerProcess(tmp_path / "server", env={"CORTEX_LOGGING__LEVEL": "INFO", "CORTEX_LOGGING__FORMAT": "json"})
    key = server.api_key
    url = f"{server.url}/demo/1/track?current_time={iso()}"
    answers = []
    try:
        bundles = [
            {"api_key": key, "device_tag": "d", "events": [{"type": "dau", "event_datetime": iso()}]},
            # the key sent where it is echoed in a validation message
            {"api_key": key, "device_tag": "d", "events": [{"type": key, "event_datetime": iso()}]},
            {"api_key": key, "device_tag": key * 3, "os": key, "events": [{"type": "dau", "event_datetime": key}]},
            {"api_key": key, "events": "not a list"},
            {"api_key": key + "x", "device_tag": "d", "events": [{"type": "dau"}]},
        ]
        for bundle in bundles:
            answers.append(requests.post(url, data=orjson.dumps(bundle), timeout=10))
        answers.append(requests.post(f"{server.url}/other/1/track", data=orjson.dumps(bundles[0]), timeout=10))
        assert [a.status_code for a in answers] == [200, 400, 400, 400, 403, 403]
    finally:
        server.stop()
    log_text = (tmp_path / "server" / "server.log").read_text()
    assert key not in log_text
    assert key[:20] not in log_text
    lines = [orjson.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    # (the readiness probe of the fixture is logged too)
    request_lines = [line for line in lines if line["logger"] == "cortex.request" and line["path"].endswith("/track")]
    assert [line["request_id"] for line in request_lines] == [a.headers["X-Request-Id"] for a in answers]
    assert all(line.get("reason") for line in request_lines[1:])
    assert "[api key]" in request_lines[1]["reason"]


def _finish_record_fields() -> dict:
    return {"request_id": "4f2a", "method": "POST", "path": "/demo/1/track", "endpoint": "/<org>/1/track",
            "status": 400, "duration_ms": 1.25, "remote_addr": None, "bytes_in": 120, "org": "demo",
            "accepted": 0, "duplicate": 0, "rejected": 1, "reason": 'events[0]: "type" = bad value'}


@pytest.mark.parametrize("formatter", [PlainFormatter(), JsonFormatter()], ids=["plain", "json"])
def test_a_line_made_without_a_record_is_the_line_the_formatter_makes_of_one(formatter):
    log = logging.getLogger("cortex.request")
    fields = _finish_record_fields()
    for created in (1732460000.0, 1732460000.999, 1732460001.0405):
        record = log.makeRecord(log.name, logging.INFO, __file__, 1, "%s %s %d", ("POST", "/demo/1/track", 400),
                                None, "finish", {"fields": fields})
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        assert formatter.line(created, "INFO", log.name, "POST /demo/1/track 400", fields) == formatter.format(record)


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_request_lines_go_straight_to_cortexs_own_handler_and_through_logging_to_any_other(monkeypatch):
    import io

    root, log = logging.getLogger(), logging.getLogger("cortex.request")
    own = logging.StreamHandler(io.StringIO())
    own.cortex_handler = True
    own.setFormatter(PlainFormatter())
    monkeypatch.setattr(root, "handlers", [own])
    monkeypatch.setattr(log, "handlers", [])
    # setLevel, which also clears the loggers' cached answers to isEnabledFor
    levels = {logger: logger.level for logger in (root, log, logging.getLogger("cortex"))}
    for logger in levels:
        logger.setLevel(logging.INFO if logger is root else logging.NOTSET)
    try:
        run_request_lines(root, log, own)
    finally:
        for logger, level in levels.items():
            logger.setLevel(level)


def run_request_lines(root, log, own) -> None:
    from cortex.logs import line_handler
    from cortex.requestlog import RequestLog, RequestTrace

    request_log = RequestLog(record_metrics=False)

    def finish() -> None:
        trace = RequestTrace("4f2a")
        trace.note_events("demo", 1, 0, 0)
        request_log.finish(trace, "POST", "/demo/1/track", "/<org>/1/track", 200, "127.0.0.1", 80)

    assert line_handler(log, logging.INFO) is own
    made = []
    log.makeRecord = lambda *args, **kwargs: made.append(args) or logging.Logger.makeRecord(log, *args, **kwargs)
    try:
        finish()
    finally:
        del log.makeRecord
    written = own.stream.getvalue().splitlines()
    assert len(written) == 1 and made == [], "the line was written without a LogRecord"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO cortex.request: POST /demo/1/track 200 "
                        r"request_id=4f2a method=POST .* org=demo accepted=1 duplicate=0 rejected=0", written[0])
    # another handler anywhere on the way, or a filter: records, as logging makes them
    collect = Collect()
    for setup in (lambda: root.handlers.append(collect), lambda: log.addFilter(lambda record: True),
                  lambda: own.addFilter(lambda record: True)):
        setup()
        assert line_handler(log, logging.INFO) is None
        finish()
    assert len(own.stream.getvalue().splitlines()) == 4
    assert len(collect.records) == 3 and all(record.fields["org"] == "demo" for record in collect.records)
    log.filters.clear()
    own.filters.clear()
    root.handlers.remove(collect)
    # below the handler's level nothing is written either way
    own.setLevel(logging.WARNING)
    assert line_handler(log, logging.INFO) is None
    finish()
    assert len(own.stream.getvalue().splitlines()) == 4
