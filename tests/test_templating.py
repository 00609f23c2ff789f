"""The Jinja environment: sandbox, strictness, escaping, helpers, errors and checks."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from billnotify.config.models import Rule
from billnotify.errors import TemplateError
from billnotify.events import CloudEvent
from billnotify.templating import (
    TemplateRenderer,
    TemplateRenderError,
    build_context,
    format_date,
    format_datetime,
    money,
)

EVENT = CloudEvent(
    id="evt_1",
    source="billnotify://acme",
    type="invoice.status_changed",
    subject="invoices/55",
    time="2026-11-21T10:15:02Z",
    data={
        "object": {"id": 55, "invoiceNumber": "ACC1/3", "total": "120.5", "items": ["a"]},
        "previous": {"status": ["Unsent"]},
        "changed": ["status"],
        "added": ["Approved"],
    },
)
RULE = Rule.model_validate(
    {
        "name": "approved",
        "on": ["invoice.*"],
        "when": "'Approved' in event.data.added",
        "actions": [{"type": "mqtt", "topic": "t"}],
    }
)


@pytest.fixture
def renderer(tmp_path: Path) -> TemplateRenderer:
    return TemplateRenderer(tmp_path)


def ctx() -> dict[str, object]:
    return build_context(EVENT, RULE)


# -- helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "args", "expected"),
    [
        ("12.50", (), "12.50"),
        (12.5, (), "12.50"),
        (12, (), "12.00"),
        (Decimal("2.675"), (), "2.68"),
        ("1,234.5", (), "1,234.50"),
        ("1234567.891", (), "1,234,567.89"),
        ("-3.5", ("GBP",), "-£3.50"),
        ("3.5", ("£",), "£3.50"),
        ("3.5", ("usd",), "$3.50"),
        ("3.5", ("CHF",), "CHF 3.50"),
        ("-3.5", ("CHF",), "CHF -3.50"),
        ("7.5", ("", 0), "8"),
        (None, (), ""),
        ("n/a", (), "n/a"),
    ],
)
def test_money(value: object, args: tuple[object, ...], expected: str) -> None:
    assert money(value, *args) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-21", "21 Nov 2026"),
        ("2026-11-21T10:15:02Z", "21 Nov 2026"),
        ("2026-11-21 23:59:59", "21 Nov 2026"),
        ("2026-11-21T00:00:00", "21 Nov 2026"),
        ("0000-00-00", ""),
        ("", ""),
        (None, ""),
        ("soon", "soon"),
    ],
)
def test_date(value: object, expected: str) -> None:
    assert format_date(value) == expected


def test_datetime_is_utc_and_formats() -> None:
    assert format_datetime("2026-11-21T10:15:02Z") == "21 Nov 2026 10:15 UTC"
    assert format_datetime("2026-11-21T12:15:02+02:00") == "21 Nov 2026 10:15 UTC"
    assert format_datetime("2026-11-21 10:15:02", "%Y-%m-%d %H:%M:%S") == "2026-11-21 10:15:02"
    assert format_datetime("0000-00-00 00:00:00") == ""


def test_filters_in_templates(renderer: TemplateRenderer) -> None:
    text = renderer.render_string(
        "{{ object.total | money('GBP') }} due {{ '2026-12-01' | date('%d/%m/%Y') }} "
        "at {{ event.time | datetime('%H:%M') }} {{ {'b': 1, 'a': object.id} | tojson }}",
        ctx(),
    )
    assert text == '£120.50 due 01/12/2026 at 10:15 {"a": 55, "b": 1}'


# -- context -----------------------------------------------------------------------------


def test_context(renderer: TemplateRenderer) -> None:
    context = ctx()
    assert set(context) >= {"event", "object", "previous", "changed", "rule", "source"}
    text = renderer.render_string(
        "{{ source }} {{ rule.name }} {{ event.data.object.invoiceNumber }} {{ object.id }} "
        "{{ previous.status | join(',') }} {{ changed | join(',') }}",
        context,
    )
    assert text == "acme approved ACC1/3 55 Unsent status"


def test_a_field_named_like_a_dict_method_is_the_field(renderer: TemplateRenderer) -> None:
    assert renderer.render_string("{{ object.items | join('') }}", ctx()) == "a"


def test_previous_is_empty_on_created_events(renderer: TemplateRenderer) -> None:
    created = EVENT.model_copy(update={"type": "invoice.created", "data": {"object": {"id": 1}}})
    text = renderer.render_string(
        "{{ 'was ' ~ previous.status if previous.status is defined else 'new' }}",
        build_context(created),
    )
    assert text == "new"


# -- when --------------------------------------------------------------------------------


def test_evaluate(renderer: TemplateRenderer) -> None:
    assert renderer.evaluate("'Approved' in event.data.added", ctx()) is True
    assert renderer.evaluate("object.total | float > 500", ctx()) is False
    with pytest.raises(TemplateError, match=re.escape("when 'object.missing == 1': undefined")):
        renderer.evaluate("object.missing == 1", ctx())
    with pytest.raises(TemplateRenderError, match="syntax error"):
        renderer.evaluate("object.id ==", ctx())


# -- escaping, strictness, sandbox --------------------------------------------------------


def test_autoescape_only_for_html_files(renderer: TemplateRenderer, tmp_path: Path) -> None:
    (tmp_path / "x.html.j2").write_text("<p>{{ value }}</p>")
    (tmp_path / "x.txt.j2").write_text("{{ value }}")
    context = {"value": "<b>&</b>"}
    assert renderer.render_file("x.html.j2", context) == "<p>&lt;b&gt;&amp;&lt;/b&gt;</p>"
    assert renderer.render_file("x.txt.j2", context) == "<b>&</b>"
    assert renderer.render_string("{{ value }}", context) == "<b>&</b>"


def test_undefined_names_the_template_and_line(renderer: TemplateRenderer, tmp_path: Path) -> None:
    (tmp_path / "t.txt.j2").write_text("line one\n{{ object.id }}\n{{ object.nope }}\n")
    with pytest.raises(TemplateRenderError) as caught:
        renderer.render_file("t.txt.j2", ctx())
    assert caught.value.template == "t.txt.j2"
    assert caught.value.lineno == 3
    assert str(caught.value).startswith("t.txt.j2, line 3: undefined:")


def test_errors_in_included_templates_name_the_included_line(
    renderer: TemplateRenderer, tmp_path: Path
) -> None:
    (tmp_path / "outer.txt.j2").write_text("a\n{% include 'inner.j2' %}\n")
    (tmp_path / "inner.j2").write_text("b\nc\n{{ 1 / 0 }}\n")
    with pytest.raises(TemplateRenderError) as caught:
        renderer.render_file("outer.txt.j2", {})
    assert caught.value.lineno == 3
    assert "ZeroDivisionError" in str(caught.value)


def test_syntax_errors_name_the_line(renderer: TemplateRenderer, tmp_path: Path) -> None:
    (tmp_path / "s.j2").write_text("ok\n{% if %}\n")
    with pytest.raises(TemplateRenderError, match=r"^s.j2, line 2: syntax error"):
        renderer.render_file("s.j2", {})


def test_a_missing_template(renderer: TemplateRenderer) -> None:
    with pytest.raises(TemplateRenderError, match=r"^nope\.j2: not found in"):
        renderer.render_file("nope.j2", {})


def test_inline_errors_are_labelled(renderer: TemplateRenderer) -> None:
    with pytest.raises(
        TemplateRenderError, match=re.escape("to address '{{ object.email }}', line 1: undefined")
    ):
        renderer.render_string("{{ object.email }}", ctx(), label="to address")


@pytest.mark.parametrize(
    "source",
    [
        "{{ object.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_the_sandbox_holds(renderer: TemplateRenderer, source: str) -> None:
    with pytest.raises(TemplateRenderError):
        renderer.render_string(source, ctx())


def test_no_jinja_exception_escapes(renderer: TemplateRenderer) -> None:
    for source in [
        "{{ 1 + 'a' }}",
        "{{ object.id.nope.deeper }}",
        "{% for %}",
        "{{ range(10**9) | list | length }}",
    ]:
        with pytest.raises(TemplateRenderError):
            renderer.render_string(source, ctx())


@pytest.mark.parametrize("name", ["keys", "items", "get"])
def test_attr_refuses_a_method_instead_of_printing_its_repr(
    renderer: TemplateRenderer, name: str
) -> None:
    with pytest.raises(TemplateRenderError, match=f"attr: '{name}' is not a data attribute"):
        renderer.render_string(f"{{{{ event.data|attr('{name}') }}}}", ctx())


def test_attr_still_reads_data_attributes(renderer: TemplateRenderer) -> None:
    context = {**ctx(), "day": date(2026, 11, 21)}
    assert renderer.render_string("{{ day|attr('year') }}", context) == "2026"
    # a missing attribute stays undefined (an error under StrictUndefined), as before
    with pytest.raises(TemplateRenderError, match="undefined"):
        renderer.render_string("{{ object|attr('nope') }}", ctx())


# -- caching -----------------------------------------------------------------------------


def test_files_are_compiled_once(renderer: TemplateRenderer, tmp_path: Path) -> None:
    (tmp_path / "c.txt.j2").write_text("first")
    assert renderer.render_file("c.txt.j2", {}) == "first"
    (tmp_path / "c.txt.j2").write_text("second")
    assert renderer.render_file("c.txt.j2", {}) == "first"


def test_inline_templates_and_expressions_are_cached(renderer: TemplateRenderer) -> None:
    for _ in range(3):
        renderer.render_string("{{ object.id }}", ctx())
        renderer.evaluate("object.id == 55", ctx())
    assert len(renderer._strings) == 1
    assert len(renderer._expressions) == 1


def test_several_folders_are_searched_in_order(tmp_path: Path) -> None:
    mine, defaults = tmp_path / "mine", tmp_path / "defaults"
    mine.mkdir()
    defaults.mkdir()
    (mine / "a.j2").write_text("mine")
    (defaults / "a.j2").write_text("default")
    (defaults / "b.j2").write_text("default b")
    renderer = TemplateRenderer([mine, defaults])
    assert renderer.render_file("a.j2", {}) == "mine"
    assert renderer.render_file("b.j2", {}) == "default b"


# -- check -------------------------------------------------------------------------------


def test_check_reports_every_problem(renderer: TemplateRenderer, tmp_path: Path) -> None:
    (tmp_path / "good.subject.j2").write_text("hi")
    (tmp_path / "good.txt.j2").write_text("body")
    (tmp_path / "half.subject.j2").write_text("hi")
    (tmp_path / "broken.j2").write_text("{% for x in %}")
    (tmp_path / "hook.j2").write_text("{}")
    problems = renderer.check(
        email_templates=["good", "half"],
        body_templates=["hook", "gone"],
        expressions=["object.id == 1", "object.id =="],
        strings=["{{ ok }}", "{{ bad"],
    )
    assert len(problems) == 5
    assert problems[0].startswith("broken.j2, line 1: syntax error")
    assert "half.txt.j2 not found" in problems[1]
    assert "gone.j2 not found" in problems[2]
    assert problems[3].startswith("when 'object.id ==', line 1: syntax error")
    assert problems[4].startswith("inline template '{{ bad', line 1: syntax error")


def test_check_is_clean_when_all_is_well(renderer: TemplateRenderer, tmp_path: Path) -> None:
    (tmp_path / "good.subject.j2").write_text("hi")
    (tmp_path / "good.txt.j2").write_text("body")
    assert renderer.check(email_templates=["good"], expressions=["true"]) == []
