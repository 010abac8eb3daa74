"""The ``geoip`` enricher, through the ingest API and the dispatcher into the SQL sink:
the offline iptocc table and a real MaxMind-format database written for the test."""

from __future__ import annotations

import json

import pytest

from cortex.config import ConfigError

EVENT = {"type": "install", "event_datetime": "2024-06-03T10:00:00Z"}


def bundle_without_country(cortex, **fields):
    return cortex.bundle([dict(EVENT)], **fields)


def stored(cortex, columns="country, region, city, geo_ip_address, warnings"):
    return cortex.sql(f"SELECT {columns} FROM events")


def post_from(cortex, address: str, body=None, **kwargs):
    response = cortex.post(body or bundle_without_country(cortex), environ_base={"REMOTE_ADDR": address}, **kwargs)
    assert response.status_code == 200, response.data
    cortex.deliver()
    return stored(cortex)


@pytest.fixture
def geo(make_cortex):
    return make_cortex(enrichers={"geo": {"type": "geoip"}})


@pytest.mark.parametrize("address, country", [
    ("81.2.69.142", "GB"),            # IPv4
    ("8.8.8.8", "US"),
    ("2001:4860:4860::8888", "US"),   # IPv6
    ("::ffff:81.2.69.142", "GB"),     # IPv4-mapped IPv6, as dual-stack sockets report IPv4 clients
])
def test_country_from_the_client_address(geo, address, country):
    assert post_from(geo, address) == [(country, None, None, None, None)]


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.0.7", "127.0.0.1", "::1", "fe80::1", "100.64.0.1"])
def test_private_addresses_have_no_country(geo, address):
    assert post_from(geo, address) == [(None, None, None, None, None)]


def test_geo_ip_address_is_used_before_the_client_address_and_not_stored(geo):
    body = bundle_without_country(geo, geo_ip_address="81.2.69.142")
    assert post_from(geo, "8.8.8.8", body) == [("GB", None, None, None, None)]


@pytest.mark.parametrize("sent", ["not-an-ip", "999.1.2.3", "81.2.69", "2001:db8::g"])
def test_a_malformed_geo_ip_address_is_a_warning(geo, sent):
    body = bundle_without_country(geo, geo_ip_address=sent)
    [(country, _, _, address, warnings)] = post_from(geo, "8.8.8.8", body)
    assert country is None and address is None
    assert json.loads(warnings) == [f"geo_ip_address: {sent!r} is not an IP address; no country"]


def test_a_country_sent_by_the_client_is_kept(geo):
    body = bundle_without_country(geo, country="FR", geo_ip_address="81.2.69.142")
    assert post_from(geo, "8.8.8.8", body) == [("FR", None, None, None, None)]


def test_forwarded_for_is_ignored_without_a_trusted_proxy(geo):
    rows = post_from(geo, "127.0.0.1", headers={"X-Forwarded-For": "81.2.69.142"})
    assert rows == [(None, None, None, None, None)]


def test_forwarded_for_is_used_behind_a_trusted_proxy(make_cortex):
    cortex = make_cortex(enrichers={"geo": {"type": "geoip"}}, server={"trust_proxy_hops": 1})
    # a client forging the header gets its own address used: the proxy appends the real one
    rows = post_from(cortex, "127.0.0.1", headers={"X-Forwarded-For": "8.8.8.8, 81.2.69.142"})
    assert rows == [("GB", None, None, None, None)]


def test_store_ip_keeps_the_address_used(make_cortex):
    cortex = make_cortex(enrichers={"geo": {"type": "geoip", "store_ip": True}})
    assert post_from(cortex, "2001:4860:4860::8888") == [("US", None, None, "2001:4860:4860::8888", None)]


def test_without_the_enricher_the_client_address_is_not_stored(cortex):
    assert post_from(cortex, "81.2.69.142") == [(None, None, None, None, None)]


@pytest.fixture
def mmdb(tmp_path):
    """A real MaxMind-format City database with two networks (IPv4 and IPv6)."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City",
                        languages=["en", "de"], description="Cortex test database")
    writer.insert_network(IPSet(["81.2.69.0/24"]), {
        "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
        "subdivisions": [{"iso_code": "ENG", "names": {"en": "England", "de": "England"}}],
        "city": {"names": {"en": "London", "de": "London"}},
    })
    writer.insert_network(IPSet(["2a02:2e0::/32"]), {
        "country": {"iso_code": "DE", "names": {"en": "Germany"}},
        "subdivisions": [{"iso_code": "BY", "names": {"en": "Bavaria", "de": "Bayern"}}],
        "city": {"names": {"en": "Munich", "de": "München"}},
    })
    path = tmp_path / "city.mmdb"
    writer.to_db_file(str(path))
    return path


def test_maxmind_database_adds_region_and_city(make_cortex, mmdb):
    cortex = make_cortex(enrichers={"geo": {"type": "geoip", "database": str(mmdb), "language": "de"}})
    assert post_from(cortex, "81.2.69.142") == [("GB", "England", "London", None, None)]
    body = cortex.bundle([dict(EVENT, event_index=2)])
    response = cortex.post(body, environ_base={"REMOTE_ADDR": "2a02:2e0:3fe:1001:302::"})
    assert response.status_code == 200
    cortex.deliver()
    assert cortex.sql("SELECT country, region, city FROM events WHERE event_index = 2") == [
        ("DE", "Bayern", "München")]


def test_maxmind_database_without_the_address(make_cortex, mmdb):
    cortex = make_cortex(enrichers={"geo": {"type": "geoip", "database": str(mmdb)}})
    assert post_from(cortex, "8.8.8.8") == [(None, None, None, None, None)]


def test_a_missing_database_passes_records_through_with_a_warning(make_cortex, tmp_path):
    cortex = make_cortex(enrichers={"geo": {"type": "geoip", "database": str(tmp_path / "none.mmdb")}})
    [(country, _, _, _, warnings)] = post_from(cortex, "81.2.69.142")
    assert country is None
    assert "could not open: FileNotFoundError" in json.loads(warnings)[0]


def test_unknown_option_is_a_startup_error(make_cortex):
    with pytest.raises(ConfigError, match=r"\[enrichers.geo\] unknown option\(s\) datbase"):
        make_cortex(enrichers={"geo": {"type": "geoip", "datbase": "/x.mmdb"}})
