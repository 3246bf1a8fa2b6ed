"""Browsing and downloading need the operator role, are audited with the path, and an
agent's refusal reaches the caller as a 4xx in the agent's words (issue 13)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.extensions import db
from app.models import RpcCall, Snapshot
from app.models.types import utcnow
from app.models.user import Role
from app.services import rpc
from app.services.errors import ValidationFailed
from tests.factories import bearer_headers, make_enrolled_host

SNAP = "c" * 8 + "3" * 56


@pytest.fixture
def host(app):
    host, _ = make_enrolled_host()
    db.session.add(
        Snapshot(
            host_id=host.id,
            snapshot_id=SNAP,
            short_id=SNAP[:8],
            time=utcnow() - timedelta(hours=1),
            paths=["/srv/data"],
            tags=["default"],
        )
    )
    db.session.commit()
    return host


@pytest.mark.parametrize("what", ["tree?path=/srv", "download?path=/srv/a.txt"])
def test_a_viewer_can_neither_browse_nor_download(client, make_user, host, what):
    headers = bearer_headers(make_user(Role.viewer))
    answer = client.get(f"/api/v1/hosts/{host.id}/snapshots/{SNAP[:8]}/{what}", headers=headers)
    assert answer.status_code == 403


def test_paths_with_a_newline_are_accepted_nul_is_not(app, host):
    question = rpc.download_question(host, SNAP[:8], "/srv/data/a\nb.txt", max_bytes=10)
    assert question.path == "/srv/data/a\nb.txt"
    assert question.params["path"] == "/srv/data/a\nb.txt"
    with pytest.raises(ValidationFailed):
        rpc.snapshot_path("/srv/a\x00b")


def test_an_agent_refusal_is_a_403_in_its_words(app, host):
    call = RpcCall(
        id="f" * 32,
        host_id=host.id,
        method="dump",
        status="failed",
        error_code="refused",
        error_message="download refused by this host: /etc/shadow is a secret store",
    )
    with pytest.raises(rpc.AgentRefused) as refused:
        rpc.answer_of(call, hostname=host.hostname)
    assert refused.value.status == 403
    assert refused.value.message == "download refused by this host: /etc/shadow is a secret store"
