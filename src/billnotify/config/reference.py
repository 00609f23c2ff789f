"""The configuration reference (README section) generated from the models.

``python -m billnotify.config.reference`` prints it; a test checks that the README
holds exactly this text, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from billnotify.config.models import (
    BillingPlatformSource,
    EmailAction,
    InvoiceActionAction,
    MqttAction,
    MqttConfig,
    MuteWindow,
    PropertyBillingSource,
    Rule,
    ServiceConfig,
    SmtpConfig,
    WebhookAction,
    WebhookEndpoint,
)
from billnotify.durations import format_duration

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"

TABLES: list[tuple[str, type[BaseModel]]] = [
    ("[service]", ServiceConfig),
    ("[mqtt]", MqttConfig),
    ('[[sources]] kind = "billing_platform"', BillingPlatformSource),
    ('[[sources]] kind = "property_billing"', PropertyBillingSource),
    ("[smtp]", SmtpConfig),
    ("[[webhooks]]", WebhookEndpoint),
    ("[[rules]]", Rule),
    ('[[rules.actions]] type = "invoice_action"', InvoiceActionAction),
    ('[[rules.actions]] type = "email"', EmailAction),
    ('[[rules.actions]] type = "webhook"', WebhookAction),
    ('[[rules.actions]] type = "mqtt"', MqttAction),
    ("[[mute_windows]]", MuteWindow),
]


def _toml(value: Any) -> str:
    if isinstance(value, timedelta):
        return f'"{format_duration(value)}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default is PydanticUndefined:
        return "**required**"
    if field.default is None:
        return "—"
    return f"`{_toml(field.default)}`"


def _type(field: FieldInfo) -> str:
    text = str(field.annotation)
    if "parse_duration" in text or text == "<class 'datetime.timedelta'>":
        if text.startswith("list"):
            return "list[duration]"
        return (
            "duration \\| None"
            if "Optional" in text
            else "duration".replace("typing.", "").replace("datetime.timedelta", "duration")
        )
    text = text.replace("billnotify.secrets.Secret", "secret").replace("NoneType", "None")
    text = re.sub(r"typing\.Annotated\[str, [^\]]*\]", "str", text)  # a checked str
    text = text.replace("<class '", "").replace("'>", "")
    if text.startswith("list[typing.Annotated[billnotify.config.rules.InvoiceActionAction"):
        return "list[action] (tables below)"
    return text.replace("|", "\\|")


def reference() -> str:
    """The markdown reference of every table and key."""
    out = [START, ""]
    for title, model in TABLES:
        out += [f"#### `{title}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if name == "kind" or name == "type":
                continue
            key = field.alias or name
            doc = (field.description or "").replace("\n", " ").replace("|", "\\|")
            out.append(f"| `{key}` | {_type(field)} | {_default(field)} | {doc} |")
        out.append("")
    out.append(END)
    return "\n".join(out)


if __name__ == "__main__":
    print(reference())
