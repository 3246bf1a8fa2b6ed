"""Atomic, private files: agent.conf, state.json, secrets.sealed, seen_commands.json."""

import json
import os
import stat
from datetime import datetime, timedelta, timezone

import pytest

from agent.config import (
    ConfigError,
    NotEnrolled,
    SecretStore,
    State,
    load_config,
    merge_settings,
    new_secrets_key,
    normalise_pin,
    write_config,
)
from agent.journal import SeenCommands, isoformat
from agent.paths import atomic_write_bytes, atomic_write_json, read_json, resolve_home


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_replaces_whole_file_with_mode_0600(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    os.chmod(target, 0o644)
    atomic_write_json(target, {"a": 1})
    assert read_json(target) == {"a": 1}
    assert mode_of(target) == 0o600
    assert [path.name for path in tmp_path.iterdir()] == ["state.json"]  # no temp file left


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "data"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [path.name for path in tmp_path.iterdir()] == ["data"]


def test_home_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("RM_AGENT_HOME", raising=False)
    assert str(resolve_home()) == "/var/lib/restic-manager-agent"
    monkeypatch.setenv("RM_AGENT_HOME", str(tmp_path / "env"))
    assert resolve_home() == tmp_path / "env"
    assert resolve_home(tmp_path / "flag") == tmp_path / "flag"


def test_config_round_trip_with_comments(tmp_path):
    path = tmp_path / "agent.conf"
    pin = "AB:" * 31 + "AB"
    write_config(path, "https://rm.example", "/etc/ssl/rm.pem", normalise_pin(pin))
    text = path.read_text()
    assert text.startswith("#") and "spool_max_mb = 256" in text
    assert "allow_hooks = true" in text and "restore_paths" in text
    assert mode_of(path) == 0o600
    config = load_config(path)
    assert config.server_url == "https://rm.example"
    assert config.ca_file == "/etc/ssl/rm.pem"
    assert config.pin_sha256 == "ab" * 32
    assert (config.spool_max_mb, config.allow_hooks) == (256, True)


def test_config_errors_say_what_to_do(tmp_path):
    with pytest.raises(NotEnrolled, match="enroll"):
        load_config(tmp_path / "missing.conf")
    bad = tmp_path / "bad.conf"
    bad.write_text("[server]\nurl = https://x\npin_sha256 = nothex\n")
    with pytest.raises(ConfigError, match="64 hex digits"):
        load_config(bad)


def test_state_is_private_and_keeps_newest_settings(tmp_path):
    state = State(tmp_path / "state.json", {"host_id": 3, "agent_token": "rma_x"})
    state.save()
    assert mode_of(tmp_path / "state.json") == 0o600
    loaded = State.load(tmp_path / "state.json")
    assert loaded.settings["poll_wait_seconds"] == 25
    assert loaded.update_settings({"poll_wait_seconds": 5, "log_flush_seconds": 10**9})
    again = State.load(tmp_path / "state.json")
    assert again.settings["poll_wait_seconds"] == 5
    assert again.settings["log_flush_seconds"] == 300  # clamped
    assert not again.update_settings({"poll_wait_seconds": 5})
    assert "rma_x" not in repr(again)


def test_merge_settings_ignores_garbage():
    merged = merge_settings({}, {"poll_wait_seconds": "soon", "max_log_batch_records": True})
    assert merged["poll_wait_seconds"] == 25 and merged["max_log_batch_records"] == 500


def test_sealed_secrets_round_trip_and_tamper(tmp_path):
    state = State(
        tmp_path / "state.json", {"agent_token": "rma_x", "secrets_key": new_secrets_key()}
    )
    store = SecretStore(tmp_path / "secrets.sealed", state.secrets_key())
    assert store.load() is None
    store.save({"url": "/srv/repo", "password": "hunter2-Secret"})
    assert mode_of(tmp_path / "secrets.sealed") == 0o600
    assert b"hunter2-Secret" not in (tmp_path / "secrets.sealed").read_bytes()
    assert store.load() == {"url": "/srv/repo", "password": "hunter2-Secret"}
    blob = bytearray((tmp_path / "secrets.sealed").read_bytes())
    blob[-1] ^= 1
    (tmp_path / "secrets.sealed").write_bytes(bytes(blob))
    with pytest.raises(ConfigError, match="integrity"):
        store.load()
    other = SecretStore(tmp_path / "secrets.sealed", os.urandom(32))
    store.save({"url": "x"})
    with pytest.raises(ConfigError):
        other.load()


def test_seen_commands_survive_restart_and_are_pruned(tmp_path):
    now = [datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)]
    path = tmp_path / "seen_commands.json"
    seen = SeenCommands(path, clock=lambda: now[0])
    seen.record("c-old")
    now[0] += timedelta(days=3)
    seen.record("c-new")
    assert mode_of(path) == 0o600

    reopened = SeenCommands(path, clock=lambda: now[0])  # a restart
    assert "c-old" in reopened and "c-new" in reopened and "c-other" not in reopened
    assert json.loads(path.read_text())["c-old"] == isoformat(now[0] - timedelta(days=3))

    now[0] += timedelta(days=4, seconds=1)  # c-old is now older than 7 days
    assert reopened.prune() == 1
    assert "c-old" not in SeenCommands(path, clock=lambda: now[0])
    assert "c-new" in SeenCommands(path, clock=lambda: now[0])
