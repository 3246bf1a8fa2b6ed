"""The one place that binds the repository credentials to their secret masking and to what
restic runs with (jobs, rpc calls, the repository test and the host facts all come here).

The stored credentials are what ``config.update`` sealed: the everyday repository
(``url``, ``username``, ``password`` and the backend's ``env``, ``files``, ``options``,
``cacert``, ``insecure_tls``) and, beside it, an optional ``admin_repository`` (for forget
and prune on an append-only everyday credential). Every secret of both is masked in
whatever restic prints, whichever of them a command runs with.

:meth:`Repository.run_setup` is the seam for "a restic run with these credentials": the
argv with restic's global flags, the environment, and the file secrets written to a fresh
0700 directory in the agent's home that is removed when the run ends (failed or cancelled
alike).
"""

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote, urlsplit, urlunsplit

from agent.restic import backends
from agent.restic.environment import Masker, restic_environment, secrets_of
from agent.restic.version import REST_ENV, at_least

Credentials = Dict[str, Any]
CREDENTIAL_KEYS = ("url", "username", "password")
RUN_DIR_PREFIX = "restic-run-"
KNOWN_HOSTS_FILE = "ssh_known_hosts"  # in the agent's home: hosts first seen are kept here
VersionSource = Union[None, str, Callable[[], Optional[str]]]
log = logging.getLogger(__name__)


class Repository:
    """The repository as this agent reaches it: credentials, masker, restic environment."""

    def __init__(
        self,
        stored: Optional[Mapping[str, Any]],
        cache_dir: Optional[Path] = None,
        home: Optional[Path] = None,
        restic_version: VersionSource = None,
    ):
        stored = stored or {}
        admin = stored.get("admin_repository")
        self._everyday = only_credentials(stored)
        self._admin = only_credentials(admin) if isinstance(admin, Mapping) else None
        self.cache_dir = cache_dir
        self.home = home if home is not None else (cache_dir.parent if cache_dir else None)
        self._restic_version = restic_version
        self.masker = Masker(secrets_of(self._everyday) + secrets_of(self._admin))

    @property
    def everyday(self) -> Optional[Credentials]:
        """The everyday credentials, if the server sent them."""
        return dict(self._everyday) if self._everyday.get("url") else None

    @property
    def admin(self) -> Optional[Credentials]:
        """The admin credentials, if the server sent them."""
        return dict(self._admin) if self._admin and self._admin.get("url") else None

    @property
    def restic_version(self) -> Optional[str]:
        source = self._restic_version
        return source() if callable(source) else source

    def environment(
        self, credentials: Optional[Mapping[str, Any]], progress_fps: float = 1
    ) -> Dict[str, str]:
        """The base environment of one restic run: repository URL and password only (use
        :meth:`run_setup` to run restic with a repository)."""
        return restic_environment(credentials, self.cache_dir, progress_fps=progress_fps)

    @contextlib.contextmanager
    def run_setup(
        self,
        credentials: Optional[Mapping[str, Any]],
        argv: Sequence[str],
        progress_fps: float = 1,
    ) -> Iterator[Tuple[Tuple[str, ...], Dict[str, str]]]:
        """``(argv, env)`` for one restic run with ``credentials``, for the block's duration.

        The global flags (``-o``, ``--cacert``, ``--insecure-tls``) go right after the
        binary; secrets go into the environment or into 0600 files in a fresh 0700
        directory that is removed when the block ends, however it ends. Raises
        :class:`backends.BackendRefused` for settings outside the backend's allow-list.
        """
        if not credentials:
            yield tuple(argv), self.environment(None, progress_fps)
            return
        settings = backends.check_settings(credentials)
        env = self.environment(credentials, progress_fps)
        run_dir: Optional[Path] = None
        try:
            if settings.files or settings.cacert or settings.backend == "sftp":
                run_dir = self._new_run_dir()
            flags, extra_env = self._globals(credentials, settings, run_dir)
            env.update(extra_env)
            yield (argv[0], *flags, *argv[1:]), env
        finally:
            if run_dir is not None:
                shutil.rmtree(run_dir, ignore_errors=True)

    # -- the pieces of run_setup -------------------------------------------------------

    def _new_run_dir(self) -> Path:
        parent = self.home
        if parent is not None:
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdtemp: a new name, mode 0700, created by us (never an existing directory).
        return Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=parent))

    def _globals(
        self,
        credentials: Mapping[str, Any],
        settings: backends.BackendSettings,
        run_dir: Optional[Path],
    ) -> Tuple[Tuple[str, ...], Dict[str, str]]:
        flags = []
        for option in settings.options:
            flags += ["-o", option]
        env = {
            name: value
            for name, value in settings.env.items()
            if name not in backends.AGENT_ONLY and not name.startswith("RESTIC_REST_")
        }
        paths = {
            name: _write_secret(run_dir, name, text)
            for name, text in settings.files.items()
            if run_dir is not None
        }
        if "GOOGLE_APPLICATION_CREDENTIALS" in paths:
            env["GOOGLE_APPLICATION_CREDENTIALS"] = str(paths["GOOGLE_APPLICATION_CREDENTIALS"])
        if settings.backend == "sftp" and run_dir is not None:
            flags += ["-o", "sftp.command=" + self._sftp_command(credentials, paths, run_dir)]
        if settings.backend == "rest":
            url, rest_env = rest_credentials(credentials, settings, self.restic_version)
            env.update(rest_env)
            env["RESTIC_REPOSITORY"] = url
        if settings.cacert and run_dir is not None:
            flags += ["--cacert", str(_write_secret(run_dir, "cacert.pem", settings.cacert))]
        if settings.insecure_tls:
            flags.append("--insecure-tls")
        return tuple(flags), env

    def _sftp_command(
        self, credentials: Mapping[str, Any], paths: Mapping[str, Path], run_dir: Path
    ) -> str:
        known_hosts = paths.get("SFTP_KNOWN_HOSTS")
        default_known_hosts = (self.home or run_dir) / KNOWN_HOSTS_FILE
        return sftp_command(
            backends.sftp_target(str(credentials["url"])),
            paths.get("SFTP_PRIVATE_KEY"),
            known_hosts,
            default_known_hosts,
        )


def only_credentials(source: Mapping[str, Any]) -> Credentials:
    """What a repository section holds, where it has the right type: ``url``, ``username``,
    ``password`` (text), ``env``/``files`` (objects), ``options`` (a list), ``cacert``
    (text), ``insecure_tls`` (true). Absent keys stay absent."""
    kept: Credentials = {
        key: source[key] for key in CREDENTIAL_KEYS if isinstance(source.get(key), str)
    }
    for key in ("env", "files"):
        if isinstance(source.get(key), Mapping) and source[key]:
            kept[key] = dict(source[key])
    if isinstance(source.get("options"), (list, tuple)) and source["options"]:
        kept["options"] = list(source["options"])
    if isinstance(source.get("cacert"), str) and source["cacert"]:
        kept["cacert"] = source["cacert"]
    if source.get("insecure_tls") is True:
        kept["insecure_tls"] = True
    return kept


def checked_credentials(section: Mapping[str, Any]) -> Credentials:
    """A repository section as the agent stores it: checked against the backend's table
    (:class:`backends.BackendRefused` otherwise), env and files sorted by kind."""
    settings = backends.check_settings(section)
    stored: Dict[str, Any] = {
        key: section[key] for key in CREDENTIAL_KEYS if isinstance(section.get(key), str)
    }
    stored.update(
        env=settings.env,
        files=settings.files,
        options=list(settings.options),
        cacert=settings.cacert,
        insecure_tls=settings.insecure_tls,
    )
    return only_credentials(stored)


def rest_credentials(
    credentials: Mapping[str, Any],
    settings: backends.BackendSettings,
    restic_version: Optional[str],
) -> Tuple[str, Dict[str, str]]:
    """The URL and the environment that carry a REST server's user and password.

    User: env ``RESTIC_REST_USERNAME``, else the credentials' ``username``; password: env
    ``RESTIC_REST_PASSWORD``. restic ≥ 0.17 reads both from its environment; an older
    (or unknown) restic gets ``user:password@`` in the URL, which only its environment
    sees.
    """
    url = str(credentials.get("url") or "")
    user = settings.env.get("RESTIC_REST_USERNAME") or str(credentials.get("username") or "")
    password = settings.env.get("RESTIC_REST_PASSWORD") or ""
    if not user and not password:
        return url, {}
    if at_least(restic_version, REST_ENV):
        env = {"RESTIC_REST_USERNAME": user} if user else {}
        if password:
            env["RESTIC_REST_PASSWORD"] = password
        return url, env
    return url_with_user(url, user, password), {}


def url_with_user(url: str, user: str, password: str) -> str:
    """``rest:https://host/path`` → ``rest:https://user:password@host/path`` (percent-encoded;
    whatever user the URL had is replaced)."""
    prefix, _, target = url.partition(":")
    parts = urlsplit(target)
    host = parts.netloc.rpartition("@")[2]
    userinfo = quote(user, safe="")
    if password:
        userinfo += ":" + quote(password, safe="")
    return f"{prefix}:" + urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def sftp_command(
    target: backends.SftpTarget,
    key_file: Optional[Path],
    known_hosts_file: Optional[Path],
    default_known_hosts: Path,
) -> str:
    """restic's ``sftp.command``, built from the parsed URL and the agent's own paths only."""
    words = ["ssh"]
    if key_file is not None:
        words += ["-i", str(key_file), "-o", "IdentitiesOnly=yes"]
    words += ["-o", "BatchMode=yes"]
    if target.port is not None:
        words += ["-p", str(target.port)]
    if known_hosts_file is not None:
        words += ["-o", f"UserKnownHostsFile={known_hosts_file}"]
        words += ["-o", "StrictHostKeyChecking=yes"]
    else:
        words += ["-o", f"UserKnownHostsFile={default_known_hosts}"]
        words += ["-o", "StrictHostKeyChecking=accept-new"]
    if target.user:
        words += ["-l", target.user]
    words += [target.host, "-s", "sftp"]
    # restic splits the command at blanks and honours double quotes.
    return " ".join(f'"{word}"' if any(c.isspace() for c in word) else word for word in words)


def remove_leftover_run_dirs(home: Path) -> None:
    """Run directories an agent killed mid-run left behind (their secrets must not stay)."""
    for leftover in home.glob(RUN_DIR_PREFIX + "*"):
        if leftover.is_dir():
            log.info("removing %s, left behind by a restic run of an earlier agent", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def _write_secret(run_dir: Path, name: str, text: str) -> Path:
    """``text`` in a new 0600 file (ssh wants a key file's lines ended by LF, last one too)."""
    path = run_dir / name
    if name.startswith("SFTP_"):
        text = text.replace("\r\n", "\n")
        text = text if text.endswith("\n") else text + "\n"
    with open(path, "x", encoding="utf-8", opener=_private_opener) as handle:
        handle.write(text)
    return path


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)
