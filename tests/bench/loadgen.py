"""Simulated agents in one gevent process, for the long-poll benchmark (see longpoll.py).

    python tests/bench/loadgen.py --base http://127.0.0.1:8080 --tokens tokens.json --ramp 25 \
        [--slice 0 --slices 2]

``--slice I --slices K``: this process runs the agents at index I, I+K, I+2K, ... of the
tokens file (the driver starts K such processes, one per core by default), each with the
start delay of its global index, so the K processes together spread the whole fleet's
connection starts evenly over the ramp.

Each agent: one keep-alive HTTP/1.1 connection (a minimal client over gevent sockets,
:class:`Connection`), ``hello``, then ``poll`` in a loop with ``wait`` omitted (the
server's 25 s hold applies), acking the commands of one poll in the next, as the real
agent does. Agents start spread uniformly
over ``--ramp`` seconds, so their poll cycles are out of phase like a fleet that has been
running for a while.

Writes JSON lines to stdout:
  {"ev": "cmd", "host_id", "job_id", "command_id", "type", "delivery_count", "t"}
      for every command received (``t`` = time.monotonic() when the response was read;
      CLOCK_MONOTONIC is system-wide on Linux, so the driver can compare it with its own)
  {"ev": "status", "slice", ...counters...} every 0.2 s and once more on SIGTERM/SIGINT
      ("final"); ``error_kinds`` counts the errors by kind (e.g. "poll: ConnectionResetError").
  {"ev": "error", "host_id", "what"} for each failed request (the agent then backs off as
      the real agent does: agent/backoff.py, 1 s to 60 s with full jitter, Retry-After).
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from agent.backoff import Backoff, parse_retry_after  # noqa: E402  (the real agent's)

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
    "connects",  # TCP connections opened (connect() returned)
    "connect_ms_max",  # slowest TCP connect: a full listen backlog shows as SYN retries (1 s, 3 s)
    "connect_slow",  # connects that took more than 0.5 s
    "hello_ms_sum",  # hello round trips (request sent -> answer read), connect excluded
    "hello_ms_max",
)


class Connection:
    """One keep-alive HTTP/1.1 connection that does only what the agent protocol needs: send
    a prebuilt request, read the status line, the headers and a Content-Length body.

    The load generator shares the server's machine; real agents do not. http.client parsed
    every answer's headers with the email package: about 0.45 ms of CPU per poll, at 10,000
    agents a fifth of a core taken from the server under test."""

    def __init__(self, host: str, port: int, timeout: float):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def _more(self, what: str) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise http.client.RemoteDisconnected(f"connection closed {what}")
        self.buffer += chunk

    def exchange(self, request: bytes) -> tuple[int, bytes, dict, bool]:
        """(status, body, headers by lower-case name, whether the server closes)."""
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self._more("before the answer")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        version, _, rest = status_line.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not rest[:3].isdigit():
            raise http.client.BadStatusLine(status_line[:100].decode("latin-1"))
        status = int(rest[:3])
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            raise http.client.HTTPException("a chunked answer (the agent protocol has none)")
        close = version == b"HTTP/1.0" or headers.get(b"connection", b"").lower() == b"close"
        if b"content-length" in headers:
            length = int(headers[b"content-length"])
            while len(self.buffer) < length:
                self._more("inside the answer's body")
            body, self.buffer = self.buffer[:length], self.buffer[length:]
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:  # no length: the body runs to the end of the connection
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.buffer += chunk
            body, self.buffer, close = self.buffer, b"", True
        return status, body, headers, close


class Fleet:
    def __init__(self, host: str, port: int, agents: list[dict]):
        self.host = host
        self.port = port
        self.agents = agents
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.error_kinds: dict[str, int] = {}
        self.slice = 0
        self.stopping = False

    def emit(self, record: dict) -> None:
        sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def status(self, final: bool = False) -> None:
        self.emit(
            {
                "ev": "status",
                "slice": self.slice,
                "pid": os.getpid(),
                "final": final,
                "t": time.monotonic(),
                **self.counts,
                "error_kinds": self.error_kinds,
            }
        )

    def error(self, agent: dict, what: str) -> None:
        self.counts["errors"] += 1
        kind = what.split(":", 2)
        kind = ":".join(kind[:2]) if len(kind) > 1 else what
        self.error_kinds[kind[:80]] = self.error_kinds.get(kind[:80], 0) + 1
        self.emit({"ev": "error", "host_id": agent["id"], "what": what})

    def _connect(self) -> Connection:
        started = time.monotonic()
        conn = Connection(self.host, self.port, timeout=90)  # SYN retries show up here
        took = (time.monotonic() - started) * 1000
        self.counts["connects"] += 1
        self.counts["connect_ms_max"] = max(self.counts["connect_ms_max"], round(took, 1))
        if took > 500:
            self.counts["connect_slow"] += 1
        return conn

    def _post(self, agent: dict, path: str, body: dict):
        """(status, parsed body or None); reconnects once on a dropped keep-alive. A failed
        answer's Retry-After is kept in ``agent["retry_after"]`` for :meth:`_back_off`."""
        payload = json.dumps(body).encode()
        request = (
            f"POST {API}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {agent['token']}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json\r\nUser-Agent: restic-manager-bench\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload
        for attempt in (1, 2):
            try:
                conn = agent.get("conn") or self._connect()
            except BaseException:
                agent["conn"] = None
                raise
            agent["conn"] = conn
            try:
                status, raw, headers, will_close = conn.exchange(request)
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
            if will_close:
                conn.close()
                agent["conn"] = None
            retry_after = headers.get(b"retry-after")
            agent["retry_after"] = parse_retry_after(retry_after.decode() if retry_after else None)
            if status == 200:
                try:
                    return 200, json.loads(raw)
                except ValueError:
                    return f"200 with a body that is not JSON: {raw[:100]!r}", None
            return status, None
        raise AssertionError("unreachable")

    def _back_off(self, agent: dict, backoff: Backoff) -> None:
        """Wait as the real agent does after a failure (agent/backoff.py: exponential with
        full jitter from 1 s to 60 s, at least a Retry-After the server sent), so an
        overloaded server sees the retries a real fleet would send, not a storm every 1-2 s."""
        gevent.sleep(backoff.next_delay(agent.pop("retry_after", None)))

    def run_agent(self, agent: dict, delay: float) -> None:
        gevent.sleep(delay)
        backoff = Backoff()
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
            if agent.get("conn") is None:
                try:
                    agent["conn"] = self._connect()
                except (OSError, http.client.HTTPException) as error:
                    self.error(agent, f"connect: {type(error).__name__}: {error}")
                    self._back_off(agent, backoff)
                    continue
            started = time.monotonic()
            try:
                status, _ = self._post(agent, "/hello", facts)
            except (OSError, http.client.HTTPException) as error:
                status = f"{type(error).__name__}: {error}"
            if status == 200:
                took = (time.monotonic() - started) * 1000
                counts["hello_ok"] += 1
                counts["hello_ms_sum"] = round(counts["hello_ms_sum"] + took, 1)
                counts["hello_ms_max"] = max(counts["hello_ms_max"], round(took, 1))
                backoff.reset()
                break
            self.error(agent, f"hello: {status}")
            self._back_off(agent, backoff)
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
            if status in (200, 204):
                backoff.reset()
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
                            "pid": os.getpid(),
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
                self.error(agent, f"poll: {status}")
                self._back_off(agent, backoff)

    def report_forever(self, every: float) -> None:
        while True:
            self.status()
            gevent.sleep(every)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="server URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--tokens", required=True, help="JSON written by seed.py")
    parser.add_argument("--ramp", type=float, default=25.0, help="spread agent starts (s)")
    parser.add_argument("--slice", type=int, default=0, help="this process's part (0-based)")
    parser.add_argument("--slices", type=int, default=1, help="processes sharing the fleet")
    args = parser.parse_args()
    if not 0 <= args.slice < args.slices:
        parser.error("--slice must be in 0 .. --slices - 1")
    url = urlsplit(args.base)
    hosts = json.loads(Path(args.tokens).read_text())["hosts"]
    total = len(hosts)
    # (global index, agent): the global index sets the start delay, so K processes together
    # start one agent every ramp/N seconds, interleaved, rather than K agents at once.
    mine = [(index, dict(hosts[index])) for index in range(args.slice, total, args.slices)]
    fleet = Fleet(url.hostname, url.port or 80, [agent for _, agent in mine])
    fleet.slice = args.slice

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
    greenlets = [
        gevent.spawn(fleet.run_agent, agent, args.ramp * index / max(total, 1))
        for index, agent in mine
    ]
    greenlets.append(gevent.spawn(fleet.report_forever, 0.2))
    gevent.joinall(greenlets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
