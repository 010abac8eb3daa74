"""Enricher throughput: events/s of each bundled enricher on realistic records.

    .venv/bin/python bench/enrich_bench.py [--records 20000] [--batch 1000] [--mmdb PATH]

Every enricher runs through the dispatcher's own machinery (:class:`cortex.enrichment.Enrichment`:
copies, error isolation, the timeout thread), in batches of ``--batch`` records, on records
as the queue gives them: a mix of Data Cortex event types, a tenth of them economy events in
several currencies over five years, browser bundles without device fields, client addresses
from a pool of 5,000 public IPv4 and IPv6 addresses, 360 distinct User-Agents, and
``Accept-Language`` headers; every pass gets records with addresses and identifiers of its own.  A no-op enricher through the same machinery is the baseline
measured in the same run; the table gives each enricher's events/s (per CPU second of the
process, so that other load on the machine does not count) and its ratio to it.
``--mmdb`` adds the MaxMind backend on a database of your own (e.g. GeoLite2-City).
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import random
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path

from cortex import Enricher
from cortex.enrichment import Enrichment, EnricherSettings, Stage
from cortex.sinks import SinkContext

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugins"))

from cortex_currency.enricher import CurrencyEnricher  # noqa: E402
from cortex_device.device import DeviceEnricher  # noqa: E402
from cortex_device.language import LanguageEnricher  # noqa: E402
from cortex_geoip.enricher import GeoIpEnricher  # noqa: E402
from cortex_pseudonymise import PseudonymiseEnricher  # noqa: E402

PLATFORMS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{m}.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS {m}_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{m}.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android {a}; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.6045.163 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (Linux; Android {a}; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
]
LANGUAGES = ["en-US,en;q=0.9", "de-DE,de;q=0.9,en;q=0.8", "fr-FR,fr;q=0.9", "pt-BR,pt;q=0.9,en;q=0.7",
             "ja-JP", "es-ES,es;q=0.9", "en-GB,en;q=0.9", "zh-CN,zh;q=0.9"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "BRL", "gems", "gold", "CAD"]
KEY = "a3f1c9d2e8b7465f9a0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708"


class NoOp(Enricher):
    """The baseline: the dispatcher's machinery around an enricher that does nothing."""

    type_name = "noop"

    def enrich(self, records):
        pass


def public_addresses(rng: random.Random, count: int) -> list[str]:
    """Random public IPv4 and IPv6 (2000::/3) addresses, one in five IPv6."""
    found = []
    while len(found) < count:
        if rng.random() < 0.2:
            address = ipaddress.IPv6Address((0x2 << 124) | rng.getrandbits(125) >> 1)
        else:
            address = ipaddress.IPv4Address(rng.getrandbits(32))
        if address.is_global:
            found.append(str(address))
    return found


def make_records(count: int, seed: int = 7) -> list[dict]:
    """Records as the queue gives them to the dispatcher."""
    rng = random.Random(seed)
    addresses = public_addresses(rng, 5000)
    tag = f"s{seed}-"
    agents = [p.format(v=rng.randint(100, 131), m=rng.randint(14, 17), a=rng.randint(10, 14))
              for p in PLATFORMS for _ in range(60)]
    start = date(2020, 1, 1)
    records = []
    for i in range(count):
        day = start + timedelta(days=rng.randrange(5 * 365))
        when = f"{day.isoformat()}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:07.123Z"
        record = {
            "id": f"{i:032x}", "seq": i // 10, "org": "demo" if i % 3 else "globex", "app": "web", "app_id": 1,
            "kind": "track", "received_at": when, "event_datetime": when, "event_time": when,
            "app_ver": "2.4.1", "device_tag": f"{tag}dev-{rng.randrange(50_000)}",
            "user_tag": f"{tag}user-{rng.randrange(20_000)}",
            "context": {"client_ip": rng.choice(addresses), "user_agent": rng.choice(agents),
                        "accept_language": rng.choice(LANGUAGES)},
        }
        if i % 10 == 0:
            record.update(type="economy", spend_amount=round(rng.uniform(0.99, 99.99), 2),
                          spend_currency=rng.choice(CURRENCIES), spend_type="iap")
        else:
            record.update(type=rng.choice(["event", "event", "event", "dau", "install"]), kingdom="level",
                          phylum="world1", float1=1.5)
        records.append(record)
    return records


def make_enrichers(mmdb: str | None) -> dict[str, Enricher]:
    context = SinkContext(data_dir=Path("."))
    enrichers = {
        "no-op (baseline)": NoOp("noop", {}, context),
        "geoip (iptocc)": GeoIpEnricher("geo", {}, context),
        "currency": CurrencyEnricher("fx", {}, context),
        "device": DeviceEnricher("device", {}, context),
        "language": LanguageEnricher("language", {}, context),
        "pseudonymise": PseudonymiseEnricher("pseudo", {"orgs": ["*"], "keys": {"k1": KEY}}, context),
    }
    if mmdb:
        enrichers["geoip (MaxMind)"] = GeoIpEnricher("geo_mm", {"database": mmdb}, context)
    return enrichers


def one_pass(enrichment: Enrichment, records: list[dict], batch: int) -> float:
    """Events/s of one pass over ``records`` in batches of ``batch``, by the CPU time of this
    process (all its threads): other processes on a busy machine do not count."""
    started = time.process_time()
    for offset in range(0, len(records), batch):
        enrichment.run(records[offset:offset + batch])
    return len(records) / (time.process_time() - started)


def stage(enricher: Enricher, timeout: float) -> Stage:
    return Stage(enricher, EnricherSettings(type(enricher).default_on_error, timeout))


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=14)
    parser.add_argument("--timeout", type=float, default=10.0, help="enricher timeout (0: no timeout thread)")
    parser.add_argument("--mmdb", help="a MaxMind database to measure the MaxMind backend on")
    args = parser.parse_args()

    # a new set of records (addresses, devices, users) for every pass: no enricher's cache
    # holds a pass's identifiers or addresses before it starts (User-Agents do repeat)
    sets = [make_records(args.records, seed) for seed in range(args.rounds + 1)]
    records = sets[0]
    # the record sets are this benchmark's, not the dispatcher's: keep the garbage
    # collector from walking them again and again
    gc.collect()
    gc.freeze()
    cases = {label: Enrichment([stage(enricher, args.timeout)], None)
             for label, enricher in make_enrichers(args.mmdb).items()}
    chain = make_enrichers(None)
    cases["all five, in order"] = Enrichment(
        [stage(enricher, args.timeout) for label, enricher in chain.items() if not label.startswith("no-op")], None)
    for enrichment in cases.values():
        enrichment.open()
        one_pass(enrichment, records, args.batch)  # warm-up: caches, lazy loading
    # the cases take turns, so that a busy moment of the machine hits them all alike
    rates: dict[str, list[float]] = {label: [] for label in cases}
    labels = list(cases)
    for round_ in range(1, args.rounds + 1):
        # each round starts with another case: the first to touch a new record set pays for
        # bringing it into the CPU's caches
        for label in labels[round_ % len(labels):] + labels[:round_ % len(labels)]:
            rates[label].append(one_pass(cases[label], sets[round_], args.batch))
    for enrichment in cases.values():
        enrichment.close()

    baseline = statistics.median(rates["no-op (baseline)"])
    print(f"{args.records} records, batches of {args.batch}, timeout thread {'on' if args.timeout else 'off'}, "
          f"median of {args.rounds} passes taken in turns")
    print(f"| {'enricher':<22} | {'events/s':>10} | {'µs/event':>8} | {'vs no-op':>8} |")
    print("|---|---:|---:|---:|")
    for label, values in rates.items():
        rate = statistics.median(values)
        print(f"| {label:<22} | {rate:>10,.0f} | {1e6 / rate:>8.2f} | {rate / baseline:>8.2f} |")


if __name__ == "__main__":
    main()
