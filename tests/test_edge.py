"""Hostile input at the ingest edge: compressed bodies and bombs, caps enforced before reading,
depth and string bounds, bad encodings, control characters, and answers that echo nothing.

Every bad request gets a clear 4xx, and the request after it is served as if nothing happened.
"""

from __future__ import annotations

import gzip
import io
import tracemalloc
import zlib

import orjson
import pytest
from flask import Flask

from conftest import iso, make_plugin
from cortex import hookimpl

GOOD_EVENT = {"type": "dau", "event_datetime": iso()}


def good_request_still_served(cortex) -> None:
    """The service carries on: a fresh, valid bundle is accepted."""
    served = getattr(cortex, "_served", 0)
    cortex._served = served + 1
    bundle = cortex.bundle([{"type": "event", "event_datetime": iso(), "event_index": 10_000 + served}])
    response = cortex.post(bundle)
    assert (response.status_code, response.data) == (200, b"OK")


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9)


def bomb(size: int) -> bytes:
    """A gzip body of ``size`` zero bytes, streamed so the test itself stays small."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as handle:
        chunk = b"\0" * (1 << 20)
        for _ in range(size // len(chunk)):
            handle.write(chunk)
    return out.getvalue()


# -- compressed bodies -------------------------------------------------------------------

@pytest.mark.parametrize("encoding, compress", [
    ("gzip", gzip_bytes),
    ("x-gzip", gzip_bytes),
    ("deflate", zlib.compress),                                     # RFC 1950, as the standard says
    ("deflate", lambda data: _raw_deflate(data)),                   # raw deflate, as some clients send
    ("gzip, identity", gzip_bytes),
    ("GZIP", gzip_bytes),
], ids=["gzip", "x-gzip", "deflate-zlib", "deflate-raw", "with-identity", "upper-case"])
def test_compressed_bundles_are_accepted(cortex, encoding, compress):
    events = [{"type": "event", "event_datetime": iso(), "event_index": i, "kingdom": "compressed"} for i in range(50)]
    body = compress(orjson.dumps(cortex.bundle(events)))
    response = cortex.post(body, headers={"Content-Encoding": encoding})
    assert (response.status_code, response.data) == (200, b"OK")
    assert len([r for r in cortex.records() if r.get("kingdom") == "compressed"]) == 50


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


def test_gzip_members_one_after_another_are_one_body(cortex):
    text = orjson.dumps(cortex.bundle([GOOD_EVENT]))
    body = gzip_bytes(text[:40]) + gzip_bytes(text[40:])
    assert cortex.post(body, headers={"Content-Encoding": "gzip"}).status_code == 200


def test_compression_bomb_is_413_with_bounded_memory(cortex):
    body = bomb(256 << 20)  # 256 MiB of zeros in about 250 KB
    assert len(body) < cortex.state.config["ingest"]["max_body_bytes"]
    tracemalloc.start()
    try:
        response = cortex.post(body, headers={"Content-Encoding": "gzip"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 413
    assert "decompresses to more than" in response.data.decode()
    # the decoder stops one byte past ingest.max_decoded_bytes (8 MiB): nowhere near 256 MiB
    assert peak < 40 << 20, f"peak {peak / 2**20:.0f} MiB"
    good_request_still_served(cortex)


def test_compression_ratio_beyond_the_body_cap_is_413(make_cortex):
    cortex = make_cortex(ingest={"max_compression_ratio": 20})
    # 3 MiB of one repeated event compresses far better than 20:1
    event = {"type": "dau", "event_datetime": iso(), "note": "x" * 1000}
    text = orjson.dumps(cortex.bundle([event] * 100)) + b" " * (3 << 20)
    response = cortex.post(gzip_bytes(text), headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "over 20 times its size" in response.data.decode()
    good_request_still_served(cortex)


def test_a_small_body_may_always_decode_to_the_body_cap(make_cortex):
    # highly compressible but no larger, decoded, than an uncompressed body may be
    cortex = make_cortex(ingest={"max_compression_ratio": 2})
    event = {"type": "dau", "event_datetime": iso(), "note": "y" * 1000}
    body = gzip_bytes(orjson.dumps(cortex.bundle([event] * 50)))
    assert cortex.post(body, headers={"Content-Encoding": "gzip"}).status_code == 200


@pytest.mark.parametrize("encoding, body, status, message", [
    ("gzip", b"this is not gzip", 400, "not valid gzip data"),
    ("deflate", b"\x78\x9c not deflate", 400, "not valid deflate data"),
    ("gzip", gzip_bytes(b'{"api_key": "k", "events": []}')[:-12], 400, "cut short"),
    ("br", b"{}", 415, "not supported"),
    ("gzip, deflate", b"{}", 415, "more than one Content-Encoding"),
    ("<script>alert(1)</script>", b"{}", 415, "not supported"),
], ids=["not-gzip", "not-deflate", "truncated", "brotli", "stacked", "markup"])
def test_bad_content_encodings_get_a_clear_answer(cortex, encoding, body, status, message):
    response = cortex.post(body, headers={"Content-Encoding": encoding})
    assert response.status_code == status
    text = response.data.decode()
    assert message in text and response.headers["Content-Type"] == "text/plain"
    assert "<script>" not in text
    good_request_still_served(cortex)


# -- the body cap comes before the body ------------------------------------------------

class RecordingStream(io.BytesIO):
    """A request body that remembers how much of it was read."""

    bytes_read = 0

    def read(self, size=-1):
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_declared_length_over_the_cap_is_413_before_reading(cortex):
    body = RecordingStream(b"x" * (2 << 20))
    response = cortex.client.post("/demo/1/track", input_stream=body, content_type="text/plain",
                                  headers={"Content-Length": str(2 << 20)})
    assert response.status_code == 413
    assert "the limit is 1048576 bytes" in response.data.decode()
    assert body.bytes_read == 0
    good_request_still_served(cortex)


# -- JSON the parser allows but Cortex does not -------------------------------------------

def nested(depth: int) -> dict:
    node: dict = {}
    root = node
    for _ in range(depth - 1):
        node["x"] = {}
        node = node["x"]
    return root


@pytest.mark.parametrize("depth", [33, 300, 1000])
def test_nesting_deeper_than_the_limit_is_400(cortex, depth):
    # 300 deep used to fail when the rejected event was queued (a 500)
    deep = b'{"x":' * (depth - 3) + b"{}" + b"}" * (depth - 3)
    good = orjson.dumps(GOOD_EVENT)
    body = orjson.dumps(cortex.bundle([])).replace(b'"events":[]', b'"events":[' + good + b',{"type":"dau","deep":' + deep + b"}]")
    response = cortex.post(body)
    assert response.status_code == 400
    assert "nests arrays and objects more than 32 deep" in response.data.decode()
    good_request_still_served(cortex)


def test_nesting_within_the_limit_is_fine(cortex):
    event = {"type": "dau", "event_datetime": iso(), "deep": nested(25)}
    assert cortex.post(cortex.bundle([GOOD_EVENT, {"type": "nope", "deep": nested(25)}, event])).status_code == 200


@pytest.mark.parametrize("where", ["value", "key", "unknown-type"])
def test_strings_longer_than_the_limit_are_400(cortex, where):
    huge = "a" * 262_145
    event = {"type": "dau", "event_datetime": iso()}
    if where == "value":
        event["note"] = huge
    elif where == "key":
        event[huge] = 1
    else:
        event["type"] = huge
    response = cortex.post(cortex.bundle([event]))
    assert response.status_code == 400
    assert "longer than 262144 characters" in response.data.decode()
    assert len(response.data) < 300
    good_request_still_served(cortex)


def test_a_long_log_line_is_still_cut_not_refused(cortex):
    lines = [{"event_datetime": iso(), "log_line": "z" * 200_000}]
    assert cortex.post(cortex.bundle(lines), endpoint="app_log").status_code == 200
    (record,) = cortex.records()
    assert len(record["log_line"]) == 65535


@pytest.mark.parametrize("body, message", [
    (b'{"api_key": "k", "events": [{"type": "dau", "float1": NaN}]}', "NaN and Infinity are not JSON numbers"),
    (b'{"api_key": "k", "events": [{"type": "dau", "float1": Infinity}]}', "NaN and Infinity are not JSON numbers"),
    (b'{"api_key": "k", "events": [{"type": "dau", "float1": -Infinity}]}', "NaN and Infinity are not JSON numbers"),
    (b'{"api_key": "k", "events": [{"type": "dau", "float1": 1e400}]}', "NaN and Infinity are not JSON numbers"),
    (b'{"api_key": "k\xc3(", "events": []}', "not UTF-8 text (invalid byte at offset 14)"),
    ('{"api_key": "k", "events": []}'.encode("utf-16"), "not UTF-8 text"),
    ('{"api_key": "k", "events": []}'.encode("latin-1") + "é".encode("latin-1"), "not UTF-8 text"),
    (b'{"api_key": "\\ud800", "events": []}', "lone UTF-16 surrogate"),
], ids=["nan", "infinity", "minus-infinity", "overflow", "bad-utf8", "utf16", "latin1", "lone-surrogate"])
def test_non_finite_numbers_and_bad_text_get_a_clear_400(cortex, body, message):
    response = cortex.post(body)
    assert response.status_code == 400
    assert message in response.data.decode()
    good_request_still_served(cortex)


def test_a_utf8_byte_order_mark_is_not_content(cortex):
    body = b"\xef\xbb\xbf" + orjson.dumps(cortex.bundle([GOOD_EVENT]))
    assert cortex.post(body).status_code == 200


# -- control characters ---------------------------------------------------------------

def test_control_characters_are_stripped_from_everything_stored(cortex):
    event = {"type": "event", "event_datetime": iso(), "kingdom": "le\x00v\x1bel\x85", "note": "n\x07ote\x9f",
             "ke\x01y": "v", "text": "tab\tand\nnewline kept"}
    bundle = cortex.bundle([event], app_ver="1.\x00\x7f0", device_tag="dev\x08ice", unknown_bundle="b\x00b")
    response = cortex.post(bundle, headers={"User-Agent": "agent\x01\x7f", "Accept-Language": "en\x1b"})
    assert response.status_code == 200
    (record,) = cortex.records()
    assert record["kingdom"] == "level"
    assert record["extra"] == {"unknown_bundle": "bb", "note": "note", "key": "v", "text": "tab\tand\nnewline kept"}
    assert record["context"]["user_agent"] == "agent" and record["context"]["accept_language"] == "en"
    assert any("control characters removed" in w for w in record["warnings"])
    stored = orjson.dumps(record).decode()
    for char in ("\\u0000", "\\u001b", "\\u0007", "\\u0001", "\\u0008", "\x7f", "\x85", "\x9f"):
        assert char not in stored, char
    cortex.deliver()
    assert cortex.sql("SELECT kingdom, app_ver, device_tag FROM events") == [("level", "1.0", "device")]


# -- answers echo nothing and are never HTML ----------------------------------------------

MARKUP = "<script>alert(1)</script>"


@pytest.mark.parametrize("method, path, body", [
    ("get", f"/{MARKUP}", None),
    ("get", "/demo/1/track", None),
    ("delete", "/openapi.json", None),
    ("post", f"/{MARKUP}/1/track", "bundle"),
    ("post", "/demo/1/track", {"events": [{"type": MARKUP * 1000}]}),
    ("post", "/demo/1/track", "unknown-type"),
    ("post", "/demo/1/track", {"api_key": MARKUP, "events": [GOOD_EVENT]}),
], ids=["404", "405", "405-docs", "403-org", "400-no-key", "400-type", "403-key"])
def test_error_answers_are_plain_text_and_echo_nothing_raw(cortex, method, path, body):
    if body == "bundle":
        body = cortex.bundle([GOOD_EVENT])
    elif body == "unknown-type":
        body = cortex.bundle([{"type": MARKUP * 1000, "event_datetime": iso()}, {"type": {"x": MARKUP}}])
    kwargs = {"data": orjson.dumps(body)} if body is not None else {}
    response = getattr(cortex.client, method)(path, **kwargs)
    assert 400 <= response.status_code < 500
    assert response.mimetype in ("text/plain", "application/json")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    text = response.data.decode()
    assert "<html" not in text.lower()
    assert len(text) < 2000, "a long client value is not repeated back"
    assert text.count("alert(1)") <= 3, "at most 64 characters of a client's value are shown"
    good_request_still_served(cortex)


def test_errors_under_api_are_json(cortex):
    response = cortex.client.get("/api/v1/nothing-here")
    assert response.status_code == 404 and response.mimetype == "application/json"
    assert "404 Not Found" in response.get_json()["error"]


def test_a_crash_is_a_plain_500_without_details(make_cortex):
    def startup(app: Flask):
        @app.get("/-/boom")
        def boom():
            raise RuntimeError("secret internals")

    cortex = make_cortex(plugins=[make_plugin("boom", startup=hookimpl(startup))])
    response = cortex.client.get("/-/boom")
    assert response.status_code == 500 and response.mimetype == "text/plain"
    assert "secret internals" not in response.data.decode() and "Traceback" not in response.data.decode()
    good_request_still_served(cortex)


@pytest.mark.parametrize("body, message", [
    (b"1" + b" " * 300_000, "must be a JSON object"),
    (b'"' + b"a" * 300_000 + b'"', "longer than 262144 characters"),
    (b"[" * 40 + b"]" * 40, "more than 32 deep"),
], ids=["number", "string", "array"])
def test_large_bodies_that_are_not_objects_are_400(cortex, body, message):
    # a large scalar body once reached the shape check, which expected a container (a 500)
    response = cortex.post(body)
    assert response.status_code == 400 and message in response.data.decode()
    good_request_still_served(cortex)


@pytest.mark.parametrize("setting", [
    {"max_json_depth": 2}, {"max_string_chars": 100}, {"max_compression_ratio": 0},
    {"max_decoded_bytes": 1024},
], ids=["depth", "strings", "ratio", "decoded-below-body-cap"])
def test_limits_too_tight_for_the_api_are_refused_at_startup(make_cortex, setting):
    from cortex.config import ConfigError

    with pytest.raises(ConfigError, match=f"ingest.{next(iter(setting))} must be a number of at least"):
        make_cortex(ingest=setting)
