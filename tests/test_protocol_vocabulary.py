"""One parameter vocabulary on both sides of the protocol (docs/protocol.md "Job kinds").

The same examples go through the server's validation (``job_params.validate``,
``restores.validate``) and the agent's guard (``agent.jobparams.parse_params``):

* a value the server accepts reaches the agent as the server normalised it (a backup's
  paths and effective bandwidth caps, a full snapshot id): the agent accepts exactly that
  and reads the same values from it;
* a value the server refuses is refused by the agent too when it arrives on the wire in
  the place it would have had (a broken or hostile server cannot make the agent run it).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agent.jobparams import InvalidParams, parse_params
from app.extensions import db
from app.models import Snapshot
from app.models.types import utcnow
from app.services import job_params, restores
from app.services.errors import ValidationFailed
from tests.factories import make_host

SNAPSHOT_A = "a" * 64
SNAPSHOT_B = "b" * 64


@pytest.fixture
def host(app):
    host = make_host("vocabulary-1", limit_upload_kib=2048)
    for snapshot_id in (SNAPSHOT_A, SNAPSHOT_B):
        db.session.add(
            Snapshot(
                host_id=host.id,
                snapshot_id=snapshot_id,
                short_id=snapshot_id[:8],
                time=utcnow(),
                paths=["/etc"],
                tags=["default"],
            )
        )
    db.session.flush()
    return host


def _server(host, kind: str, params: dict) -> dict:
    if kind == "restore":
        return restores.validate(host, params)
    return job_params.validate(host, kind, params)[1]


def _set(params: dict, path: tuple, value: Any) -> dict:
    changed = copy.deepcopy(params)
    place = changed
    for key in path[:-1]:
        place = place[key]
    place[path[-1]] = value
    return changed


# What the server is asked (a request), and the same request with each value in turn.
REQUESTS = {
    "backup": {"group": "default"},
    "forget": {"policy": {"keep_daily": 7}, "tags": ["default"], "group_by": "host,paths"},
    "forget_groups": {"groups": [{"tag": "default", "policy": {"keep_last": 3}}]},
    "check": {"read_data_subset": "10%"},
    "unlock": {"remove_all": False},
    "diff": {"snapshot_a": SNAPSHOT_A, "snapshot_b": SNAPSHOT_B},
    "restore": {"snapshot_id": SNAPSHOT_A, "include": ["/etc/hosts"], "target": "/srv/back"},
}


def _kind(name: str) -> str:
    return name.split("_", 1)[0]


# (request name, where the value goes, value, server accepts?)
EXAMPLES = [
    # keep-* counts and keep_within (the retention vocabulary)
    *[("forget", ("policy", "keep_daily"), value, True) for value in (1, 30, 100_000)],
    *[("forget", ("policy", "keep_daily"), value, False) for value in (-1, 100_001, True, 2.5)],
    *[("forget", ("policy", "keep_within"), value, True) for value in ("30d", "1y6m", "12h")],
    *[("forget", ("policy", "keep_within"), value, True) for value in ("1y2m3d4h", " 7d ")],
    *[
        ("forget", ("policy", "keep_within"), value, False)
        for value in ("6m1y", "1w", "d", "30", "30 d", "-1d", "9" * 40 + "d", 30, "30d\x00")
    ],
    *[("forget_groups", ("groups", 0, "policy", "keep_within"), v, True) for v in ("2m",)],
    # keep_within's numbers are bounded (restic's hours wrap a Go Duration past 2.5M)
    *[
        ("forget", ("policy", "keep_within"), value, True)
        for value in ("100000h", "9999y", "100000y100000m100000d100000h", "0d")
    ],
    *[
        ("forget", ("policy", "keep_within"), value, False)
        for value in ("100001d", "1y100001h", "999999999999y", "\u0663d", "1\ud800d")
    ],
    *[("forget_groups", ("groups", 0, "policy", "keep_last"), v, False) for v in (0.5, -3)],
    ("forget_groups", ("groups", 0, "tag"), "a,b", False),
    ("forget", ("policy",), {}, False),  # nothing would be kept
    ("forget", ("group_by",), "host,tags", True),
    ("forget", ("group_by",), "host,colour", False),
    ("forget", ("dry_run",), True, True),
    ("forget", ("dry_run",), "yes", False),
    ("forget", ("tags",), ["web", "db-1"], True),
    ("forget", ("tags",), ["a,b"], False),
    # check --read-data-subset
    *[("check", ("read_data_subset",), v, True) for v in ("1/5", "5/5", "0.5%", "100%")],
    *[("check", ("read_data_subset",), v, True) for v in ("500M", "2g", "1T")],
    *[
        ("check", ("read_data_subset",), v, False)
        for v in ("0/5", "6/5", "0%", "101%", "0M", "abc", "5/0", 10)
    ],
    # unlock
    ("unlock", ("remove_all",), True, True),
    ("unlock", ("remove_all",), "true", False),
    # bandwidth caps (KiB/s); the server resolves them, the agent only guards them
    *[("backup", ("limit_upload_kib",), v, True) for v in (1, 512, 10_000_000, None, 0)],
    *[("backup", ("limit_download_kib",), v, True) for v in (64, None)],
    *[("backup", ("limit_upload_kib",), v, False) for v in (-5, 10_000_001, True, "fast")],
    # snapshots named by id
    ("diff", ("snapshot_b",), "zz", False),
    ("diff", ("snapshot_a",), SNAPSHOT_B, False),  # the same snapshot twice
    # restore: include paths and target
    ("restore", ("include",), ["/etc", "/srv/data"], True),
    ("restore", ("include",), ["etc/hosts"], False),
    *[("restore", ("target",), v, True) for v in ("/srv/restore", "$HOME/r", "~/r", "${HOME}")],
    *[
        ("restore", ("target",), v, False)
        for v in ("relative/dir", "/srv/../etc", "/", "$HOMEX/r", "/srv/\x00x", 5)
    ],
    ("restore", ("verify",), True, True),
    ("restore", ("verify",), "no", False),
]


def _id(example) -> str:
    name, path, value, accepted = example
    return f"{name}:{'.'.join(map(str, path))}={value!r:.30}:{'ok' if accepted else 'refused'}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[_id(example) for example in EXAMPLES])
def test_server_and_agent_agree(host, example):
    name, path, value, accepted = example
    kind = _kind(name)
    valid_wire = _server(host, kind, REQUESTS[name])
    if kind == "restore":
        valid_wire.setdefault("target", "$HOME/rm-restore/1")
    parse_params(kind, valid_wire)  # the base example is good on both sides

    request = _set(REQUESTS[name], path, value)
    if accepted:
        wire = _server(host, kind, request)
        if kind == "restore":
            wire.setdefault("target", "$HOME/rm-restore/1")
        parsed = parse_params(kind, wire)
        _assert_same_values(kind, wire, parsed)
        return
    with pytest.raises(ValidationFailed):
        _server(host, kind, request)
    with pytest.raises(InvalidParams):
        parse_params(kind, _set(valid_wire, path, value))


def _assert_same_values(kind: str, wire: dict, parsed) -> None:
    """The agent reads what the server meant."""
    if kind == "backup":
        assert parsed.paths == wire["paths"] and parsed.tags == wire["tags"]
        assert parsed.limit_upload_kib == (wire["limit_upload_kib"] or None)
        assert parsed.limit_download_kib == (wire["limit_download_kib"] or None)
    elif kind == "forget":
        policies = [wire["policy"]] if "policy" in wire else [g["policy"] for g in wire["groups"]]
        assert [run.policy for run in parsed] == policies
        assert all(run.dry_run == wire["dry_run"] for run in parsed)
    elif kind == "check":
        assert parsed.read_data_subset == wire["read_data_subset"]
    elif kind == "unlock":
        assert parsed.remove_all == wire["remove_all"]
    elif kind == "diff":
        assert (parsed.snapshot_a, parsed.snapshot_b) == (wire["snapshot_a"], wire["snapshot_b"])
    elif kind == "restore":
        assert parsed.target == wire["target"] and parsed.includes == wire["include"]


def test_the_backup_caps_are_resolved_by_the_server(host):
    """No override: the host's cap travels in the params; the agent never looks it up."""
    wire = _server(host, "backup", {"group": "default"})
    assert wire["limit_upload_kib"] == 2048 and wire["limit_download_kib"] is None
    assert parse_params("backup", wire).limit_upload_kib == 2048
