"""N simulated agents in one gevent process, for the long-poll benchmark (see longpoll.py).

    python tests/bench/loadgen.py --base http://127.0.0.1:8080 --tokens tokens.json --ramp 25

Each agent: one keep-alive HTTP/1.1 connection (http.client over gevent sockets), ``hello``,
then ``poll`` in a loop with ``wait`` omitted (the server's 25 s hold applies), acking the
commands of one poll in the next, as the real agent does. Agents start spread uniformly
over ``--ramp`` seconds, so their poll cycles are out of phase like a fleet that has been
running for a while.

Writes JSON lines to stdout:
  {"ev": "cmd", "host_id", "job_id", "command_id", "type", "delivery_count", "t"}
      for every command received (``t`` = time.monotonic() when the response was read;
      CLOCK_MONOTONIC is system-wide on Linux, so the driver can compare it with its own)
  {"ev": "status", ...counters...} every 0.2 s and once more on SIGTERM/SIGINT ("final").
  {"ev": "error", "host_id", "what"} for each failed request (the agent backs off 1 s).
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402

API = "/api/agent/v1"
COUNTERS = (
    "started",  # agents whose greenlet began (after the ramp delay)
    "hello_ok",
    "first_poll",  # agents that have sent their first poll
    "in_flight",  # polls sent and not answered yet (parked, or queued at the server)
    "polls_sent",
    "polls_204",  # hold expired with nothing to do
    "polls_cmd",  # 200 with at least one command
    "polls_other",  # 200 without commands (reconcile only)
    "commands",
    "errors",
    "reconnects",
)


class Fleet:
    def __init__(self, host: str, port: int, agents: list[dict]):
        self.host = host
        self.port = port
        self.agents = agents
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.stopping = False

    def emit(self, record: dict) -> None:
        sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def status(self, final: bool = False) -> None:
        self.emit({"ev": "status", "final": final, "t": time.monotonic(), **self.counts})

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=90)

    def _post(self, agent: dict, path: str, body: dict):
        """(status, parsed body or None); reconnects once on a dropped keep-alive."""
        payload = json.dumps(body).encode()
        headers = {
            "Authorization": f"Bearer {agent['token']}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "restic-manager-bench",
        }
        for attempt in (1, 2):
            conn = agent.get("conn") or self._connect()
            agent["conn"] = conn
            try:
                conn.request("POST", API + path, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                agent["conn"] = None
                self.counts["reconnects"] += 1
                if attempt == 2:
                    raise
                continue
            except BaseException:
                conn.close()
                agent["conn"] = None
                raise
            if response.will_close:
                conn.close()
                agent["conn"] = None
            if response.status == 200:
                try:
                    return 200, json.loads(raw)
                except ValueError:
                    return f"200 with a body that is not JSON: {raw[:100]!r}", None
            return response.status, None
        raise AssertionError("unreachable")

    def run_agent(self, agent: dict, delay: float) -> None:
        gevent.sleep(delay)
        counts = self.counts
        counts["started"] += 1
        boot_id = uuid.uuid4().hex
        facts = {
            "protocol_version": 1,
            "agent_version": "bench",
            "restic_version": "0.16.4",
            "hostname": agent["hostname"],
            "os": "linux",
            "arch": "x86_64",
            "boot_id": boot_id,
            "running": [],
        }
        while not self.stopping:
            try:
                status, _ = self._post(agent, "/hello", facts)
            except (OSError, http.client.HTTPException) as error:
                status = f"{type(error).__name__}: {error}"
            if status == 200:
                counts["hello_ok"] += 1
                break
            counts["errors"] += 1
            self.emit({"ev": "error", "host_id": agent["id"], "what": f"hello: {status}"})
            gevent.sleep(1 + random.random())
        acks: list[dict] = []
        first = True
        while not self.stopping:
            body = {"boot_id": boot_id, "acks": acks, "running": []}
            counts["in_flight"] += 1
            counts["polls_sent"] += 1
            if first:
                counts["first_poll"] += 1
                first = False
            try:
                status, data = self._post(agent, "/poll", body)
            except (OSError, http.client.HTTPException) as error:
                status, data = f"{type(error).__name__}: {error}", None
            finally:
                counts["in_flight"] -= 1
            received = time.monotonic()
            if status == 204:
                counts["polls_204"] += 1
                acks = []
            elif status == 200:
                commands = data.get("commands") or []
                counts["polls_cmd" if commands else "polls_other"] += 1
                counts["commands"] += len(commands)
                for command in commands:
                    self.emit(
                        {
                            "ev": "cmd",
                            "host_id": agent["id"],
                            "job_id": command.get("job_id"),
                            "command_id": command["command_id"],
                            "type": command["type"],
                            "delivery_count": command["delivery_count"],
                            "t": received,
                        }
                    )
                # Written down at once here; acked in the next poll like the real agent.
                acks = [{"command_id": c["command_id"], "result": "accepted"} for c in commands]
            else:
                counts["errors"] += 1
                self.emit({"ev": "error", "host_id": agent["id"], "what": f"poll: {status}"})
                gevent.sleep(1 + random.random())

    def report_forever(self, every: float) -> None:
        while True:
            self.status()
            gevent.sleep(every)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="server URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--tokens", required=True, help="JSON written by seed.py")
    parser.add_argument("--ramp", type=float, default=25.0, help="spread agent starts (s)")
    args = parser.parse_args()
    url = urlsplit(args.base)
    hosts = json.loads(Path(args.tokens).read_text())["hosts"]
    fleet = Fleet(url.hostname, url.port or 80, [dict(host) for host in hosts])

    def stop() -> None:
        fleet.stopping = True
        fleet.status(final=True)
        os._exit(0)  # parked polls are abandoned; the server sees the connections close

    gevent.signal_handler(signal.SIGTERM, stop)
    gevent.signal_handler(signal.SIGINT, stop)
    # The instrument must not add pauses of its own: with 3,000 greenlets a full collection
    # here takes tens of ms and would land on the measured receive times. A run lasts about
    # a minute and makes little cyclic garbage, so automatic collection is simply off.
    gc.disable()
    count = len(fleet.agents)
    greenlets = [
        gevent.spawn(fleet.run_agent, agent, args.ramp * index / count)
        for index, agent in enumerate(fleet.agents)
    ]
    greenlets.append(gevent.spawn(fleet.report_forever, 0.2))
    gevent.joinall(greenlets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
