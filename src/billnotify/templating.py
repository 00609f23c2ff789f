"""The Jinja environment every template, recipient, topic and ``when`` goes through.

Sandboxed, ``StrictUndefined`` (a typo is an error, not an empty string), autoescaping
only for ``*.html.j2`` files. Files are compiled once (``auto_reload`` is off: restart
to pick up edited templates); inline strings and ``when`` expressions are compiled once
and cached as well. Block tags swallow their own line (``trim_blocks``,
``lstrip_blocks``), so templates can be indented without leaking blank lines.

Every failure, syntax or runtime, leaves as :class:`TemplateRenderError` naming the
template and line; no jinja2 exception escapes this module.

Template context (SPEC §4): ``event`` (the CloudEvent as a dict; ``event.data.object``
works), ``object`` (``event.data.object``), ``previous`` (old values of changed fields,
``{}`` on ``created``), ``changed``, ``rule`` (name, on, when), ``source`` (the source
name); a grouped rule's digest adds ``events``, ``group`` and ``count``. Helpers: the filters ``money``, ``date``, ``datetime`` and ``tojson``; ``attr``
reaches data attributes only (a method there is an error, not its repr in a message).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2.filters import do_attr
from jinja2.sandbox import SandboxedEnvironment

from billnotify.chain_results import current_results
from billnotify.digests import digest_context, is_digest
from billnotify.errors import TemplateError
from billnotify.events import CloudEvent
from billnotify.values import as_date, as_datetime, as_decimal, is_set

if TYPE_CHECKING:
    from billnotify.config.models import Rule

logger = logging.getLogger(__name__)

_INLINE_CACHE_MAX = 2048
_CURRENCY_SYMBOLS = {"GBP": "£", "USD": "$", "EUR": "€", "AUD": "A$", "NZD": "NZ$", "CAD": "C$"}


class TemplateRenderError(TemplateError):
    """A template failed to compile or render.

    Attributes:
        template: the template's name (file name, or a label for inline text).
        lineno: the line in the template, when known.
        reason: the underlying problem, without the location.
    """

    def __init__(self, template: str, reason: str, lineno: int | None = None) -> None:
        self.template = template
        self.lineno = lineno
        self.reason = reason
        where = f"{template}, line {lineno}" if lineno else template
        super().__init__(f"{where}: {reason}")


class _NotDataError(Exception):
    """A filter was asked for something templates must not print (a method, say)."""


@jinja2.pass_environment
def _attr(environment: jinja2.Environment, obj: Any, name: str) -> Any:
    """``x|attr('name')`` for data only: a method's or function's repr is never output."""
    value = do_attr(environment, obj, name)
    if callable(value) and not isinstance(value, jinja2.Undefined):
        raise _NotDataError(f"attr: {name!r} is not a data attribute")
    return value


class _Environment(SandboxedEnvironment):
    """A sandbox where ``a.b`` prefers the key ``b`` of a mapping over a dict method.

    Records have fields such as ``items`` or ``values``; ``object.items`` must be the
    field, not ``dict.items``.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


def money(value: Any, currency: str = "", places: int = 2) -> str:
    """Format an amount: ``"1234.5" | money("GBP")`` -> ``£1,234.50``.

    Args:
        value: a number or numeric string (``12.5``, ``"12.50"``, ``"1,234.00"``).
        currency: a symbol (``"£"``) or ISO code (``"GBP"`` -> ``£``; unknown codes are
            written before the amount, ``CHF 12.50``).
        places: decimal places, rounded half up.

    Returns:
        The formatted amount; a value that is not a number comes back as text.
    """
    number = as_decimal(value)
    if number is None:
        return "" if value is None else str(value)
    quantum = Decimal(1).scaleb(-places)
    rounded = number.quantize(quantum, rounding=ROUND_HALF_UP)
    text = format(abs(rounded), f",.{places}f")
    sign = "-" if rounded < 0 else ""
    code = currency.strip()
    if not code:
        return f"{sign}{text}"
    symbol = _CURRENCY_SYMBOLS.get(code.upper(), code)
    if symbol.isalpha():
        return f"{symbol} {sign}{text}"
    return f"{sign}{symbol}{text}"


def format_date(value: Any, fmt: str = "%d %b %Y") -> str:
    """Format a platform date (``2026-11-21``, ``2026-11-21T00:00:00``, ...).

    A value that is not a date comes back as text (``""`` for an empty or zero date).
    """
    parsed = as_date(value)
    if parsed is None:
        return str(value) if is_set(value) else ""
    return parsed.strftime(fmt)


def format_datetime(value: Any, fmt: str = "%d %b %Y %H:%M UTC") -> str:
    """Format a platform datetime in UTC (naive values are taken as UTC)."""
    parsed = as_datetime(value)
    if parsed is None:
        return str(value) if is_set(value) else ""
    return parsed.astimezone(UTC).strftime(fmt)


def build_context(event: CloudEvent, rule: Rule | None = None, **extra: Any) -> dict[str, Any]:
    """The template context of SPEC §4 for one event (and the rule acting on it)."""
    event_dict = event.model_dump(mode="json")
    data = event_dict.get("data") or {}
    context: dict[str, Any] = {
        "event": event_dict,
        "object": data.get("object") or {},
        "previous": data.get("previous") or {},
        "changed": data.get("changed") or [],
        "source": event.source_name,
        "rule": _rule_dict(rule) if rule else {},
        "results": current_results(),  # chained actions: the answers they run after
    }
    if is_digest(event):  # a grouped rule's flush: its events, group and count
        context.update(digest_context(event))
    context.update(extra)
    return context


def _rule_dict(rule: Rule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "on": list(rule.on),
        "when": rule.when,
        "sources": list(rule.sources),
    }


class TemplateRenderer:
    """Renders template files, inline strings and ``when`` expressions.

    Args:
        folder: the template folder, or several searched in order (e.g. the operator's
            folder, then the shipped defaults).
    """

    def __init__(self, folder: Path | str | Sequence[Path | str]) -> None:
        folders = [folder] if isinstance(folder, Path | str) else list(folder)
        self.folders = [Path(f) for f in folders]
        self.env = _Environment(
            loader=jinja2.FileSystemLoader([str(f) for f in self.folders]),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html", "htm", "html.j2", "htm.j2"),
                disabled_extensions=(),
                default_for_string=False,
                default=False,
            ),
            auto_reload=False,
            cache_size=-1,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.env.filters.update(money=money, date=format_date, datetime=format_datetime, attr=_attr)
        self.env.globals.update(money=money)
        self.env.policies["json.dumps_kwargs"] = {"sort_keys": True, "default": str}
        self._strings: dict[str, jinja2.Template] = {}
        self._expressions: dict[str, Callable[..., Any]] = {}

    # -- rendering ---------------------------------------------------------------------

    def exists(self, name: str) -> bool:
        """Whether a template file exists in one of the folders."""
        return any((folder / name).is_file() for folder in self.folders)

    def render_file(self, name: str, context: Mapping[str, Any]) -> str:
        """Render the template file ``name`` (e.g. ``task_failed.txt.j2``).

        Raises:
            TemplateRenderError: not found, invalid, or failed to render.
        """
        try:
            template = self.env.get_template(name)
            return template.render(context)
        except jinja2.TemplateNotFound:
            raise TemplateRenderError(name, f"not found in {self._where()}") from None
        except Exception as exc:
            raise _wrap(exc, name) from None

    def render_string(
        self, text: str, context: Mapping[str, Any], *, label: str = "inline template"
    ) -> str:
        """Render an inline template (a recipient, topic, parameter value).

        Raises:
            TemplateRenderError: invalid or failed to render; named by ``label``.
        """
        if "{" not in text:
            return text
        try:
            template = self._strings.get(text)
            if template is None:
                template = self.env.from_string(text)
                if len(self._strings) >= _INLINE_CACHE_MAX:
                    self._strings.clear()
                self._strings[text] = template
            return template.render(context)
        except Exception as exc:
            raise _wrap(exc, f"{label} {_short(text)!r}") from None

    def evaluate(self, expression: str, context: Mapping[str, Any]) -> bool:
        """Evaluate a rule's ``when`` expression to a boolean.

        Raises:
            TemplateRenderError: invalid, or failed (an undefined name, for instance).
        """
        try:
            compiled = self._expressions.get(expression)
            if compiled is None:
                compiled = self.env.compile_expression(expression, undefined_to_none=False)
                if len(self._expressions) >= _INLINE_CACHE_MAX:
                    self._expressions.clear()
                self._expressions[expression] = compiled
            return bool(compiled(**context))
        except Exception as exc:
            raise _wrap(exc, f"when {_short(expression)!r}") from None

    # -- checking ----------------------------------------------------------------------

    def check(
        self,
        *,
        email_templates: Iterable[str] = (),
        body_templates: Iterable[str] = (),
        expressions: Iterable[str] = (),
        strings: Iterable[str] = (),
        folder: bool = True,
    ) -> list[str]:
        """Compile everything and check references, for ``billnotify check``.

        Args:
            folder: also compile every template file in the folders.
            email_templates: base names that need ``.subject.j2`` and ``.txt.j2`` files
                (``.html.j2`` is optional).
            body_templates: webhook body template names (``<name>.j2``).
            expressions: ``when`` expressions to compile.
            strings: inline templates to compile (recipients, topics, parameters).

        Returns:
            One message per problem; empty when all is well.
        """
        errors: list[str] = []
        names = self.env.list_templates(extensions=["j2"]) if folder else []
        for name in sorted(set(names)):
            try:
                self.env.get_template(name)
            except Exception as exc:
                errors.append(str(_wrap(exc, name)))
        for base in sorted(set(email_templates)):
            for part in ("subject", "txt"):
                if not self.exists(f"{base}.{part}.j2"):
                    errors.append(
                        f"email template {base!r}: {base}.{part}.j2 not found in {self._where()}"
                    )
        for body in sorted(set(body_templates)):
            name = body_template_name(body)
            if not self.exists(name):
                errors.append(f"webhook body template {name} not found in {self._where()}")
        for expression in expressions:
            try:
                self.env.compile_expression(expression)
            except Exception as exc:
                errors.append(str(_wrap(exc, f"when {_short(expression)!r}")))
        for text in strings:
            try:
                self.env.from_string(text)
            except Exception as exc:
                errors.append(str(_wrap(exc, f"inline template {_short(text)!r}")))
        return errors

    def _where(self) -> str:
        return ", ".join(str(f) for f in self.folders)


def body_template_name(body: str) -> str:
    """The file of a webhook ``body`` setting: ``slack`` -> ``slack.j2``."""
    return body if body.endswith(".j2") else f"{body}.j2"


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _wrap(exc: BaseException, name: str) -> TemplateRenderError:
    if isinstance(exc, TemplateRenderError):
        return exc
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return TemplateRenderError(name, f"syntax error: {exc.message}", exc.lineno)
    if isinstance(exc, jinja2.TemplateNotFound):
        return TemplateRenderError(name, f"includes a template that is not found: {exc.name}")
    if isinstance(exc, _NotDataError):
        reason = str(exc)
    elif isinstance(exc, jinja2.UndefinedError):
        reason = f"undefined: {exc.message}"
    elif isinstance(exc, jinja2.exceptions.SecurityError):
        reason = f"not allowed in the sandbox: {exc}"
    else:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return TemplateRenderError(name, reason, _template_line(exc.__traceback__))


def _template_line(tb: TracebackType | None) -> int | None:
    # jinja rewrites tracebacks so that template frames carry the template's own line
    line = None
    while tb is not None:
        if "__jinja_exception__" in tb.tb_frame.f_globals:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
