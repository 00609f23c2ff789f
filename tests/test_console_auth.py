"""The console's gates over plain HTTP (SPEC §7.4): login, session cookie, CSRF tokens,
security headers, and that nothing is shown or done without a session.

The console runs on a real aiohttp server on loopback over a real SQLite store holding
an uncertain delivery; an aiohttp client plays the browser (and the attacker).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from billnotify.config import parse_config
from billnotify.config.models import Rule
from billnotify.console import Console
from billnotify.console.auth import COOKIE
from billnotify.deliveries.base import DeliveryStatus
from billnotify.events import CloudEvent
from billnotify.store import NewDelivery, SqliteStore

TOKEN = "console-token-" + "Zr8uWq3tYp6Lk2Vx"
NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
PAGES = ["/", "/events", "/deliveries", "/endpoints", "/rules"]


def _config(tmp_path: Path, *, token: bool = True, http: str = "127.0.0.1:0") -> Any:
    service: dict[str, Any] = {"name": "consoletest", "state": "state.db", "http": http}
    if token:
        service["console_token"] = "env:BN_CONSOLE_TOKEN"
    raw = {
        "service": service,
        "mqtt": {"enabled": False},
        "sources": [
            {
                "name": "acme",
                "kind": "billing_platform",
                "base_url": "http://127.0.0.1:9",
                "api_key": "k",
            }
        ],
        "webhooks": [
            {
                "name": "ops",
                "url": "https://ops.example.com/hook?key=s3cr3t",
                "secret": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            }
        ],
        "rules": [
            {
                "name": "to-ops",
                "on": ["invoice.*"],
                "actions": [{"type": "webhook", "endpoint": "ops"}],
            }
        ],
    }
    return parse_config(raw, base_dir=tmp_path)


@pytest.fixture
async def seeded(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, str]]:
    """A store with one event and one uncertain delivery; yields it and the delivery id."""
    event = CloudEvent(
        id="evt_console_1",
        source="billnotify://acme",
        type="invoice.status_changed",
        subject="invoices/42",
        time="2026-11-21T10:00:00Z",
        data={"object": {"id": "42", "status": "Approved"}},
    )
    async with SqliteStore(tmp_path / "state.db") as store:
        (stored,) = await store.commit("acme", [], [event])
        new = NewDelivery("to-ops", 0, "webhook", event.id, stored.seq, True, target="ops")
        await store.record_deliveries([new], "rules", stored.seq, NOW)
        await store.set_delivery_status(new.id, DeliveryStatus.UNCERTAIN, now=NOW, error="lost")
        yield store, new.id


async def _serve(console: Console) -> tuple[web.AppRunner, str]:
    app = web.Application()
    console.mount(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def console(
    seeded: tuple[SqliteStore, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, str, SqliteStore]]:
    """The console with a token; yields its URL, the uncertain delivery's id, the store."""
    monkeypatch.setenv("BN_CONSOLE_TOKEN", TOKEN)
    store, delivery_id = seeded
    runner, url = await _serve(
        Console(_config(tmp_path), store, None, clock=lambda: NOW, live_interval=0.05)
    )
    try:
        yield url, delivery_id, store
    finally:
        await runner.cleanup()


def _session() -> aiohttp.ClientSession:
    # a browser's cookie jar, which keeps cookies of an IP address host too
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _login(http: aiohttp.ClientSession, url: str, token: str = TOKEN) -> int:
    async with http.post(
        f"{url}/login", data={"token": token, "name": "ann"}, allow_redirects=False
    ) as r:
        return r.status


async def _csrf(http: aiohttp.ClientSession, page: str) -> str:
    async with http.get(page) as r:
        found = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert found, "the page holds no CSRF token"
    return found.group(1)


async def test_without_a_session_no_page_shows_data(console: tuple[str, str, SqliteStore]) -> None:
    url, delivery_id, _ = console
    async with _session() as http:
        for path in [*PAGES, f"/deliveries/{delivery_id}", "/events/evt_console_1"]:
            async with http.get(url + path, allow_redirects=False) as r:
                body = await r.text()
                assert (r.status, r.headers["Location"]) == (303, "/login"), path
                assert delivery_id not in body and "evt_console_1" not in body
        async with http.get(f"{url}/live") as r:
            assert r.status == 401
        async with http.get(f"{url}/login") as r:
            page = await r.text()
            assert r.status == 200 and 'type="password"' in page and delivery_id not in page


async def test_without_a_session_no_action_is_taken(console: tuple[str, str, SqliteStore]) -> None:
    url, delivery_id, store = console
    async with _session() as http:
        for path, form in [
            (f"/deliveries/{delivery_id}/resolve", {"outcome": "sent", "reason": "x"}),
            (f"/deliveries/{delivery_id}/retry", {}),
            ("/endpoints/ops/enable", {}),
            ("/events/evt_console_1/replay", {"to": "rules"}),
        ]:
            async with http.post(url + path, data={**form, "csrf": "guess"}) as r:
                assert r.status == 401, path
    delivery = await store.get_delivery(delivery_id)
    assert delivery is not None and delivery.status is DeliveryStatus.UNCERTAIN
    assert await store.operator_actions() == []


async def test_a_wrong_token_is_refused_and_never_echoed(
    console: tuple[str, str, SqliteStore], caplog: pytest.LogCaptureFixture
) -> None:
    url, _, _ = console
    async with _session() as http:
        async with http.post(
            f"{url}/login", data={"token": "not-" + TOKEN}, allow_redirects=False
        ) as r:
            body = await r.text()
            assert r.status == 401 and "not the console token" in body
            assert TOKEN not in body and COOKIE not in r.headers.get("Set-Cookie", "")
        async with http.get(f"{url}/", allow_redirects=False) as r:
            assert r.status == 303
    assert TOKEN not in caplog.text


async def test_login_sets_a_strict_httponly_cookie_and_logout_ends_it(
    console: tuple[str, str, SqliteStore],
) -> None:
    url, _, _ = console
    async with _session() as http:
        async with http.post(
            f"{url}/login", data={"token": TOKEN, "name": "ann"}, allow_redirects=False
        ) as r:
            assert (r.status, r.headers["Location"]) == (303, "/")
            cookie = r.headers["Set-Cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert TOKEN not in cookie
        async with http.get(f"{url}/") as r:
            assert r.status == 200 and "console:ann" in await r.text()
        csrf = await _csrf(http, f"{url}/")
        async with http.post(f"{url}/logout", data={"csrf": csrf}, allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/login")
        async with http.get(f"{url}/", allow_redirects=False) as r:
            assert r.status == 303


async def test_posts_need_the_sessions_csrf_token(console: tuple[str, str, SqliteStore]) -> None:
    url, delivery_id, store = console
    path = f"{url}/deliveries/{delivery_id}/resolve"
    form = {"outcome": "sent", "reason": "customer confirmed"}
    async with _session() as http:
        assert await _login(http, url) == 303
        async with http.post(path, data=form) as r:
            assert r.status == 403 and "CSRF" in await r.text()
        async with http.post(path, data={**form, "csrf": "x" * 43}) as r:
            assert r.status == 403
        # another session's token is no good either
        async with _session() as other:
            assert await _login(other, url) == 303
            foreign = await _csrf(other, f"{url}/deliveries/{delivery_id}")
        async with http.post(path, data={**form, "csrf": foreign}) as r:
            assert r.status == 403
        csrf = await _csrf(http, f"{url}/deliveries/{delivery_id}")
        async with http.post(
            path, data={**form, "csrf": csrf}, headers={"Origin": "http://evil.example"}
        ) as r:
            assert r.status == 403
        delivery = await store.get_delivery(delivery_id)
        assert delivery is not None and delivery.status is DeliveryStatus.UNCERTAIN
        async with http.post(path, data={**form, "csrf": csrf}, allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, f"/deliveries/{delivery_id}")
    delivery = await store.get_delivery(delivery_id)
    assert delivery is not None and delivery.status is DeliveryStatus.SUCCEEDED
    (action,) = await store.operator_actions(delivery_id)
    assert (action.who, action.action, action.reason) == (
        "console:ann",
        "resolve_sent",
        "customer confirmed",
    )
    assert action.result == "uncertain -> succeeded"


async def test_every_console_response_carries_the_security_headers(
    console: tuple[str, str, SqliteStore],
) -> None:
    url, delivery_id, _ = console
    async with _session() as http:
        async with http.get(f"{url}/login") as r:
            _assert_secured(r.headers, data=True)
        assert await _login(http, url) == 303
        for path in [*PAGES, f"/deliveries/{delivery_id}", "/events/evt_console_1"]:
            async with http.get(url + path) as r:
                assert r.status == 200, path
                _assert_secured(r.headers, data=True)
                body = await r.text()
                assert "<script>" not in body and " on" + "click=" not in body
                assert "s3cr3t" not in body
        async with http.get(f"{url}/static/console.js") as r:
            assert r.status == 200 and r.content_type == "text/javascript"
            _assert_secured(r.headers, data=False)
        async with http.get(f"{url}/static/..%2Fsite.py") as r:
            assert r.status == 404


def _assert_secured(headers: Any, *, data: bool) -> None:
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    if data:
        assert headers["Cache-Control"] == "no-store"


async def test_the_live_stream_sends_overview_values_and_new_events(
    console: tuple[str, str, SqliteStore],
) -> None:
    url, _, store = console
    async with _session() as http:
        assert await _login(http, url) == 303
        async with http.get(f"{url}/live?after=1") as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            assert r.headers["Cache-Control"] == "no-store"
            await _read_until(r, b"event: overview", b'"deliveries.uncertain": "1"')
            event = CloudEvent(
                id="evt_console_2",
                source="billnotify://acme",
                type="invoice.paid",
                subject="invoices/43",
                time="2026-11-21T10:01:00Z",
            )
            await store.commit("acme", [], [event])
            later = await _read_until(r, b"evt_console_2", b'"events.total": "2"')
            assert b"event: events" in later


async def _read_until(response: aiohttp.ClientResponse, *markers: bytes) -> bytes:
    seen = b""
    async with asyncio.timeout(10):
        while not all(marker in seen for marker in markers):
            seen += await response.content.readany()
    return seen


async def test_without_a_token_on_loopback_each_visitor_gets_a_session_and_csrf(
    seeded: tuple[SqliteStore, str], tmp_path: Path
) -> None:
    store, delivery_id = seeded
    runner, url = await _serve(
        Console(_config(tmp_path, token=False), store, None, clock=lambda: NOW)
    )
    try:
        async with _session() as http:
            async with http.get(f"{url}/deliveries/{delivery_id}") as r:
                assert r.status == 200 and "console:local" in await r.text()
            async with http.post(
                f"{url}/deliveries/{delivery_id}/retry", data={"reason": "x"}
            ) as r:
                assert r.status == 403  # no CSRF token: another site cannot make it act
            csrf = await _csrf(http, f"{url}/deliveries/{delivery_id}")
            async with http.post(
                f"{url}/deliveries/{delivery_id}/retry", data={"csrf": csrf, "reason": "x"}
            ) as r:
                assert r.status == 200 and "uncertain -&gt; pending" in await r.text()
        (action,) = await store.operator_actions(delivery_id)
        assert (action.who, action.action) == ("console:local", "retry")
    finally:
        await runner.cleanup()


async def test_what_the_platform_sends_is_shown_as_text_never_as_markup(
    console: tuple[str, str, SqliteStore],
) -> None:
    url, _, store = console
    evil = '<img src=x onerror="alert(1)">'
    event = CloudEvent(
        id="evt_console_evil",
        source="billnotify://acme",
        type="invoice.status_changed",
        subject=f"invoices/{evil}",
        time="2026-11-21T10:02:00Z",
        data={"object": {"id": evil}},
    )
    await store.commit("acme", [], [event])
    async with _session() as http:
        assert await _login(http, url) == 303
        for path in ("/events", "/events/evt_console_evil"):
            async with http.get(url + path) as r:
                body = await r.text()
                assert evil not in body and "&lt;img src=x" in body, path


async def test_a_delivery_page_shows_its_kept_answer_and_what_a_chained_one_waits_for(
    seeded: tuple[SqliteStore, str], tmp_path: Path
) -> None:
    """SPEC §7.5: the answer is kept with the delivery; a chained action says what it
    runs after, and why it waits or was skipped."""
    store, _ = seeded
    hook = {"type": "webhook", "endpoint": "ops"}
    config = _config(tmp_path, token=False)
    chained = {"name": "chain", "on": ["invoice.*"], "actions": [{**hook, "id": "first"}]}
    chained["actions"].append({**hook, "after": "first"})
    config = config.model_copy(update={"rules": [Rule.model_validate(chained)]})
    (stored,) = await store.list_events(limit=1)
    head = NewDelivery("chain", 0, "webhook", stored.event.id, stored.seq, False, target="ops")
    tail = NewDelivery(
        "chain", 1, "webhook", stored.event.id, stored.seq, False, "ops", DeliveryStatus.WAITING
    )
    await store.record_deliveries([head, tail], "rules", stored.seq, NOW)
    await store.keep_result(head.id, '{"status": 200, "body": {"url": "<b>x</b>"}}', NOW)
    runner, url = await _serve(Console(config, store, None, clock=lambda: NOW))
    try:
        async with _session() as http:
            async with http.get(f"{url}/deliveries/{head.id}") as r:
                page = await r.text()
            assert r.status == 200 and 'id="delivery-result"' in page
            assert "&#34;url&#34;: &#34;&lt;b&gt;x&lt;/b&gt;&#34;" in page  # as text, indented
            assert 'id="delivery-after"' not in page  # it runs on its own
            async with http.get(f"{url}/deliveries/{tail.id}") as r:
                page = await r.text()
            assert r.status == 200 and 'id="delivery-result"' not in page  # nothing kept
            assert f'<a href="/deliveries/{head.id}">{head.id}</a> (pending)' in page
            assert "Waiting: it runs once <code>first</code> has succeeded." in page

            await store.set_delivery_status(head.id, DeliveryStatus.DEAD, now=NOW)
            await store.set_delivery_status(
                tail.id, DeliveryStatus.SKIPPED, now=NOW, note="after first: dead"
            )
            async with http.get(f"{url}/deliveries/{tail.id}") as r:
                page = await r.text()
            assert f"{head.id}</a> (dead)" in page
            assert "Skipped (after first: dead): it runs after all if" in page
    finally:
        await runner.cleanup()
