"""docs/benchmarks.md documents every option of the comparison tool and every scenario."""

from __future__ import annotations

from pathlib import Path

from gunicorn_fdpass.bench import cli
from gunicorn_fdpass.bench.scenarios import SCENARIO_NAMES

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def test_every_option_and_scenario_is_documented() -> None:
    text = DOC.read_text()
    options = [o for a in cli.build_parser()._actions for o in a.option_strings
               if o.startswith("--") and o != "--help"]
    assert "--pin-master" in options and "--expect-status" in options
    missing = [o for o in options if f"`{o}" not in text]
    assert not missing, f"options missing from {DOC.name}: {missing}"
    for name in SCENARIO_NAMES:
        assert f"| `{name}` |" in text, name
    assert ",".join(SCENARIO_NAMES) in text  # the -s row lists them all
