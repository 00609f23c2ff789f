"""A production install (no ``demo`` extra: no aiosmtpd, amqtt or rich) imports, checks
and runs; ``demo`` and ``embedded://`` say which extra they need instead of a traceback."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import billnotify

# Run before anything else in the child: those modules cannot be imported, as when the
# extra is not installed.
BLOCK_DEMO_EXTRA = """
import sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"aiosmtpd", "amqtt", "rich"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""
ROOT = Path(__file__).resolve().parents[1]
DEMO_EXTRA = {"aiosmtpd", "amqtt", "rich"}
DEMO_ONLY = ("billnotify.demo.runner", "billnotify.demo.sinks", "billnotify.demo.view")
"""The demo's own modules: they need the extra (the ``billnotify.demo`` package does not)."""


def _without_extra(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_DEMO_EXTRA + code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _without_extra(
        "from billnotify.cli import main\nsys.exit(main(sys.argv[1:]))", *args, cwd=cwd
    )


def _names(requirements: list[str]) -> set[str]:
    return {r.split(">")[0].split("<")[0].split("=")[0].strip().lower() for r in requirements}


def test_a_production_install_does_not_pull_the_demo_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert _names(project["dependencies"]).isdisjoint(DEMO_EXTRA)
    assert _names(extras["demo"]) == DEMO_EXTRA
    assert "aiosmtpd" in _names(extras["dev"])  # the tests' real SMTP server
    assert "'.[dev,demo]'" in (ROOT / "Makefile").read_text()


def test_every_product_module_imports_without_the_demo_extra(tmp_path: Path) -> None:
    modules = [
        m.name
        for m in pkgutil.walk_packages(billnotify.__path__, "billnotify.")
        if m.name not in DEMO_ONLY and m.name != "billnotify.__main__"
    ]
    assert "billnotify.app" in modules and "billnotify.simulator.server" in modules
    code = "import importlib\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = _without_extra(code, *modules, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # and the blocker does block: the demo's own modules need the extra
    done = _without_extra("import billnotify.demo.view", cwd=tmp_path)
    assert "No module named 'rich" in done.stderr


def test_check_passes_and_demo_names_the_extra_without_it(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[service]\nname = "prod"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n')
    done = _cli("check", "-c", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "config OK" in done.stdout

    done = _cli("demo", "--duration", "1s", "--dir", str(tmp_path / "demo"), cwd=tmp_path)
    assert done.returncode != 0
    assert "billnotify demo needs the demo extra: pip install 'billnotify[demo]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_embedded_broker_without_the_extra_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[service]\nname = "prod"\nhttp = ""\n[mqtt]\nurl = "embedded://127.0.0.1:0"\n'
    )
    done = _cli("run", "-c", str(config), cwd=tmp_path)
    assert done.returncode != 0
    assert "embedded:// MQTT needs the demo extra: pip install 'billnotify[demo]'" in done.stderr
    assert "Traceback" not in done.stderr
