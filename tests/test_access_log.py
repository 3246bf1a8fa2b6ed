"""`serve` and its gunicorn: the access log leaves out idle long polls (app/gunicorn_conf.py),
and the open-files limit is lifted for parked polls (app/cli.py)."""

from __future__ import annotations

import importlib.util
import logging
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from app.cli import GUNICORN_HOOKS


def _conf(monkeypatch, log_idle: str = ""):
    monkeypatch.setenv("RM_ACCESS_LOG_IDLE_POLLS", log_idle)
    spec = importlib.util.spec_from_file_location("rm_gunicorn_conf_test", GUNICORN_HOOKS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _logged(module, status: str, path: str, caplog) -> list[str]:
    config = Config()
    config.set("accesslog", "-")
    logger = module.AccessLogger(config)
    logger.access_log.addHandler(caplog.handler)
    caplog.clear()
    environ = {
        "PATH_INFO": path,
        "RAW_URI": path,
        "REQUEST_METHOD": "POST",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "QUERY_STRING": "",
    }
    request = SimpleNamespace(headers=[], method="POST", path=path, query="", version=(1, 1))
    response = SimpleNamespace(status=status, headers=[], sent=0, response_length=0)
    logger.access(response, request, environ, SimpleNamespace(seconds=0, microseconds=1000))
    return [record.getMessage() for record in caplog.records]


@pytest.mark.parametrize(
    ("status", "path", "logged"),
    [
        ("204 NO CONTENT", "/api/agent/v1/poll", False),  # idle: the hold ran out
        ("200 OK", "/api/agent/v1/poll", True),  # delivered commands
        ("401 UNAUTHORIZED", "/api/agent/v1/poll", True),
        ("204 NO CONTENT", "/api/v1/hosts/1", True),  # not a poll
        ("200 OK", "/api/agent/v1/events", True),
    ],
)
def test_idle_polls_are_left_out_of_the_access_log(monkeypatch, caplog, status, path, logged):
    caplog.set_level(logging.INFO)
    assert bool(_logged(_conf(monkeypatch), status, path, caplog)) is logged


def test_idle_polls_can_be_logged_again(monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    module = _conf(monkeypatch, "1")
    assert _logged(module, "204 NO CONTENT", "/api/agent/v1/poll", caplog)


def test_serve_lifts_the_open_files_limit_for_parked_polls():
    import resource

    from app.cli import raise_open_files_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        lowered = min(1024, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
        expected = min(hard, 4096) if hard != resource.RLIM_INFINITY else 4096
        assert raise_open_files_limit(wanted=4096) == expected
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (expected, hard)
        assert raise_open_files_limit(wanted=100) == expected  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
