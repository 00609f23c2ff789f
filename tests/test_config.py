"""Configuration: every error at once with its TOML path, secrets, durations, reference."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from billnotify.config import load_config, parse_config
from billnotify.config.reference import END, START, reference
from billnotify.durations import format_duration, parse_duration
from billnotify.errors import ConfigError, SecretError
from billnotify.secrets import Secret

ROOT = Path(__file__).resolve().parents[1]

FIVE_MISTAKES = """
[service]
http = "no-port-here"

[mqtt]
qos = 3

[[sources]]
name = "acme"
kind = "billing_platform"
base_url = "ftp://acme.example.com"
api_key = "env:BILLNOTIFY_TEST_UNSET_VARIABLE"
poll_interval = "soon"

[[webhooks]]
name = "ops"
url = "https://ops.example.com/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[[rules]]
name = "alert"
on = ["billing_task.status_changed"]
[[rules.actions]]
type = "webhook"
endpoint = "opz"
"""


def test_five_mistakes_are_all_reported_with_their_paths(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(FIVE_MISTAKES)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    issues = caught.value.issues
    wanted = [
        "service.http:",
        "mqtt.qos:",
        "sources[0].base_url:",
        "sources[0].api_key: environment variable BILLNOTIFY_TEST_UNSET_VARIABLE is not set",
        "sources[0].poll_interval:",
        "rules[0].actions[0].endpoint: unknown webhook 'opz'",
    ]
    for prefix in wanted:
        assert any(i.startswith(prefix) for i in issues), (prefix, issues)
    assert len(issues) == len(wanted)


def test_check_command_prints_every_error_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(FIVE_MISTAKES)
    done = subprocess.run(
        [sys.executable, "-m", "billnotify", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "6 configuration error(s)" in done.stderr
    assert "rules[0].actions[0].endpoint: unknown webhook 'opz'" in done.stderr
    assert str(path) in done.stderr


def test_broken_toml_says_where(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[service\nname = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "not valid TOML" in caught.value.issues[0]
    assert "line 1" in caught.value.issues[0]


def test_unknown_keys_and_duplicate_names_are_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "servce": {},
                "webhooks": [
                    {"name": "a", "url": "https://x.example", "secret": "s" * 20},
                    {"name": "a", "url": "https://y.example", "secret": "s" * 20},
                ],
            }
        )
    assert "servce: unknown key" in caught.value.issues
    assert any("webhooks[1].name: duplicate name 'a'" in i for i in caught.value.issues)


def test_secrets_resolve_from_env_and_file_and_never_print(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLNOTIFY_TEST_KEY", "s3cret-api-key")
    key_file = tmp_path / "pw"
    key_file.write_text("file-password\n")
    config = parse_config(
        {
            "sources": [
                {
                    "name": "acme",
                    "kind": "billing_platform",
                    "base_url": "https://acme.example.com/backend/api/v1/",
                    "api_key": "env:BILLNOTIFY_TEST_KEY",
                }
            ],
            "mqtt": {"password": f"file:{key_file}"},
        }
    )
    source = config.sources[0]
    assert source.api_key.reveal() == "s3cret-api-key"
    assert config.mqtt.password is not None
    assert config.mqtt.password.reveal() == "file-password"
    dumped = repr(config) + str(config) + config.model_dump_json()
    assert "s3cret-api-key" not in dumped and "file-password" not in dumped
    assert source.base_url == "https://acme.example.com/backend/api/v1"


def test_a_wrong_secret_value_is_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"mqtt": {"password": 12345678}})
    assert "12345678" not in str(caught.value)


def test_state_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    config = parse_config({"service": {"state": "data/x.db"}}, base_dir=tmp_path)
    assert config.state_path == tmp_path / "data/x.db"
    absolute = parse_config({"service": {"state": "sqlite:////var/lib/x.db"}}, base_dir=tmp_path)
    assert absolute.state_path == Path("/var/lib/x.db")
    relative = parse_config({"service": {"state": "sqlite:///y.db"}}, base_dir=tmp_path)
    assert relative.state_path == tmp_path / "y.db"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("2h", 7200), ("1h30m", 5400), ("250ms", 0.25), (15, 15)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "5", "5 minutes", "m5", "-3s", "1x"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration_round_trips() -> None:
    for text in ("30s", "5m", "2h", "1h30m"):
        assert format_duration(parse_duration(text)) == text


def test_secret_repr_is_redacted() -> None:
    secret = Secret.resolve("literal-value")
    assert "literal-value" not in f"{secret} {secret!r}"


def test_readme_configuration_reference_matches_the_models() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(START), readme.index(END) + len(END)
    assert readme[start:end] == reference(), (
        "README's configuration reference is stale: "
        "run `python -m billnotify.config.reference` and paste it between the markers"
    )


def test_relative_file_secrets_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "mqtt").write_text("pw-from-file\n")
    path = tmp_path / "config.toml"
    path.write_text('[mqtt]\npassword = "file:secrets/mqtt"\n')
    config = load_config(path)
    assert config.mqtt.password is not None
    assert config.mqtt.password.reveal() == "pw-from-file"


# -- what is certain to fail at run time is a config error (SPEC §5) ----------------------

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

EVERYTHING_WRONG = f"""
[service]
templates = "mine"

[mqtt]
qos = 3

[smtp]
host = "127.0.0.1"
from = "Billing"
password = "hunter2-literal"

[[webhooks]]
name = "plain"
url = "http://hooks.example.com/x"
secret = "{SECRET}"

[[webhooks]]
name = "inside"
url = "https://10.1.2.3/x"
secret = "{SECRET}"

[[webhooks]]
name = "octal"
url = "https://017700000001/x"
secret = "{SECRET}"
allow_private = true

[[webhooks]]
name = "loopback-name"
url = "https://localhost:8443/x"
secret = "{SECRET}"

[[webhooks]]
name = "unknown-name"
url = "https://billnotify-test.invalid/x"
secret = "{SECRET}"

[[rules]]
name = "mail"
on = ["invoice.paid"]
[[rules.actions]]
type = "email"
to = ["not an address", "{{{{ object.email }}}}"]
cc = ["ok@example.com", "bad@"]
template = "paid"
[[rules.actions]]
type = "mqtt"
topic = "x/{{{{ object.id"
"""


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "billnotify", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_reports_destinations_addresses_and_templates_all_at_once(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "paid.subject.j2").write_text("Paid {{ object.id }\n")
    (tmp_path / "mine" / "paid.txt.j2").write_text("ok\n")
    path = tmp_path / "config.toml"
    path.write_text(EVERYTHING_WRONG)
    done = _check(path)
    assert done.returncode == 2, done.stderr
    expected = [
        "mqtt.qos:",
        "smtp.from: invalid email address 'Billing'",
        "webhooks[0].url: refusing http://hooks.example.com: webhook URLs must be https",
        "webhooks[1].url: refusing 10.1.2.3: not a public address",
        "webhooks[2].url: refusing 017700000001: not a canonical IPv4 address (it means 127.0.0.1)",
        "webhooks[3].url: refusing localhost: resolves to non-public address(es) 127.0.0.1",
        "rules[0].actions[0].to[0]: invalid email address 'not an address'",
        "rules[0].actions[0].cc[1]: invalid email address 'bad@'",
        # template errors come with the others although the model did not validate
        "templates: paid.subject.j2, line 1: syntax error",
        "rules[0].actions[1]: inline template 'x/{{ object.id', line 1: syntax error",
    ]
    for line in expected:
        assert line in done.stderr, (line, done.stderr)
    assert f"{len(expected)} configuration error(s)" in done.stderr
    # warnings, not errors: a name that does not resolve here, a secret in the file
    assert "warning: webhooks[4].url: cannot resolve billnotify-test.invalid" in done.stderr
    assert "warning: smtp.password: a secret written in the config file" in done.stderr
    assert "hunter2-literal" not in done.stderr + done.stdout


def test_a_literal_secret_is_accepted_with_a_warning_naming_its_path(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[mqtt]
password = "mqtt-pw-literal"
[[sources]]
name = "acme"
kind = "billing_platform"
base_url = "https://acme.example.com/backend/api/v1"
api_key = "api-key-literal"
[[webhooks]]
name = "ops"
url = "https://8.8.8.8/hook"
secret = "{SECRET}"
"""
    )
    done = _check(path)
    assert done.returncode == 0, done.stderr
    assert "config OK" in done.stdout
    for where in ("mqtt.password", "sources[0].api_key", "webhooks[0].secret"):
        assert f"billnotify: warning: {where}: a secret written in the config file" in done.stderr
    for value in ("mqtt-pw-literal", "api-key-literal", SECRET):
        assert value not in done.stderr + done.stdout
    warnings: list[str] = []
    load_config(path, warnings=warnings)
    assert len(warnings) == 3


def test_destinations_are_config_errors_at_load_time() -> None:
    hook = {"name": "ops", "secret": SECRET}
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "webhooks": [
                    {**hook, "url": "https://127.1/x"},
                    {**hook, "name": "b", "url": "https://[::1]/x"},
                    {**hook, "name": "c", "url": "http://127.0.0.1:9/x", "allow_private": True},
                    {**hook, "name": "d", "url": "https://hooks.example.com/x"},
                ],
                "smtp": {"host": "h", "from": "a@example.com, b@example.com"},
            }
        )
    assert caught.value.issues == [
        "webhooks[0].url: refusing 127.1: not a canonical IPv4 address (it means 127.0.0.1); "
        "write the address as four decimal numbers",
        "webhooks[1].url: refusing ::1: not a public address "
        "(set allow_private = true for an internal receiver)",
        "smtp.from: must be one address, not 'a@example.com, b@example.com'",
    ]


def test_secrets_can_stay_unread_for_commands_that_use_none(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        """
[[sources]]
name = "acme"
kind = "billing_platform"
base_url = "https://acme.example.com/backend/api/v1"
api_key = "env:BILLNOTIFY_TEST_UNSET_VARIABLE"
[[webhooks]]
name = "ops"
url = "https://hooks.example.com/x"
secret = "file:no/such/file"
"""
    )
    with pytest.raises(ConfigError):
        load_config(path)
    config = load_config(path, resolve_secrets=False)
    source = config.sources[0]
    assert source.api_key.reference == "env:BILLNOTIFY_TEST_UNSET_VARIABLE"
    with pytest.raises(SecretError, match="env:BILLNOTIFY_TEST_UNSET_VARIABLE was not read"):
        source.api_key.reveal()
    assert not config.webhooks[0].secret.resolved


def test_a_malformed_webhook_url_is_one_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[[webhooks]]\nname = "ops"\nurl = "https://[::1/x"\nsecret = "{SECRET}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [i.split(":")[0] for i in caught.value.issues] == ["webhooks[0].url"]
    done = _check(path)
    assert done.returncode == 2 and "Traceback" not in done.stderr


# -- templates: the config's folder over the shipped ones ---------------------------------


def test_a_configured_templates_folder_that_does_not_exist_is_a_config_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[service]\ntemplates = "mine"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.issues == [
        f"service.templates: no such folder: {tmp_path / 'mine'} "
        "(leave the key out to use the shipped templates) (got 'mine')"
    ]
    for command in ("check", "run"):
        done = subprocess.run(
            [sys.executable, "-m", "billnotify", command, "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (command, done.stderr)
        assert "service.templates: no such folder" in done.stderr, (command, done.stderr)


def test_without_a_templates_folder_the_shipped_ones_serve_and_a_folder_overrides(
    tmp_path: Path,
) -> None:
    from billnotify.config.models import DEFAULT_TEMPLATES
    from billnotify.templating import TemplateRenderer

    path = tmp_path / "config.toml"
    path.write_text('[service]\nname = "x"\n')
    config = load_config(path)
    assert config.template_folders == [DEFAULT_TEMPLATES]
    shipped = TemplateRenderer(config.template_folders)
    assert shipped.check(email_templates=["task_failed"], body_templates=["slack"]) == []
    assert _check(path).returncode == 0

    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "task_failed.subject.j2").write_text("ours {{ object.id }}\n")
    config = load_config(path)
    assert config.template_folders == [tmp_path / "templates", DEFAULT_TEMPLATES]
    layered = TemplateRenderer(config.template_folders)
    assert layered.render_file("task_failed.subject.j2", {"object": {"id": 7}}) == "ours 7\n"
    assert layered.exists("task_failed.txt.j2")  # the rest still comes from the package


def test_a_sources_time_zone_is_checked_with_its_path() -> None:
    billing = {"name": "acme", "kind": "billing_platform", "base_url": "https://a.example"}
    metering = {
        "name": "metering",
        "kind": "property_billing",
        "base_url": "https://m.example/api/v1",
        "auth_url": "https://m.example/auth",
        "username": "user",
        "password": "password",
        "administrator_ids": ["1"],
        "properties": ["p"],
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "sources": [
                    {**billing, "api_key": "k" * 20, "timezone": "Mars/Olympus"},
                    {**metering, "timezone": "Europe/London"},
                ]
            }
        )
    assert caught.value.issues == [
        "sources[0].timezone: unknown time zone 'Mars/Olympus' (an IANA name like 'Europe/London')"
    ]
    config = parse_config({"sources": [{**billing, "api_key": "k" * 20}, metering]})
    assert [s.timezone for s in config.sources] == ["UTC", "UTC"]
