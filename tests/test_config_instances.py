"""``[service]`` for several instances on one PostgreSQL state (SPEC §7.1): the state
URL, its password, the instance name, the lease TTL, and ``run``'s overrides."""

from __future__ import annotations

from datetime import timedelta

import pytest

from billnotify.config import parse_config
from billnotify.errors import ConfigError

PG = "postgresql://billnotify@db.example.com:5432/billing"


def _issues(service: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config({"service": service})
    return caught.value.issues


def test_a_postgresql_state_with_its_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLNOTIFY_TEST_PG_PASSWORD", "s3cret-pg")
    service = parse_config(
        {"service": {"state": PG, "state_password": "env:BILLNOTIFY_TEST_PG_PASSWORD"}}
    ).service
    assert service.postgres and service.state == PG
    assert service.state_password is not None
    assert service.state_password.reveal() == "s3cret-pg"
    assert service.lease_ttl == timedelta(seconds=15)
    host_pid = service.instance_name.rsplit("-", 1)
    assert service.instance is None and host_pid[1].isdigit()
    assert not parse_config({}).service.postgres


def test_every_mistake_is_reported_with_its_path_and_never_a_password() -> None:
    issues = _issues(
        {
            "state": "postgresql://billnotify:hunter2@db.example.com:5432/billing",
            "instance": "a/b",
            "lease_ttl": "1s",
        }
    )
    assert [issue.split(":", 1)[0] for issue in issues] == [
        "service.state",
        "service.instance",
        "service.lease_ttl",
    ]
    assert "must not hold a password" in issues[0] and "PGPASSWORD" in issues[0]
    assert "hunter2" not in "\n".join(issues)
    for bad, says in (
        ("postgresql://billnotify@db.example.com:port/billing", "port"),
        ("postgresql://billnotify@db.example.com:5432/", "database"),
        ("postgresql:billing", "postgresql://USER@HOST:PORT/DB"),
    ):
        assert says in _issues({"state": bad})[0]


def test_a_state_password_needs_a_postgresql_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLNOTIFY_TEST_PG_PASSWORD", "s3cret-pg")
    [issue] = _issues({"state": "state.db", "state_password": "env:BILLNOTIFY_TEST_PG_PASSWORD"})
    assert issue == "service: state_password is only for a postgresql:// state"


def test_a_state_password_written_in_the_file_is_a_warning_not_an_echo() -> None:
    warnings: list[str] = []
    parse_config({"service": {"state": PG, "state_password": "literal"}}, warnings=warnings)
    assert warnings == [
        'service.state_password: a secret written in the config file; prefer "env:NAME" or '
        '"file:/path"'
    ]


def test_run_overrides_instance_and_http_for_one_process() -> None:
    service = parse_config({"service": {"state": PG, "instance": "a"}}).service
    over = service.overridden(instance="b", http="127.0.0.1:9466")
    assert (over.instance, over.http, over.listen()) == ("b", "127.0.0.1:9466", ("127.0.0.1", 9466))
    assert service.overridden().instance == "a"
    with pytest.raises(ConfigError) as caught:
        service.overridden(instance="x y", http="nowhere")
    assert [i.split(":")[0] for i in caught.value.issues] == ["--instance", "--http"]
