"""FDPASS_* settings: parsing and the startup errors a user sees."""

from __future__ import annotations

import importlib
import os
from dataclasses import fields
from pathlib import Path

import pytest
from gunicorn.config import Config

from gunicorn_fdpass.errors import ConfigurationError
from gunicorn_fdpass.settings import FdpassSettings, load
from gunicorn_fdpass.worker import Worker

# Imported through the worker, as Gunicorn does (imported first, it meets its import cycle
# with the worker package).
gunicorn_settings = importlib.import_module("gunicorn_fdpass.gunicorn_settings")


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


def test_in_order_is_a_flag() -> None:
    assert FdpassSettings().in_order is True
    assert load({"FDPASS_IN_ORDER": "0"}).in_order is False
    assert load({"FDPASS_IN_ORDER": "on"}).in_order is True
    with pytest.raises(ConfigurationError, match="bad value for FDPASS_IN_ORDER"):
        load({"FDPASS_IN_ORDER": "maybe"})


def test_every_setting_is_documented() -> None:
    """docs/settings.md lists every FDPASS_* variable the code knows."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "settings.md").read_text()
    missing = [f"FDPASS_{f.name.upper()}" for f in fields(FdpassSettings)
               if f"`FDPASS_{f.name.upper()}`" not in doc]
    assert not missing


def test_a_known_name_in_the_wrong_case_gets_the_right_name_suggested() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown setting fdpass_head_timeout \(did you "
                                                 r"mean FDPASS_HEAD_TIMEOUT\?\)"):
        load({"fdpass_head_timeout": "3"})


def test_an_unknown_name_in_any_case_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown setting Fdpass_Colour\b"):
        load({"Fdpass_Colour": "blue"})


def test_names_that_only_contain_the_prefix_are_not_ours() -> None:
    assert load({"MY_FDPASS_X": "1", "FDPASSX": "2"}) == FdpassSettings()


# -- validation of Gunicorn's cfg, and the hook that runs it before Gunicorn binds --------

def _config(**values: object) -> Config:
    cfg = Config()
    cfg.set("worker_class", "gunicorn_fdpass.Worker")
    for name, value in values.items():
        cfg.set(name, value)
    return cfg


@pytest.fixture
def first_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a fresh gunicorn process, where the worker class has not been loaded yet."""
    monkeypatch.setattr(gunicorn_settings, "_CHECKED_AT_LOAD", False)
    for name in [n for n in os.environ if n.upper().startswith("FDPASS_")]:
        monkeypatch.delenv(name)


def test_validate_counts_values_given_to_gunicorn_before_they_reach_the_environment(
        first_load: None) -> None:
    gunicorn_settings.validate(_config(raw_env=["FDPASS_HEAD_TIMEOUT=2"]))
    with pytest.raises(ConfigurationError, match="bad value for FDPASS_HEAD_TIMEOUT"):
        gunicorn_settings.validate(_config(raw_env=["FDPASS_HEAD_TIMEOUT=soon"]))


def test_loading_the_worker_class_validates_the_config_that_loads_it(first_load: None) -> None:
    with pytest.raises(ConfigurationError, match=r"reuse_port \(--reuse-port\) cannot be used"):
        _ = _config(reuse_port=True).worker_class  # Gunicorn's Arbiter.setup does this


def test_a_reload_loads_the_class_again_without_refusing(first_load: None) -> None:
    assert _config().worker_class is Worker  # startup: checked, fine
    # A HUP reload builds a new Config and loads the class again: a bad value there must not
    # stop the running server from that hook.
    assert _config(reuse_port=True).worker_class is Worker


def test_the_hook_does_nothing_when_not_called_by_gunicorn(first_load: None) -> None:
    gunicorn_settings.validate_on_load()  # no Config among the callers: nothing to check
    assert gunicorn_settings._CHECKED_AT_LOAD is False


def test_issue_13_settings_parse_with_their_defaults() -> None:
    assert (FdpassSettings().body_buffer, FdpassSettings().body_timeout,
            FdpassSettings().max_connections) == (64 * 1024, 0.0, 0)
    s = load({"FDPASS_BODY_BUFFER": "0", "FDPASS_BODY_TIMEOUT": "3",
              "FDPASS_MAX_CONNECTIONS": "50000"})
    assert (s.body_buffer, s.body_timeout, s.max_connections) == (0, 3.0, 50000)
    with pytest.raises(ConfigurationError, match="bad value for FDPASS_MAX_CONNECTIONS"):
        load({"FDPASS_MAX_CONNECTIONS": "-1"})


class _Cfg:
    """The Gunicorn settings dispatch_settings reads."""

    is_ssl = False
    keepalive = 2
    worker_connections = 1000
    workers = 2
    limit_request_line = 4094
    limit_request_fields = 100
    limit_request_field_size = 8190
    proxy_protocol = "v1"
    proxy_allow_ips = ("10.0.0.1",)


def test_the_masters_cap_is_its_own_setting_not_worker_connections() -> None:
    import resource

    from gunicorn_fdpass.gunicorn_settings import connections_for_fd_limit, dispatch_settings

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    default = dispatch_settings(_Cfg(), FdpassSettings())
    assert default.max_connections == connections_for_fd_limit(2) < soft
    assert dispatch_settings(_Cfg(), FdpassSettings(max_connections=7)).max_connections == 7
    assert (default.body_buffer, default.proxy_protocol) == (64 * 1024, "v1")
    assert not default.proxy_allow.allows(("127.0.0.1", 1))
    assert default.proxy_allow.allows(("10.0.0.1", 1))


def test_the_fd_limit_is_raised_toward_the_hard_limit_in_a_child() -> None:
    """In a child process: raising the limit must not change this test process's."""
    import multiprocessing
    import resource

    from gunicorn_fdpass.gunicorn_settings import raise_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("no room above 256 descriptors")

    def child(out: multiprocessing.queues.SimpleQueue[tuple[int, int, int]]) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        before, after = raise_fd_limit()
        out.put((before, after, resource.getrlimit(resource.RLIMIT_NOFILE)[0]))

    ctx = multiprocessing.get_context("fork")
    out = ctx.SimpleQueue()
    proc = ctx.Process(target=child, args=(out,))
    proc.start()
    proc.join(10)
    before, after, now = out.get()
    assert before == 256 and after == now > 256
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)


def test_the_no_extensions_switch_is_not_an_unknown_setting() -> None:
    # Read by gunicorn_fdpass.master.fastpath at import; a typo next to it is still refused.
    assert load({"FDPASS_NO_EXTENSIONS": "1"}) == FdpassSettings()
    with pytest.raises(ConfigurationError, match=r"unknown setting FDPASS_NO_EXTENSION \(did you "
                                                 r"mean FDPASS_NO_EXTENSIONS\?\)"):
        load({"FDPASS_NO_EXTENSION": "1"})
