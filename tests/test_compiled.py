"""The compiled HTTP layer (mypyc, setup.py's MYPYC) and the switch back to pure Python."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gunicorn_fdpass
from gunicorn_fdpass import compiled

REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path(gunicorn_fdpass.__file__).parent


def mypyc_modules() -> list[str]:
    """Module names of setup.py's MYPYC list (read from the source, not by running it)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["MYPYC"]:
            paths = ast.literal_eval(node.value)
            return [p.removesuffix(".py").replace("/", ".") for p in paths]
    raise AssertionError("no MYPYC list in setup.py")


def loaded_in_child(env: dict[str, str]) -> dict[str, object]:
    """Import every module of the list and the master's fast path in a fresh interpreter;
    say where each came from."""
    code = (
        "import importlib, json\n"
        f"names = {mypyc_modules()!r}\n"
        "files = {n: importlib.import_module(n).__file__ for n in names}\n"
        "from gunicorn_fdpass import compiled\n"
        "from gunicorn_fdpass.master import fastpath\n"
        "print(json.dumps({'files': files, 'compiled': compiled.compiled_modules(),\n"
        "                  'core': fastpath.COMPILED}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, cwd=REPO).stdout
    result: dict[str, object] = json.loads(out)
    return result


def source_of(name: str) -> Path:
    return PACKAGE.parent / (name.replace(".", "/") + ".py")


def twins_of(name: str) -> list[Path]:
    """The compiled twins the install built beside this module's source."""
    source = source_of(name)
    return sorted(source.parent.glob(source.stem + ".cpython-*.so"))


def test_the_list_names_sources_that_exist() -> None:
    names = mypyc_modules()
    assert names and all(name.startswith("gunicorn_fdpass.") for name in names)
    for name in names:
        assert source_of(name).is_file(), name


def test_no_extensions_loads_every_module_from_source() -> None:
    env = {**os.environ, "FDPASS_NO_EXTENSIONS": "1"}
    result = loaded_in_child(env)
    files = result["files"]
    assert isinstance(files, dict)
    assert all(str(path).endswith(".py") for path in files.values()), files
    assert result["compiled"] == [] and result["core"] is False


def test_by_default_whatever_was_built_is_what_runs() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FDPASS_NO_EXTENSIONS"}
    result = loaded_in_child(env)
    expected = [name for name in mypyc_modules() if twins_of(name)]
    loaded = result["compiled"]
    assert isinstance(loaded, list)
    assert set(expected) <= set(loaded), (expected, loaded)
    if not expected:
        pytest.skip("the HTTP layer was not compiled in this install (no mypyc or compiler)")


def test_the_source_finder_only_answers_for_the_package_modules() -> None:
    finder = compiled._SourceFinder()
    http_path = [str(PACKAGE / "http")]
    spec = finder.find_spec("gunicorn_fdpass.http.request_head", http_path)
    assert spec is not None and spec.origin == str(PACKAGE / "http" / "request_head.py")
    # A package (no .py of that name), a module without source, and names from elsewhere
    # are left to the usual finders.
    assert finder.find_spec("gunicorn_fdpass.http", [str(PACKAGE)]) is None
    assert finder.find_spec("gunicorn_fdpass.master._core", [str(PACKAGE / "master")]) is None
    assert finder.find_spec("json.decoder", http_path) is None
    assert finder.find_spec("gunicorn_fdpass.anything", None) is None


@pytest.mark.parametrize(("value", "disabled"), [("", False), ("0", False), ("1", True),
                                                 ("yes", True)])
def test_extensions_disabled_reads_the_variable(monkeypatch: pytest.MonkeyPatch, value: str,
                                                disabled: bool) -> None:
    monkeypatch.setenv("FDPASS_NO_EXTENSIONS", value)
    assert compiled.extensions_disabled() is disabled


def test_no_compiled_module_is_older_than_its_source() -> None:
    # Python loads the compiled twin first: one built before its source last changed would
    # silently run the old code. Rebuild with `pip install -e .` (or run pure Python).
    for name in mypyc_modules():
        source = source_of(name)
        for twin in twins_of(name):
            assert twin.stat().st_mtime >= source.stat().st_mtime, (
                f"{twin.name} is older than {source.name}: run `pip install -e .` again")


def test_no_compiled_module_is_left_over_from_an_earlier_list() -> None:
    # A module taken off the list keeps its old .so beside the source until removed by hand.
    expected = {*mypyc_modules(), "gunicorn_fdpass.master._core"}
    for twin in PACKAGE.rglob("*.cpython-*.so"):
        name = ".".join(twin.relative_to(PACKAGE.parent).parts).partition(".cpython-")[0]
        assert name in expected, f"{twin} is left over from an earlier build: delete it"
