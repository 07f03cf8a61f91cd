"""FDPASS_* settings: parsing and the startup errors a user sees."""

from __future__ import annotations

import pytest

from gunicorn_fdpass.errors import ConfigurationError
from gunicorn_fdpass.settings import FdpassSettings, load


def test_defaults_when_nothing_is_set() -> None:
    assert load({"PATH": "/bin"}) == FdpassSettings()


def test_values_are_parsed() -> None:
    s = load({"FDPASS_HEAD_TIMEOUT": "2.5", "FDPASS_MAX_QUEUE": "7", "FDPASS_SHED_WAIT": "0",
              "FDPASS_STATS_FILE": "/tmp/x.json", "FDPASS_BURST": " 4 "})
    assert (s.head_timeout, s.max_queue, s.shed_wait, s.stats_file, s.burst) == (
        2.5, 7, 0.0, "/tmp/x.json", 4)


def test_typo_is_an_error_that_suggests_the_right_name() -> None:
    with pytest.raises(ConfigurationError, match=r"FDPASS_HEAD_TIMOUT.*did you mean "
                                                 r"FDPASS_HEAD_TIMEOUT"):
        load({"FDPASS_HEAD_TIMOUT": "3"})


@pytest.mark.parametrize("name,value", [
    ("FDPASS_MAX_QUEUE", "0"),
    ("FDPASS_MAX_QUEUE", "ten"),
    ("FDPASS_HEAD_TIMEOUT", "-1"),
    ("FDPASS_BURST", "1.5"),
    ("FDPASS_SHED_QUEUE", "-3"),
])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=f"bad value for {name}"):
        load({name: value})


def test_configuration_error_is_what_gunicorn_prints_as_a_startup_error() -> None:
    # Gunicorn's runner prints a RuntimeError as "Error: ..." and exits 1.
    assert issubclass(ConfigurationError, RuntimeError)


def test_the_no_extensions_switch_is_not_an_unknown_setting() -> None:
    # Read by gunicorn_fdpass.master.fastpath at import; a typo next to it is still refused.
    assert load({"FDPASS_NO_EXTENSIONS": "1"}) == FdpassSettings()
    with pytest.raises(ConfigurationError, match="FDPASS_NO_EXTENSION"):
        load({"FDPASS_NO_EXTENSION": "1"})
