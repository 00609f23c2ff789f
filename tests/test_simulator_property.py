"""The property billing simulator (seed 003): token auth, admin header, headers, documents."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from billnotify.simulator import ManualClock, Simulator

START = datetime(2026, 3, 15, 12, 0, 0, tzinfo=UTC)  # where the `clock` fixture starts
PROP = "2eff1042c50c1eda889e61573e3c194c"


@pytest.fixture
def sim_options(clock: ManualClock) -> dict[str, Any]:
    return {"clock": clock, "token_ttl": 60, "administrator_ids": ("1234", "77")}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A session without the billing platform's key: this API wants a token."""
    async with aiohttp.ClientSession() as session:
        yield session


async def token(sim: Simulator, http: aiohttp.ClientSession) -> str:
    async with http.post(
        sim.auth_url, json={"username": "sim", "password": "sim-password"}
    ) as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        return await resp.text()


def headers(jwt: str, admins: str = "1234") -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt}", "istaAdministratorIds": admins}


async def test_authenticate_returns_a_bare_jwt_with_exp(sim: Simulator, http: Any) -> None:
    jwt = await token(sim, http)
    head, payload, _signature = jwt.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert json.loads(base64.urlsafe_b64decode(head + "==="))["alg"] == "HS256"
    assert claims["exp"] == int(START.timestamp()) + 60
    for body in (
        {"username": "sim", "password": "nope"},
        {"username": "x", "password": "sim-password"},
        {},
    ):
        async with http.post(sim.auth_url, json=body) as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "Unauthorized"
    async with http.post(sim.auth_url, data=b"username=sim") as resp:
        assert resp.status == 400


async def test_token_required_valid_and_unexpired(
    sim: Simulator, http: Any, clock: ManualClock
) -> None:
    url = f"{sim.property_base_url}/BillingHeaders/{PROP}"
    jwt = await token(sim, http)
    async with http.get(url, headers=headers(jwt)) as resp:
        assert resp.status == 200
    tampered = jwt[:-4] + ("AAAA" if not jwt.endswith("AAAA") else "BBBB")
    for bad in ({}, {"istaAdministratorIds": "1234"}, headers("junk"), headers(tampered)):
        async with http.get(url, headers=bad) as resp:
            assert resp.status == 401
            assert set(await resp.json()) == {"error", "error_code", "hint"}
    clock.advance(59)
    async with http.get(url, headers=headers(jwt)) as resp:
        assert resp.status == 200
    clock.advance(1)
    async with http.get(url, headers=headers(jwt)) as resp:
        assert resp.status == 401 and (await resp.json())["hint"] == "token expired"
    async with http.get(url, headers=headers(await token(sim, http))) as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    ("admins", "status"), [("", 403), ("999", 403), ("9;1234", 200), ("77", 200)]
)
async def test_administrator_header(sim: Simulator, http: Any, admins: str, status: int) -> None:
    jwt = await token(sim, http)
    hdrs = headers(jwt, admins) if admins else {"Authorization": f"Bearer {jwt}"}
    async with http.get(f"{sim.property_base_url}/BillingHeaders/{PROP}", headers=hdrs) as resp:
        assert resp.status == status


async def test_billing_headers_and_filters(sim: Simulator, http: Any, clock: ManualClock) -> None:
    st = sim.state
    old = st.add_billing_header(
        PROP, startDate="2018-10-01T00:00:00", endDate="2019-09-30T00:00:00"
    )
    clock.advance(86400 * 2)
    new = st.add_billing_header(
        PROP, startDate="2019-10-01T00:00:00", endDate="2020-09-30T00:00:00"
    )
    st.add_billing_header("another")
    assert old["updateTimeStamp"] == "2026-03-15T12:00:00"
    hdrs = headers(await token(sim, http))
    url = f"{sim.property_base_url}/BillingHeaders/{PROP}"

    async def query(params: str) -> list[int]:
        async with http.get(url + params, headers=hdrs) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["count"] == len(body["billingHeaders"])
        return [h["id"] for h in body["billingHeaders"]]

    async with http.get(url, headers=hdrs) as resp:
        body = await resp.json()
    assert body == {"count": 2, "billingHeaders": [old, new]}
    assert isinstance(body["billingHeaders"][0]["id"], int)
    assert await query("?StartDate=2019-10-01") == [new["id"]]
    assert await query("?EndDate=2019-09-30") == [old["id"]]
    assert await query("?StartDate=2018-01-01&EndDate=2021-01-01") == [old["id"], new["id"]]
    assert await query("?LastUpdate=2026-03-17") == [new["id"]]
    assert await query("?LastUpdate=2026-03-18") == []
    clock.advance(1.16)
    updated = st.update_billing_header(old["id"])
    assert updated["updateTimeStamp"] == "2026-03-17T12:00:01.16"
    assert await query("?LastUpdate=2026-03-17") == [old["id"], new["id"]]
    async with http.get(f"{sim.property_base_url}/BillingHeaders/unknown", headers=hdrs) as resp:
        assert await resp.json() == {"count": 0, "billingHeaders": []}
    for bad in ("?LastUpdate=17.03.2026", "?StartDate=2026-02-30", "?Foo=1"):
        async with http.get(url + bad, headers=hdrs) as resp:
            assert resp.status == 400


async def test_billing_and_documents(sim: Simulator, http: Any) -> None:
    header = sim.state.add_billing_header(PROP)
    hdrs = headers(await token(sim, http))
    base = sim.property_base_url
    async with http.get(
        f"{base}/Billing/{header['id']}?includeDeviceConsumptions=false", headers=hdrs
    ) as resp:
        billing = await resp.json()
    assert billing["id"] == header["id"] and billing["propertyUUId"] == PROP
    doc_ids = [d["documentId"] for d in billing["documents"]]
    assert len(doc_ids) == 3 and all(re.fullmatch(r"BE\d{8}", d) for d in doc_ids)
    assert [d["documentType"] for d in billing["documents"]] == [
        "Global",
        "Individual",
        "Individual",
    ]
    assert "deviceConsumptions" not in billing["units"][0]
    async with http.get(
        f"{base}/Billing/{header['id']}?includeDeviceConsumptions=true", headers=hdrs
    ) as resp:
        assert (await resp.json())["units"][0]["deviceConsumptions"]
    for path in ("BillingDoculment", "BillingDocument"):
        async with http.get(f"{base}/{path}/{doc_ids[1]}", headers=hdrs) as resp:
            assert resp.status == 200 and resp.content_type == "application/pdf"
            assert (await resp.read()).startswith(b"%PDF-")
    for path, status in (
        ("BillingDoculment/BE99999999", 404),
        ("Billing/1", 404),
        (f"Billing/{header['id']}?includeDeviceConsumptions=maybe", 400),
    ):
        async with http.get(f"{base}/{path}", headers=hdrs) as resp:
            assert resp.status == status
    async with http.get(f"{base}/BillingDoculment/{doc_ids[0]}") as resp:
        assert resp.status == 401
