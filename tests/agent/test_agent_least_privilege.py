"""The host owner's vetoes on what the server may read and write (issue 13): backup_paths
and its deny-list of secret stores, the restore_paths default, rpc.dump refusals, and file
names with a newline, against the real restic."""

import json
from types import SimpleNamespace

import pytest

from agent.actions.backup import allowed_excludes
from agent.backup_policy import BackupPolicy, BackupRefused
from agent.config import DEFAULT_RESTORE_PATHS, ConfigError, load_config, write_config
from agent.jobcontext import JobFailed
from agent.jobparams import BackupParams
from agent.restore_policy import RestorePolicy, RestoreRefused
from agent.rpc import RpcFailed, RpcRunner
from tests.agent.real_restic import RunnerJobs, needs_restic, run_restic

PASSWORD = "least-Privilege-pass-4e1"
SID = "39cddcb58e6e2e74cf4b0c439cc17c0e27c6d88972355872f04b25b17f777062"


# -- backup_paths --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/etc/shadow",
        "/etc/gshadow-",
        "/etc/ssh/ssh_host_ed25519_key",
        "/root/.ssh",
        "/root/.ssh/id_rsa",
        "/var/lib/restic-manager-agent/state.json",
    ],
)
def test_the_default_keeps_secret_stores_out(path):
    with pytest.raises(BackupRefused) as refused:
        BackupPolicy("/").check([path])
    assert str(refused.value).startswith(f"backup refused by this host: {path} is a secret store")
    assert "backup_paths in agent.conf" in str(refused.value)
    BackupPolicy("*").check([path])  # the owner's "everything"
    BackupPolicy("/, " + path).check([path])  # named by the owner


def test_the_default_allows_the_rest_and_excludes_stores_below():
    policy = BackupPolicy("/")
    policy.check(["/etc/passwd", "/etc/ssh/sshd_config", "/etc/ssh/ssh_host_rsa_key.pub", "/srv"])
    assert [pattern for _, pattern in policy.excludes("/etc")] == [
        "/etc/shadow",
        "/etc/shadow-",
        "/etc/gshadow",
        "/etc/gshadow-",
        "/etc/ssh/*_key",
    ]
    assert [pattern for _, pattern in policy.excludes("/root")] == ["/root/.ssh"]
    assert policy.excludes("/srv") == []
    assert BackupPolicy("*").excludes("/") == []
    assert "/root/.ssh" not in [p for _, p in BackupPolicy("/, /root/.ssh").excludes("/root")]


def test_listed_roots_and_empty():
    policy = BackupPolicy(" /srv , /home,")
    policy.check(["/srv/data", "/home/alice"])
    with pytest.raises(BackupRefused) as refused:
        policy.check(["/srv/data", "/etc/passwd"])
    assert str(refused.value) == (
        "backup refused by this host: /etc/passwd is outside backup_paths (/srv, /home) "
        "in agent.conf"
    )
    with pytest.raises(BackupRefused, match="backups are disabled"):
        BackupPolicy("").check(["/srv"])
    with pytest.raises(ConfigError, match=r"backup_paths in agent\.conf"):
        BackupPolicy("srv")


def test_a_symlinked_parent_cannot_reach_a_secret_store(tmp_path):
    (tmp_path / "etc-link").symlink_to("/etc")
    with pytest.raises(BackupRefused, match="/etc/shadow is a secret store"):
        BackupPolicy("/").check([f"{tmp_path}/etc-link/shadow"])


def test_the_agent_home_is_a_secret_store(tmp_path, monkeypatch):
    home = tmp_path / "agent home"
    monkeypatch.setenv("RM_AGENT_HOME", str(home))
    policy = BackupPolicy("/")
    with pytest.raises(BackupRefused):
        policy.check([f"{home}/state.json"])
    assert (str(home), str(home)) in policy.excludes(str(tmp_path))


def test_a_refused_backup_fails_before_anything_runs(tmp_path):
    setup = SimpleNamespace(backup_paths="/srv", agent_home=None)
    logged = []
    job = SimpleNamespace(setup=setup, log=logged.append)
    params = BackupParams(paths=["/srv/a", "/etc"])
    with pytest.raises(JobFailed, match="/etc is outside backup_paths"):
        allowed_excludes(job, params)
    setup.backup_paths = "/"
    assert "/etc/shadow" in allowed_excludes(job, params)
    assert logged == [
        "not backing up the secret stores /etc/shadow, /etc/shadow-, /etc/gshadow, "
        "/etc/gshadow-, /etc/ssh/*_key (kept out by backup_paths in agent.conf)"
    ]


# -- restore_paths -------------------------------------------------------------------------


def test_the_restore_default_is_never_anywhere(tmp_path):
    environ = {"HOME": str(tmp_path)}
    policy = RestorePolicy(DEFAULT_RESTORE_PATHS, environ, backup=BackupPolicy("/"))
    policy.check([f"{tmp_path}/rm-restore/12"])
    policy.check(["/srv/data", "/home/alice/notes.txt"], in_place=True)
    for target in ("/etc", "/srv/x", "/"):
        with pytest.raises(RestoreRefused, match="is outside restore_paths"):
            policy.check([target])  # a new directory: only below $HOME/rm-restore
    for path, why in (
        ("/etc/nginx/nginx.conf", "system directory /etc"),
        ("/", "system directory /etc"),
        ("/var", "system directory /var/spool/cron"),
        ("/root/.bashrc", "system directory /root"),
    ):
        with pytest.raises(RestoreRefused) as refused:
            policy.check([path], in_place=True)
        assert f"an in-place restore may not write {path}" in str(refused.value)
        assert why in str(refused.value)
    narrow = RestorePolicy(DEFAULT_RESTORE_PATHS, environ, backup=BackupPolicy("/srv"))
    with pytest.raises(RestoreRefused, match="outside backup_paths"):
        narrow.check(["/home/alice"], in_place=True)
    RestorePolicy("/etc").check(["/etc/passwd"], in_place=True)  # listed by the owner


def test_agent_conf_defaults(tmp_path):
    path = tmp_path / "agent.conf"
    write_config(path, "https://backup.example.com", None, None)
    config = load_config(path)
    assert config.backup_paths == "/"
    assert config.restore_paths == "$HOME/rm-restore, backup_paths"
    path.write_text("[server]\nurl = https://backup.example.com\n")  # an older agent.conf
    assert load_config(path).restore_paths == DEFAULT_RESTORE_PATHS


# -- against the real restic ---------------------------------------------------------------


def real_restic(test):
    for mark in needs_restic():
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("least-privilege")
    repo = root / "repo"
    run_restic(repo, PASSWORD, "init")
    return SimpleNamespace(
        root=root,
        path=repo,
        credentials={"url": str(repo), "username": "", "password": PASSWORD},
    )


def snapshot_paths(repo, snapshot_id):
    lines = run_restic(repo.path, PASSWORD, "ls", "--json", snapshot_id).decode().splitlines()
    return [json.loads(line).get("path") for line in lines[1:]]


@real_restic
def test_a_backup_leaves_the_agent_home_out(repo, tmp_path, monkeypatch):
    data = tmp_path / "data"
    home = data / "agent-home"
    home.mkdir(parents=True)
    (home / "state.json").write_text('{"agent_token": "rma_secret"}')
    (data / "keep.txt").write_text("kept")
    monkeypatch.setenv("RM_AGENT_HOME", str(home))
    jobs = RunnerJobs(tmp_path / "jobs", lambda: repo.credentials, grace_seconds=5.0)
    ran = jobs.run("backup", {"paths": [str(data)], "tag": "t"})
    assert ran.finished["status"] == "succeeded", ran.texts
    assert any("not backing up the secret stores" in text for text in ran.texts)
    paths = snapshot_paths(repo, ran.finished["stats"]["snapshot_id"])
    assert f"{data}/keep.txt" in paths
    assert not [path for path in paths if path.startswith(str(home))]

    refused = jobs.run("backup", {"paths": ["/etc/shadow"], "tag": "t"})
    assert refused.finished["status"] == "failed"
    assert refused.finished["error"].startswith(
        "backup refused by this host: /etc/shadow is a secret store"
    )
    assert refused.restic_calls == []


def rpc_runner(repo, tmp_path, **options):
    return RpcRunner(
        lambda: None, lambda: repo.credentials, cache_dir=tmp_path / "cache", **options
    )


@real_restic
def test_rpc_dump_refuses_secret_stores(repo, tmp_path):
    runner = rpc_runner(repo, tmp_path)
    payload = {"snapshot_id": SID, "path": "/etc/shadow", "max_bytes": 100}
    with pytest.raises(RpcFailed) as failure:
        runner.look_up_file(payload)
    assert failure.value.code == "refused"
    assert failure.value.message.startswith(
        "download refused by this host: /etc/shadow is a secret store"
    )
    narrow = rpc_runner(repo, tmp_path, backup_paths="/srv")
    with pytest.raises(RpcFailed, match="/home/a is outside backup_paths"):
        narrow.look_up_file(dict(payload, path="/home/a"))


@real_restic
def test_a_file_name_with_a_newline_downloads_and_restores(repo, tmp_path, monkeypatch):
    data = tmp_path / "nl"
    data.mkdir()
    (data / "a\nb.txt").write_bytes(b"new\nline\n")
    (data / "ab.txt").write_bytes(b"other")
    run_restic(repo.path, PASSWORD, "backup", "--quiet", str(data))
    listed = run_restic(repo.path, PASSWORD, "snapshots", "--json", "--path", str(data))
    snapshots = json.loads(listed)
    snapshot_id = snapshots[-1]["id"]
    name = f"{data}/a\nb.txt"

    runner = rpc_runner(repo, tmp_path)
    header, _, _ = runner.look_up_file(
        {"snapshot_id": snapshot_id, "path": name, "max_bytes": 1000}
    )
    assert header["name"] == "a\nb.txt" and header["size"] == 9

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    jobs = RunnerJobs(tmp_path / "jobs", lambda: repo.credentials, grace_seconds=5.0)
    ran = jobs.run(
        "restore",
        {"snapshot_id": snapshot_id, "include": [name], "target": "$HOME/rm-restore/1"},
    )
    assert ran.finished["status"] == "succeeded", ran.texts
    restored = home / "rm-restore" / "1" / name.lstrip("/")
    assert restored.read_bytes() == b"new\nline\n"
    assert not (home / "rm-restore" / "1" / f"{data}/ab.txt".lstrip("/")).exists()
