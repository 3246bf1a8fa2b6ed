"""``restic-manager-agent``: enroll, run, status. One error funnel maps failures to exit codes."""

import argparse
import json
import logging
import os
import signal
import sys
import threading
from datetime import datetime
from typing import Any, Dict, List, Optional

from agent import __version__
from agent.client import Client, ClientError, HostDeleted, ProtocolTooOld, Refused
from agent.config import (
    ConfigError,
    NotEnrolled,
    State,
    load_config,
    merge_settings,
    new_secrets_key,
    normalise_pin,
    write_config,
)
from agent.facts import host_facts
from agent.journal import isoformat, utc_now
from agent.paths import HOME_ENV, AgentPaths, read_json, resolve_home
from agent.scheduler import local_now, next_slot
from agent.schedules import ScheduleStore
from agent.spool import spool_stats_from_disk
from agent.status import read_status

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_REFUSED = 2  # enrollment refused (also argparse's usage errors)
EXIT_PROTOCOL_TOO_OLD = 3
# The server deleted this host: every call gets 410. install/restic-manager-agent.service
# lists it in RestartPreventExitStatus=, so systemd does not restart the agent in a loop.
EXIT_HOST_DELETED = 4
TOKEN_ENV = "RM_ENROLL_TOKEN"  # noqa: S105 (a variable name, not a token)


class UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restic-manager-agent", description="restic-manager agent for this host."
    )
    parser.add_argument(
        "--version", action="version", version=f"restic-manager-agent {__version__}"
    )
    parser.add_argument(
        "--home", help=f"state directory (default: ${HOME_ENV} or /var/lib/restic-manager-agent)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    enroll = commands.add_parser("enroll", help="enroll this host with a one-time token")
    enroll.add_argument("--server", required=True, help="server URL, e.g. https://backup.example")
    enroll.add_argument(
        "--token", help=f"enrollment token (or ${TOKEN_ENV}; '-' reads it from standard input)"
    )
    enroll.add_argument(
        "--ca-file", help="PEM bundle of the CA that signed the server's certificate"
    )
    enroll.add_argument("--pin", help="SHA-256 (hex) of the server's certificate (DER)")
    enroll.add_argument("--force", action="store_true", help="replace an existing enrollment")
    enroll.set_defaults(handler=enroll_command)
    run = commands.add_parser("run", help="run the agent (long-poll the server)")
    run.set_defaults(handler=run_command)
    status = commands.add_parser("status", help="show the agent's connection and spool")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=status_command)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_REFUSED
    try:
        return args.handler(args)
    except ProtocolTooOld as error:
        print(error.message, file=sys.stderr)
        return EXIT_PROTOCOL_TOO_OLD
    except HostDeleted:  # the agent's log said why, in one line
        return EXIT_HOST_DELETED
    except Refused as error:
        print(f"the server refused: {error.message}", file=sys.stderr)
        return EXIT_REFUSED
    except (ConfigError, UsageError, ClientError) as error:
        print(f"restic-manager-agent: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


# -- enroll ------------------------------------------------------------------------------


def _enrollment_token(args: argparse.Namespace) -> str:
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if token == "-":  # noqa: S105
        token = sys.stdin.readline()
    token = token.strip()
    if not token:
        raise UsageError(f"enroll needs --token TOKEN (or ${TOKEN_ENV})")
    return token


def enroll_command(args: argparse.Namespace) -> int:
    paths = AgentPaths(resolve_home(args.home))
    if paths.state.exists() and not args.force:
        raise UsageError(
            f"this host is already enrolled ({paths.state}); pass --force to enroll it again"
        )
    token = _enrollment_token(args)
    pin = normalise_pin(args.pin)
    ca_file = os.path.abspath(args.ca_file) if args.ca_file else None
    if ca_file and not os.path.isfile(ca_file):
        raise UsageError(f"--ca-file {ca_file} does not exist")
    server_url = args.server.strip().rstrip("/")
    client = Client(server_url, ca_file=ca_file, pin_sha256=pin)
    try:
        answer = client.enroll(token, host_facts())
    finally:
        client.close()
    host_id, agent_token = answer.get("host_id"), answer.get("agent_token")
    if not isinstance(agent_token, str) or not agent_token:
        raise ConfigError("the server's enrollment answer has no agent token")
    paths.ensure()
    write_config(paths.config, server_url, ca_file, pin)
    state = State(
        paths.state,
        {
            "host_id": host_id,
            "agent_token": agent_token,
            "secrets_key": new_secrets_key(),
            "settings": merge_settings({}, answer.get("settings")),
            "enrolled_at": isoformat(utc_now()),
        },
    )
    state.save()
    if paths.secrets.exists():  # sealed under the previous key: the server sends them again
        paths.secrets.unlink()
    home_flag = f"--home {paths.home} " if args.home else ""
    print(f"enrolled as host {host_id}; start the agent with: restic-manager-agent {home_flag}run")
    return EXIT_OK


# -- run ---------------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> int:
    from agent.service import Agent  # the loop's imports are not needed by enroll/status

    logging.basicConfig(
        level=os.environ.get("RM_AGENT_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    agent = Agent(args.home)
    stop = threading.Event()

    def request_stop(signal_number, frame):
        logging.getLogger("agent").info("signal %s: stopping", signal_number)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return agent.run_forever(stop)


# -- status ------------------------------------------------------------------------------


def _process_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect_status(paths: AgentPaths) -> Dict[str, Any]:
    config = load_config(paths.config)
    state = State.load(paths.state)
    status = read_status(paths.status) or {}
    alive = status.get("state") not in (None, "stopped") and _process_alive(status.get("pid"))
    return {
        "host_id": state.host_id,
        "server_url": config.server_url,
        "agent_running": alive,
        "pid": status.get("pid") if alive else None,
        "connection": status.get("state") if alive else "not running",
        "since": status.get("since"),
        "last_poll_ok_at": status.get("last_poll_ok_at"),
        "last_error": status.get("last_error"),
        "last_error_at": status.get("last_error_at"),
        "running": status.get("running") or [],
        "spool": spool_stats_from_disk(paths.spool),
        "schedules": _schedules(paths, state),
    }


def _schedules(paths: AgentPaths, state: State) -> Optional[Dict[str, Any]]:
    """The applied schedule set without its hook bodies, with when each last fired (``None``:
    never; a skipped missed run is no fire) and, when enabled, when it fires next."""
    applied = ScheduleStore(paths.schedules, state.secrets_key()).load()
    if applied is None:
        return None
    summary = applied.summary()
    fires = read_json(paths.schedule_state, default={}) or {}
    now = local_now()
    for schedule in summary["schedules"]:
        entry = fires.get(str(schedule["id"])) if isinstance(fires, dict) else None
        fired_at = entry.get("fired_at") if isinstance(entry, dict) else None
        schedule["last_fire_at"] = fired_at if isinstance(fired_at, str) else None
        schedule["next_fire_at"] = (
            next_slot(schedule["cron"], now).isoformat() if schedule["enabled"] else None
        )
    return summary


def status_command(args: argparse.Namespace) -> int:
    paths = AgentPaths(resolve_home(args.home))
    try:
        report = collect_status(paths)
    except NotEnrolled as error:
        print(f"not enrolled: {error}")
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return EXIT_OK
    spool = report["spool"]
    agent_line = f"running, pid {report['pid']}" if report["agent_running"] else "not running"
    lines = [
        f"host:                 {report['host_id']} at {report['server_url']}",
        f"agent:                {agent_line}",
        f"connection:           {report['connection']} (since {report['since'] or '-'})",
        f"last successful poll: {report['last_poll_ok_at'] or 'never'}",
        f"last error:           {report['last_error'] or '-'}",
        f"spool:                {spool['events']} events, {spool['log_records']} log records, "
        f"{spool['bytes']} bytes",
    ]
    jobs = report["running"]
    lines.append(
        "jobs:                 "
        + (", ".join(f"job {job['job_id']} ({job['state']})" for job in jobs) or "none")
    )
    lines.extend(_schedule_lines(report["schedules"]))
    print("\n".join(lines))
    return EXIT_OK


def _schedule_lines(schedules: Optional[Dict[str, Any]]) -> List[str]:
    if schedules is None:
        return ["schedules:            none received yet"]
    lines = [f"schedules:            version {schedules['version']}"]
    for schedule in schedules["schedules"]:
        state = "" if schedule["enabled"] else ", disabled"
        lines.append(
            f"  {schedule['name']}: {schedule['cron']} ({', '.join(schedule['groups'])}; "
            f"missed: {schedule['missed_policy']}{state})"
        )
        fires = f"    last fired {_readable_time(schedule['last_fire_at']) or 'never'}"
        if schedule["next_fire_at"]:
            fires += f", next {_readable_time(schedule['next_fire_at'])}"
        lines.append(fires)
    return lines


def _readable_time(value: Optional[str]) -> Optional[str]:
    """``2026-12-03 02:30:00+01:00`` (the host's local time, as cron reads it)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).isoformat(sep=" ", timespec="seconds")
    except ValueError:
        return value
