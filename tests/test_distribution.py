"""The single-file agent (zipapp) and the anonymous routes that serve it and install.sh."""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from agent.config import (
    CONFIG_TEMPLATE,
    DEFAULT_BACKUP_PATHS,
    DEFAULT_RESTORE_PATHS,
    load_config,
)
from app.config import PROJECT_ROOT
from app.distribution import build as agent_build
from app.distribution.routes import render_install_script

PYZ = agent_build.PYZ_NAME
AGENT_VERSION = re.search(
    r'__version__ = "([^"]+)"', (PROJECT_ROOT / "agent" / "__init__.py").read_text()
).group(1)
BUNDLED_TOP_LEVEL = {
    "agent",
    "requests",
    "urllib3",
    "idna",
    "certifi",
    "charset_normalizer",
    "croniter",
    "dateutil",
    "six.py",
}
# Must never be in the archive: the server, its frameworks, compiled cryptography.
FORBIDDEN_TOP_LEVEL = {"app", "flask", "werkzeug", "sqlalchemy", "gevent", "cryptography", "cffi"}
IMPORT_CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
import datetime, certifi, charset_normalizer, croniter, dateutil, idna, requests, six, urllib3
modules = (certifi, charset_normalizer, croniter, dateutil, idna, requests, six, urllib3)
outside = [m.__name__ for m in modules if not m.__file__.startswith(sys.argv[1])]
assert not outside, outside
nxt = croniter.croniter("*/15 * * * *", datetime.datetime(2026, 1, 1, 0, 5)).get_next(
    datetime.datetime
)
assert nxt == datetime.datetime(2026, 1, 1, 0, 15), nxt
assert open(certifi.where()).read().count("BEGIN CERTIFICATE") > 100
assert charset_normalizer.from_bytes("grüße aus köln".encode("utf-8")).best() is not None
requests.Session().close()
print("ok", requests.__version__)
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return agent_build.build_agent(tmp_path_factory.mktemp("dist"))


def _names(path: Path) -> list:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def _clean_env() -> dict:
    """No PYTHONPATH, no user site: the archive has to bring what it needs."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _interpreter(version: str) -> str | None:
    """An installed interpreter for python<version> (not a pyenv shim, which may refuse)."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [Path(f"/usr/bin/python{version}"), Path(f"/usr/local/bin/python{version}")]
    candidates += sorted(pyenv_root.glob(f"versions/{version}.*/bin/python{version}"))
    return next((str(path) for path in candidates if os.access(path, os.X_OK)), None)


def _declared_minimum_python() -> tuple:
    return max(agent_build._minimum_python(d) for d in agent_build.bundled_distributions())


def test_bundled_dependencies_still_support_python_39():
    """pyproject caps requests/urllib3 for this; a newer pin would strand old hosts."""
    assert _declared_minimum_python() <= (3, 9)


def test_archive_holds_the_agent_and_its_pure_python_dependencies(built):
    names = _names(built.path)
    top_level = {name.split("/")[0] for name in names}
    assert top_level >= BUNDLED_TOP_LEVEL
    assert not top_level & FORBIDDEN_TOP_LEVEL
    assert "__main__.py" in names
    assert "agent/cli.py" in names
    assert "certifi/cacert.pem" in names
    assert not [n for n in names if n.endswith((".so", ".pyd", ".pyc", ".dylib"))]
    assert not [n for n in names if "__pycache__" in n or "/tests/" in n]
    assert built.path.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert built.version == AGENT_VERSION
    assert built.size == built.path.stat().st_size
    assert built.sha256 == hashlib.sha256(built.path.read_bytes()).hexdigest()


def test_bundle_follows_the_requirements_and_leaves_cryptography_to_the_host(built):
    bundled = set(built.dependencies)
    assert {"requests", "urllib3", "idna", "certifi", "croniter", "six"} <= bundled
    assert {"charset-normalizer", "python-dateutil"} <= {
        name.lower().replace("_", "-") for name in bundled
    }
    for requirement in metadata.requires("croniter") or ():
        if "extra" not in requirement:
            name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
            assert metadata.distribution(name).metadata["Name"] in bundled
    assert "cryptography" not in {name.lower() for name in bundled}


def test_build_is_deterministic(built, tmp_path):
    again = agent_build.build_agent(tmp_path / "other")
    assert again.sha256 == built.sha256
    assert again.path.read_bytes() == built.path.read_bytes()
    with zipfile.ZipFile(again.path) as archive:
        infos = archive.infolist()
    assert [info.filename for info in infos] == sorted(info.filename for info in infos)
    assert {info.date_time for info in infos} == {agent_build.ZIP_TIMESTAMP}


def test_build_is_cached_by_source_hash_and_rebuilt_when_the_agent_changes(tmp_path, monkeypatch):
    root = tmp_path / "checkout"
    shutil.copytree(
        PROJECT_ROOT / "agent", root / "agent", ignore=shutil.ignore_patterns("__pycache__")
    )
    monkeypatch.setattr(agent_build, "PROJECT_ROOT", root)
    dist = tmp_path / "dist"
    first = agent_build.build_agent(dist)
    writes = []
    monkeypatch.setattr(agent_build, "write_archive", lambda b: writes.append(b) or b"")
    assert agent_build.build_agent(dist) == first  # found in the cache, not built again
    assert writes == []
    monkeypatch.undo()
    monkeypatch.setattr(agent_build, "PROJECT_ROOT", root)

    (root / "agent" / "cli.py").write_text(
        (root / "agent" / "cli.py").read_text() + "\n# changed\n"
    )
    changed = agent_build.build_agent(dist)
    assert changed.path != first.path
    assert changed.sha256 != first.sha256
    assert first.path.exists()  # another server process may still serve it for a while


def test_current_build_is_made_once_per_process(tmp_path, monkeypatch):
    calls = []
    real = agent_build.build_agent
    monkeypatch.setattr(agent_build, "build_agent", lambda d: calls.append(d) or real(d))
    first = agent_build.current_build(tmp_path)
    assert agent_build.current_build(tmp_path) is first
    assert calls == [tmp_path / "dist"]
    assert first.path.parent == tmp_path / "dist"


def test_pyz_runs_outside_the_checkout(built, tmp_path):
    result = subprocess.run(
        [sys.executable, "-I", str(built.path), "--version"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"restic-manager-agent {AGENT_VERSION}"

    # With site-packages present (-I keeps them), the archive still wins over the server's
    # environment and over an editable install of this checkout.
    check = (
        "import sys; sys.path.insert(0, sys.argv[1]); import agent, croniter, requests; "
        "outside = [m.__file__ for m in (agent, croniter, requests) "
        "if not m.__file__.startswith(sys.argv[1])]; assert not outside, outside"
    )
    where = subprocess.run(
        [sys.executable, "-I", "-c", check, str(built.path)],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr


def test_pyz_dependencies_import_without_site_packages(built, tmp_path):
    """-S: nothing from the server's environment; everything must come out of the archive."""
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", IMPORT_CHECK, str(built.path)],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok ")


@pytest.mark.parametrize(
    "version",
    [
        "3.9",
        "3.10",
        "3.11",
        "3.12",
        "3.13",
    ],
)
def test_pyz_dependencies_import_on_every_supported_python(built, tmp_path, version):
    interpreter = _interpreter(version)
    if interpreter is None:
        pytest.skip(f"python{version} is not installed here")
    result = subprocess.run(
        [interpreter, "-I", "-S", "-c", IMPORT_CHECK, str(built.path)],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_pyz_refuses_a_too_old_python_with_a_clear_message(built, tmp_path):
    interpreter = _interpreter("3.8")
    if interpreter is None:
        pytest.skip("python3.8 is not installed here")
    result = subprocess.run(
        [interpreter, "-I", str(built.path), "--version"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"needs Python {built.requires_python} or newer; this is Python 3.8" in result.stderr


def test_agent_downloads_are_anonymous_and_agree(app, client):
    current = agent_build.current_build(app.config["RM_DATA_DIR"])

    with client.get(f"/agent/{PYZ}") as archive:
        data = archive.data
    assert archive.status_code == 200
    assert archive.mimetype == "application/octet-stream"
    assert archive.headers["Content-Disposition"] == f"attachment; filename={PYZ}"
    assert archive.headers["ETag"] == f'"{current.sha256}"'
    assert hashlib.sha256(data).hexdigest() == current.sha256
    assert "Set-Cookie" not in archive.headers

    with client.get(f"/agent/{PYZ}", headers={"If-None-Match": f'"{current.sha256}"'}) as unchanged:
        assert unchanged.status_code == 304

    checksum = client.get(f"/agent/{PYZ}.sha256")
    assert checksum.status_code == 200
    assert checksum.mimetype == "text/plain"
    assert checksum.get_data(as_text=True) == f"{current.sha256}  {PYZ}\n"

    version = client.get("/agent/version")
    assert version.status_code == 200
    body = version.get_json()
    assert body["version"] == AGENT_VERSION
    assert body["sha256"] == current.sha256
    assert body["size"] == len(data)
    assert body["requires_python"] == current.requires_python


def test_checksum_file_verifies_with_sha256sum(app, client, tmp_path):
    if shutil.which("sha256sum") is None:
        pytest.skip("sha256sum is not installed")
    with client.get(f"/agent/{PYZ}") as archive:
        (tmp_path / PYZ).write_bytes(archive.data)
    (tmp_path / f"{PYZ}.sha256").write_bytes(client.get(f"/agent/{PYZ}.sha256").data)
    result = subprocess.run(
        ["sha256sum", "-c", f"{PYZ}.sha256"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_script_is_served_with_the_server_url(app, client):
    response = client.get("/install/install.sh")
    assert response.status_code == 200
    assert response.mimetype == "text/x-shellscript"
    assert "no-store" in response.headers["Cache-Control"]
    script = response.get_data(as_text=True)
    assert "DEFAULT_SERVER='http://localhost'" in script
    requires = agent_build.current_build(app.config["RM_DATA_DIR"]).requires_python
    assert f"MINIMUM_PYTHON='{requires}'" in script
    assert script.startswith("#!/bin/sh\n")


def test_install_script_uses_the_configured_base_url(app_factory):
    app = app_factory(RM_BASE_URL="https://backup.example.com:8443/rm")
    script = app.test_client().get("/install/install.sh").get_data(as_text=True)
    assert "DEFAULT_SERVER='https://backup.example.com:8443/rm'" in script


@pytest.mark.parametrize(
    "url", ["http://x'; rm -rf /; '", "https://host/$(id)", "ftp://host", "https://a b"]
)
def test_install_script_never_pastes_an_unsafe_url(app, url):
    script = render_install_script(url, "3.9")
    assert "DEFAULT_SERVER=''" in script
    assert url not in script


def test_agent_conf_example_has_exactly_the_settings_enroll_writes(tmp_path):
    """install/agent.conf.example documents agent.conf: same sections and keys, and loadable."""

    def keys(text: str) -> dict:
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(text)
        return {section: set(parser[section]) for section in parser.sections()}

    example = PROJECT_ROOT / "install" / "agent.conf.example"
    written = CONFIG_TEMPLATE.format(
        url="https://backup.example.com",
        ca_file="",
        pin="",
        backup_paths=DEFAULT_BACKUP_PATHS,
        restore_paths=DEFAULT_RESTORE_PATHS,
    )
    assert keys(example.read_text()) == keys(written)
    assert load_config(example).server_url == "https://backup.example.com"


def test_a_failed_build_answers_503_with_the_reason(app, client, monkeypatch):
    def broken():
        raise agent_build.BuildError("the agent needs croniter, which is not installed")

    monkeypatch.setattr(agent_build, "collect_bundle", broken)
    for path in (f"/agent/{PYZ}", "/agent/version", "/install/install.sh"):
        response = client.get(path)
        assert response.status_code == 503, path
        assert "needs croniter" in response.get_data(as_text=True)
