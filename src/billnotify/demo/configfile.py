"""The demo's ``config.toml``: the example config's rules, pointed at local stand-ins.

The file is written into the working folder so that it can be read, reused
(``billnotify events -c DIR/config.toml``) and validated exactly as an operator's would
be. Secrets go into files next to it and are referenced as ``file:`` paths: a config
never holds a secret, not even a demo's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from billnotify.config.service import DEFAULT_TEMPLATES

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.toml"

RULES_TOML = """\
[[rules]]
name = "alert-failed-task"
on = ["billing_task.status_changed"]
when = "event.data.object.status in ['Failed', 'Error']"
[[rules.actions]]
type = "webhook"
endpoint = "ops"
[[rules.actions]]
type = "email"
to = ["ops@example.com"]
template = "task_failed"
at_least_once = true

[[rules]]
name = "failed-tasks-digest"
on = ["billing_task.status_changed"]
when = "event.data.object.status in ['Failed', 'Error']"
group_by = ["source", "object.billingTaskType"]
group_wait = "10s"
group_interval = "1m"
[[rules.actions]]
type = "email"
to = ["ops-digest@example.com"]
template = "task_failed_digest"
at_least_once = true

[[rules]]
name = "alert-stalled-task"
on = ["billing_task.stalled"]
[[rules.actions]]
type = "email"
to = ["ops@example.com"]
template = "task_stalled"
at_least_once = true

[[rules]]
name = "email-approved-invoices"
on = ["invoice.status_changed"]
when = "'Approved' in event.data.added"
[[rules.actions]]
type = "invoice_action"
action = "email"
params = { billStyle = "Full" }

[[rules]]
name = "run-completed"
on = ["billing_run.completed"]
[[rules.actions]]
type = "email"
to = ["finance@example.com"]
template = "run_completed"
at_least_once = true

[[rules]]
name = "overdue-invoice"
on = ["invoice.overdue"]
[[rules.actions]]
type = "webhook"
endpoint = "chat"
body = "slack"
content_type = "application/json"

[[rules]]
name = "announce"
on = ["invoice.paid", "billing_header.published"]
[[rules.actions]]
type = "mqtt"
topic = "billnotify/notifications/{{ source }}/{{ event.type }}"
payload = "{{ {'id': event.id, 'type': event.type, 'subject': event.subject, 'time': event.time} | tojson }}"
qos = 1
retain = false
"""
"""The rules of the repository's ``config.toml`` (a test keeps the two in step)."""


@dataclass(frozen=True)
class DemoPeers:
    """Where everything the demo's service talks to listens."""

    billing_base_url: str
    property_base_url: str
    auth_url: str
    api_key: str
    username: str
    password: str
    administrator_ids: tuple[str, ...]
    properties: tuple[str, ...]
    mqtt_port: int
    smtp_port: int
    webhook_base_url: str
    webhook_secret: str
    http_port: int
    templates: Path


def templates_folder() -> Path | None:
    """The shipped templates (packaged with billnotify), or None if they are missing."""
    return DEFAULT_TEMPLATES if DEFAULT_TEMPLATES.is_dir() else None


def _q(value: str) -> str:
    """A TOML basic string (JSON string escapes are valid TOML)."""
    return json.dumps(value)


def _list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def _write_secret(folder: Path, name: str, value: str) -> str:
    path = folder / name
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)
    return f"file:{path}"


def write_demo_config(folder: Path, peers: DemoPeers) -> Path:
    """Write ``config.toml`` (and its secret files) into ``folder``; return its path."""
    secrets = folder / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    secrets.chmod(0o700)
    api_key = _write_secret(secrets, "api_key", peers.api_key)
    username = _write_secret(secrets, "username", peers.username)
    password = _write_secret(secrets, "password", peers.password)
    webhook_secret = _write_secret(secrets, "webhook_secret", peers.webhook_secret)
    text = f"""\
# Written by `billnotify demo`: the rules of the example config.toml, pointed at the
# demo's simulator, embedded MQTT broker, SMTP sink and webhook sink. Polls fast and
# emits events for the records it finds at start, so that something happens at once.

[service]
name = "demo"
state = "state.db"
templates = {_q(str(peers.templates))}
http = "127.0.0.1:{peers.http_port}"
log_level = "info"
shutdown_grace = "5s"

[mqtt]
url = "embedded://127.0.0.1:{peers.mqtt_port}"
protocol = 4
client_id = "billnotify-demo"
prefix = "billnotify"
retain_state = ["billing_task", "billing_run", "invoice", "billing_header"]

[[sources]]
name = "acme"
kind = "billing_platform"
base_url = {_q(peers.billing_base_url)}
api_key = {_q(api_key)}
poll_interval = "1s"
stall_after = "15s"
emit_on_first_sync = true

[[sources]]
name = "metering"
kind = "property_billing"
base_url = {_q(peers.property_base_url)}
auth_url = {_q(peers.auth_url)}
username = {_q(username)}
password = {_q(password)}
administrator_ids = {_list(peers.administrator_ids)}
properties = {_list(peers.properties)}
poll_interval = "2s"
emit_on_first_sync = true

[smtp]
host = "127.0.0.1"
port = {peers.smtp_port}
from = "Billing <billing@example.com>"
timeout = "10s"

[[webhooks]]
name = "ops"
url = {_q(peers.webhook_base_url + "/hooks/billing")}
secret = {_q(webhook_secret)}
timeout = "5s"
retry_schedule = ["0s", "1s", "2s", "5s", "10s"]
allow_private = true

[[webhooks]]
name = "chat"
url = {_q(peers.webhook_base_url + "/hooks/chat")}
secret = {_q(webhook_secret)}
timeout = "5s"
retry_schedule = ["0s", "1s", "2s", "5s", "10s"]
allow_private = true

{RULES_TOML}"""
    path = folder / CONFIG_NAME
    path.write_text(text, encoding="utf-8")
    logger.info("demo config written to %s", path)
    return path
