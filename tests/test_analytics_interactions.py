"""Events of the generic interactions API in the query API: the design's example, end to end."""

from __future__ import annotations

import orjson
import pytest

from analytics_data import get, make_user

PURCHASE = {
    "event_type": "purchase", "timestamp": "2024-06-01T13:45:30Z", "user_id": "anon-xyz123",
    "business_id": "default", "product_id": "prod-12345",
    "event_properties": {"amount": 49.99, "currency": "USD", "payment_method": "credit_card"},
    "source": "email_campaign_2024", "device_info": {"browser": "Chrome", "os": "Windows"},
}


@pytest.fixture
def world(cortex):
    events = [
        {**PURCHASE, "event_id": "p1"},
        {**PURCHASE, "event_id": "p2", "user_id": "anon-2", "timestamp": "2024-06-02T10:00:00Z",
         "event_properties": {"amount": 10, "currency": "USD"}, "source": "ads"},
        {**PURCHASE, "event_id": "v1", "event_type": "page_view", "event_properties": {}},
    ]
    answer = cortex.client.post("/api/v1/interactions/batch", data=orjson.dumps(events),
                                headers={"X-API-Key": cortex.api_key}, content_type="application/json")
    assert answer.status_code == 200 and answer.json["accepted"] == 3, answer.json
    cortex.deliver()
    return cortex, make_user(cortex, "owner@example.com", "demo", "analyst")


def test_the_designs_analytics_query(world):
    cortex, token = world
    # business_id is the app the events were sent for, as in the interactions API
    answer = get(cortex, "/api/v1/analytics/events", token, business_id="default",
                 start_date="2024-06-01", end_date="2024-06-30", event_type="purchase")
    assert answer.status_code == 200
    body = answer.json
    assert (body["business_id"], body["org"], body["total"], body["unique_users"]) == ("default", "demo", 2, 2)
    assert body["revenue_usd"] == 59.99
    by_org = get(cortex, "/api/v1/analytics/events", token, business_id="demo",
                 start_date="2024-06-01", end_date="2024-06-30", event_type="purchase").json
    assert by_org["total"] == 2
    nobody = get(cortex, "/api/v1/analytics/events", token, business_id="not-an-app", start_date="2024-06-01")
    assert nobody.status_code == 404


@pytest.mark.parametrize("name,params", [
    ("events", {}), ("events", {"event_type": "purchase"}), ("counts", {"by": "source"}),
    ("breakdown", {"dimension": "os"}), ("revenue", {}), ("active-users", {}),
])
def test_interactions_from_rollups_and_raw_alike(world, name, params):
    cortex, token = world
    common = {"business_id": "demo", "start_date": "2024-06-01", "end_date": "2024-06-30", **params}
    raw = get(cortex, f"/api/v1/analytics/{name}", token, **common, use="raw").json
    auto = get(cortex, f"/api/v1/analytics/{name}", token, **common).json
    assert raw.pop("answered_from") == "raw"
    auto.pop("answered_from")
    assert auto == raw
