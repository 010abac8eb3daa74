"""The ``device`` (User-Agent) and ``language`` (Accept-Language) enrichers, through the
ingest API and the dispatcher into the SQL sink."""

from __future__ import annotations

import pytest

from cortex.queue import Submission
from cortex_device.language import language_of

IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1")
ANDROID = ("Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/119.0.6045.163 Mobile Safari/537.36")
ANDROID_TABLET = ("Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/120.0.0.0 Safari/537.36")
WINDOWS = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/120.0.0.0 Safari/537.36")
IPAD = ("Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/16.6 Mobile/15E148 Safari/604.1")
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

EVENT = {"type": "event", "event_datetime": "2024-06-03T10:00:00Z", "kingdom": "shop"}


def browser_bundle(cortex, **fields):
    """A bundle as the browser SDK sends it when it leaves device detection to the server."""
    return {"api_key": cortex.api_key, "app_ver": "1.0", "device_tag": "web-1", **fields, "events": [dict(EVENT)]}


@pytest.fixture
def device(make_cortex):
    return make_cortex(enrichers={"device": {"type": "device"}, "language": {"type": "language"}})


def deliver(cortex, body, **headers):
    response = cortex.post(body, headers=headers)
    assert response.status_code == 200, response.data
    cortex.deliver()
    return cortex.sql("SELECT browser, browser_ver, os, os_ver, device_type, language FROM events")


@pytest.mark.parametrize("user_agent, expected", [
    (IPHONE, ("Mobile Safari", "17.1", "iOS", "17.1.2", "iphone")),
    (IPAD, ("Mobile Safari", "16.6", "iOS", "16.6", "ipad")),
    (ANDROID, ("Chrome Mobile", "119.0.6045", "Android", "14", "android")),
    (ANDROID_TABLET, ("Chrome", "120.0.0", "Android", "13", "android_tablet")),
    (WINDOWS, ("Chrome", "120.0.0", "Windows", "10", "desktop")),
    (FIREFOX_LINUX, ("Firefox", "121.0", "Linux", None, "desktop")),
    (GOOGLEBOT, ("Googlebot", "2.1", None, None, "bot")),
])
def test_user_agent_parsing(device, user_agent, expected):
    assert deliver(device, browser_bundle(device), **{"User-Agent": user_agent}) == [(*expected, None)]


def test_what_the_client_sent_is_kept(device):
    body = browser_bundle(device, browser="Edge", os="windows", os_ver="11", device_type="desktop")
    # the parser adds only what is missing: no browser_ver next to a browser the client named
    assert deliver(device, body, **{"User-Agent": IPHONE}) == [("Edge", None, "windows", "11", "desktop", None)]


def test_a_command_line_client_has_no_os_or_device_type(device):
    assert deliver(device, browser_bundle(device), **{"User-Agent": "curl/8.4.0"})[0][2:5] == (None, None, None)


def test_language_from_accept_language(device):
    rows = deliver(device, browser_bundle(device), **{"Accept-Language": "de-CH, de;q=0.9, en;q=0.8"})
    assert rows[0][5] == "de"


def test_the_most_preferred_language_wins(device):
    rows = deliver(device, browser_bundle(device), **{"Accept-Language": "en;q=0.5, pt-BR, *;q=0.1"})
    assert rows[0][5] == "pt"


def test_language_sent_by_the_client_is_kept(device):
    assert deliver(device, browser_bundle(device, language="es"), **{"Accept-Language": "de"})[0][5] == "es"


def test_no_header_no_language(device):
    assert deliver(device, browser_bundle(device))[0][5] is None


@pytest.mark.parametrize("header, language", [
    ("fr-FR,fr;q=0.9", "fr"), ("*", None), ("", None), ("EN_us", "en"), ("x-klingon, de;q=0.1", "de"),
    ("zh-Hant-TW", "zh"), ("fil", "fil"), ("de;q=0", None), ("garbage;;;", None),
])
def test_accept_language_values(header, language):
    assert language_of(header) == language


def test_interactions_take_device_info_first(device):
    record = {
        "id": "0" * 31 + "2", "org": "demo", "app": "default", "app_id": 1, "kind": "interaction",
        "type": "page_view", "event_type": "page_view", "timestamp": "2024-06-03T10:00:00Z",
        "received_at": "2024-06-03T10:00:01Z", "event_datetime": "2024-06-03T10:00:00Z",
        "event_time": "2024-06-03T10:00:00Z", "device_info": {"browser": "Chrome", "os": "Windows"},
        "context": {"client_ip": "127.0.0.1", "user_agent": IPHONE, "accept_language": "nl-BE"},
    }
    device.state.queue.submit(Submission("demo", 1, [(b"d" * 16, record)], []))
    device.deliver()
    assert device.sql("SELECT browser, browser_ver, os, os_ver, device_type, language FROM interactions") == [
        ("Chrome", None, "Windows", None, "iphone", "nl")]
