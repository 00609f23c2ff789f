"""Email throughput: :class:`EmailExecutor` against a raw aiosmtplib send loop.

Both sides send multipart/alternative (text + HTML) messages to the same aiosmtpd server
over the same number of kept-open connections (the executor's pool size), one message
per connection at a time. The raw side builds its message directly with the stdlib;
the executor renders subject, text and HTML from templates, renders and validates the
addresses, derives the Message-ID and drives MAIL/RCPT/DATA itself. Rounds alternate;
the best round of each is reported.
"""

from __future__ import annotations

import functools

from bench import BenchResult
from bench._peers import (
    FROM,
    TEMPLATES,
    best_of,
    executor_rate,
    failed_task_event,
    raw_smtp_rate,
    smtp_sink,
)
from billnotify.actions.email import EmailExecutor
from billnotify.config.models import EmailAction, Rule, SmtpConfig
from billnotify.templating import TemplateRenderer

EMAILS = 600
CONNECTIONS = 4
ROUNDS = 3
RULE = Rule.model_validate(
    {
        "name": "bench",
        "on": ["*"],
        "actions": [{"type": "email", "to": ["a@x.org"], "template": "t"}],
    }
)
EVENT = failed_task_event(contact="Ann Ops <ann@example.com>")


async def run() -> list[BenchResult]:
    """Measure emails/s of the executor and of a raw aiosmtplib loop."""
    with smtp_sink() as port:
        smtp = SmtpConfig.model_validate(
            {"host": "127.0.0.1", "port": port, "from": FROM, "timeout": "10s"}
        )
        executor = EmailExecutor(smtp, TemplateRenderer(TEMPLATES), pool_size=CONNECTIONS)
        action = EmailAction(
            type="email", to=["ops@example.com", "{{ object.contact }}"], template="task_failed"
        )
        composed = executor.compose(action, EVENT, RULE)
        raw = functools.partial(
            raw_smtp_rate,
            port,
            EMAILS,
            CONNECTIONS,
            to="ops@example.com, Ann Ops <ann@example.com>",
            subject="[acme] Billing task 1234 failed: Generate Invoice",
            text=composed.text,
            html=composed.html or "",
        )
        ours = functools.partial(executor_rate, executor, action, EVENT, RULE, EMAILS, CONNECTIONS)
        try:
            best = await best_of(ROUNDS, {"raw": raw, "executor": ours}, warm_up=[raw, ours])
        finally:
            await executor.close()
    notes = (
        f"{EMAILS} text+HTML emails, {CONNECTIONS} kept-open connections, best of {ROUNDS}, "
        "local aiosmtpd (task_failed templates)"
    )
    return [BenchResult.versus("email.send", best["executor"], "emails/s", best["raw"], notes)]
