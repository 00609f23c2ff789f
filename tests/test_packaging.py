"""The files an operator deploys with: systemd unit, Dockerfile, licence."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "packaging" / "billnotify.service"


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("billnotify")
    unit = tmp_path / "billnotify.service"
    unit.write_text(UNIT.read_text().replace("/opt/billnotify/bin/billnotify", str(script)))
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verified.returncode == 0, verified.stderr
    assert "billnotify.service" not in verified.stderr, verified.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_template_unit_verifies_and_names_its_instance(tmp_path: Path) -> None:
    template = ROOT / "packaging" / "billnotify@.service"
    script = Path(sys.executable).with_name("billnotify")
    unit = tmp_path / "billnotify@a.service"
    unit.write_text(template.read_text().replace("/opt/billnotify/bin/billnotify", str(script)))
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verified.returncode == 0, verified.stderr
    assert "--instance %i --http ${BILLNOTIFY_HTTP}" in template.read_text()


def test_a_relative_state_lives_in_the_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from billnotify.config.service import ServiceConfig

    service = ServiceConfig()
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert service.state_path(tmp_path / "etc") == tmp_path / "etc" / "state.db"
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/var:{tmp_path}/other")
    assert service.state_path(tmp_path / "etc") == tmp_path / "var" / "state.db"
    absolute = ServiceConfig(state=str(tmp_path / "x.db"))
    assert absolute.state_path(tmp_path / "etc") == tmp_path / "x.db"


def test_systemd_unit_runs_as_a_dedicated_hardened_user() -> None:
    settings = _unit_settings()
    assert settings["DynamicUser"] == ["yes"]
    assert settings["StateDirectory"] == ["billnotify"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["CapabilityBoundingSet"] == [""]
    assert any("billnotify check" in cmd for cmd in settings["ExecStartPre"])
    assert settings["KillSignal"] == ["SIGTERM"]


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/healthz" in text


def test_licence_file_matches_the_package_metadata() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
