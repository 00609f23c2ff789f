"""Mute windows as instants (``deliveries/mute.py``) and their config validation: weekdays
and times read on the window's wall clock, across daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from billnotify.config.loader import parse_config
from billnotify.config.mute import MuteWindow, parse_times
from billnotify.deliveries.mute import Mute, muted_until
from billnotify.errors import ConfigError


def mute(**fields: Any) -> Mute:
    return Mute.of(MuteWindow.model_validate({"name": "w", "timezone": "Europe/London", **fields}))


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


WEEKEND = {"weekdays": ["saturday", "sunday"], "times": ["00:00-24:00"]}


@pytest.mark.parametrize(
    ("now", "until"),
    [
        (utc(2026, 3, 27, 23, 59), None),  # Friday 23:59 GMT
        (utc(2026, 3, 28, 0, 0), utc(2026, 3, 29, 23, 0)),  # ends Monday 00:00 BST
        (utc(2026, 3, 29, 22, 59), utc(2026, 3, 29, 23, 0)),
        (utc(2026, 3, 29, 23, 0), None),  # Monday already in London
        (utc(2026, 10, 23, 22, 59), None),  # Friday 23:59 BST
        (utc(2026, 10, 23, 23, 0), utc(2026, 10, 26, 0, 0)),  # Saturday 00:00 BST .. GMT
        (utc(2026, 10, 25, 23, 59), utc(2026, 10, 26, 0, 0)),
    ],
)
def test_the_london_weekend_follows_the_clock_changes(
    now: datetime, until: datetime | None
) -> None:
    found = muted_until([mute(**WEEKEND)], now)
    assert (found[0] if found else None) == until


def test_a_night_range_on_the_change_days_is_an_hour_shorter_or_longer() -> None:
    night = mute(times=["00:00-02:30"])
    # 29 March: 01:00 GMT becomes 02:00 BST, so 02:30 BST is 01:30 UTC
    assert muted_until([night], utc(2026, 3, 29, 0, 10)) == (utc(2026, 3, 29, 1, 30), ["w"])
    assert muted_until([night], utc(2026, 3, 29, 1, 30)) is None
    # 25 October: 02:00 BST becomes 01:00 GMT, so 02:30 GMT is 02:30 UTC
    assert muted_until([night], utc(2026, 10, 24, 23, 30)) == (utc(2026, 10, 25, 2, 30), ["w"])
    assert muted_until([night], utc(2026, 10, 25, 1, 30)) == (utc(2026, 10, 25, 2, 30), ["w"])


def test_a_range_inside_the_repeated_hour_ends_at_its_second_occurrence() -> None:
    quarter = mute(times=["01:00-01:45"])
    # 25 October: 01:00-02:00 happens twice, first in BST (00:00-01:00 UTC), then in GMT
    assert muted_until([quarter], utc(2026, 10, 25, 0, 30)) == (utc(2026, 10, 25, 0, 45), ["w"])
    assert muted_until([quarter], utc(2026, 10, 25, 0, 50)) is None  # 01:50 BST
    assert muted_until([quarter], utc(2026, 10, 25, 1, 30)) == (utc(2026, 10, 25, 1, 45), ["w"])


def test_adjacent_and_overlapping_windows_chain_to_the_last_end() -> None:
    evenings = mute(times=["18:00-24:00"])
    mornings = Mute.of(MuteWindow(name="mornings", timezone="Europe/London", times=["00:00-08:00"]))
    # a winter evening: 18:00 GMT to 08:00 GMT the next day, through both windows
    assert muted_until([evenings, mornings], utc(2026, 1, 14, 19, 0)) == (
        utc(2026, 1, 15, 8, 0),
        ["w", "mornings"],
    )
    assert muted_until([evenings, mornings], utc(2026, 1, 14, 12, 0)) is None


def test_weekdays_are_the_zones_own() -> None:
    # Friday 20:00 in New York is Saturday 01:00 UTC: not a weekend there
    friday = Mute.of(MuteWindow(name="ny", timezone="America/New_York", **WEEKEND))
    assert muted_until([friday], utc(2026, 6, 13, 1, 0)) is None
    assert muted_until([friday], utc(2026, 6, 13, 4, 0)) == (utc(2026, 6, 15, 4, 0), ["ny"])


def test_all_day_every_day_without_times_or_weekdays() -> None:
    found = muted_until([mute()], utc(2026, 6, 1, 12, 0))
    assert found is not None and found[0] > utc(2027, 1, 1)


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("00:00-24:00", (0, 1440)), ("09:00-17:30", (540, 1050)), ("23:59-24:00", (1439, 1440))],
)
def test_time_ranges(text: str, minutes: tuple[int, int]) -> None:
    assert parse_times(text) == minutes


@pytest.mark.parametrize("text", ["9:00-17:00", "17:00-09:00", "10:00-10:00", "24:00-24:00", "x"])
def test_bad_time_ranges(text: str) -> None:
    with pytest.raises(ValueError):
        parse_times(text)


def test_bad_mute_config_is_reported_with_toml_paths() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "mute_windows": [
                    {"name": "a", "timezone": "Mars/Olympus"},
                    {"name": "b", "timezone": "UTC", "weekdays": ["caturday"]},
                    {"name": "c", "timezone": "UTC", "times": ["22:00-06:00"]},
                    {"name": "a", "timezone": "UTC", "weekdays": []},
                ],
                "webhooks": [
                    {
                        "name": "ops",
                        "url": "https://hooks.example.com/x",
                        "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                        "rate_limit": "10 per second",
                    }
                ],
                "smtp": {"host": "mail", "from": "b@example.com", "rate_limit": "0/m"},
                "rules": [
                    {
                        "name": "r",
                        "on": ["invoice.*"],
                        "mute": ["a", "nope"],
                        "mute_action": "ignore",
                        "actions": [{"type": "webhook", "endpoint": "ops"}],
                    }
                ],
            }
        )
    issues = "\n".join(caught.value.issues)
    assert "mute_windows[0].timezone: unknown IANA time zone 'Mars/Olympus'" in issues
    assert "mute_windows[1].weekdays[0]:" in issues
    assert "mute_windows[2].times: must end after it starts, got '22:00-06:00'" in issues
    assert "mute_windows[3].weekdays: must list at least one day" in issues
    assert "mute_windows[3].name: duplicate name 'a' (also mute_windows[0])" in issues
    assert "rules[0].mute[1]: unknown mute window 'nope'" in issues
    assert "rules[0].mute_action:" in issues
    assert "webhooks[0].rate_limit: must be 'N/s', 'N/m' or 'N/h'" in issues
    assert "smtp.rate_limit: must allow at least 1 delivery per period" in issues


def test_rates_are_read_in_their_canonical_spelling() -> None:
    config = parse_config(
        {
            "smtp": {"host": "mail", "from": "b@example.com", "rate_limit": " 100 / m "},
        }
    )
    assert config.smtp is not None and config.smtp.rate_limit == "100/m"
