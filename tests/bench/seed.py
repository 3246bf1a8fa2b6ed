"""Seed a fresh data directory for the long-poll benchmark (not a test; see longpoll.py).

    python tests/bench/seed.py --agents 3000 --data-dir /tmp/rm-bench --out /tmp/tokens.json \
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/rm_bench_3000]

Creates, straight through the models in an app context (no HTTP, so 3,000 hosts take a
second): the migrated database (SQLite in the data dir, or the given empty PostgreSQL
database), N enrolled hosts each with an agent token, an
administrator and a personal access token. Writes ``{"pat": ..., "hosts": [{"id", "hostname",
"token"}, ...]}`` to ``--out`` for the load generator and the driver.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "benchmark admin passphrase"


def seed(data_dir: Path, agents: int, database_url: str | None = None) -> dict:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from flask_migrate import upgrade

    from app import create_app
    from app.extensions import db
    from app.models import AgentToken, Host, Role
    from app.models.types import utcnow
    from app.security import hash_token, new_token
    from app.services import api_tokens, users

    data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(
        {
            "RM_DATA_DIR": data_dir,
            "RM_SECRET_KEY_FILE": data_dir / "secret.key",
            "SQLALCHEMY_DATABASE_URI": database_url
            or f"sqlite:///{data_dir / 'restic-manager.db'}",
        }
    )
    with app.app_context():
        upgrade()
        now = utcnow()
        admin = users.create_user("bench-admin", ADMIN_PASSWORD, Role.admin)
        _, pat = api_tokens.create_token(admin, "longpoll benchmark", now=now)
        plain_tokens = [new_token("rma") for _ in range(agents)]
        hosts = [
            Host(
                hostname=f"bench-{index:05d}",
                os="linux",
                arch="x86_64",
                agent_version="bench",
                restic_version="0.16.4",
                protocol_version=1,
                # "ready": a fleet that has run a while. With "unknown" every hello queues a
                # bring-up probe that the simulated agent accepts and never finishes, and the
                # benchmark's own probe for that host then answers with that old job (its
                # command was read at hello: the negative latencies of an earlier version).
                repo_status="ready",
                tags=[],
                created_at=now,
                enrolled_at=now,
            )
            for index in range(agents)
        ]
        db.session.add_all(hosts)
        db.session.flush()
        db.session.add_all(
            AgentToken(host_id=host.id, token_hash=hash_token(plain), created_at=now)
            for host, plain in zip(hosts, plain_tokens)
        )
        db.session.commit()
        result = {
            "pat": pat,
            "hosts": [
                {"id": host.id, "hostname": host.hostname, "token": plain}
                for host, plain in zip(hosts, plain_tokens)
            ],
        }
        db.session.remove()
        db.engine.dispose()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True, help="must not exist yet")
    parser.add_argument("--out", type=Path, required=True, help="tokens JSON file to write")
    parser.add_argument(
        "--database-url", help="an empty PostgreSQL database instead of SQLite in the data dir"
    )
    args = parser.parse_args()
    if args.data_dir.exists() and any(args.data_dir.iterdir()):
        parser.error(f"{args.data_dir} is not empty: the benchmark needs a fresh data dir")
    started = time.monotonic()
    result = seed(args.data_dir, args.agents, args.database_url)
    args.out.write_text(json.dumps(result))
    args.out.chmod(0o600)
    print(
        f"seeded {args.agents} hosts in {args.data_dir} ({time.monotonic() - started:.1f} s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
