"""What a repository's settings may ask of restic, per backend: the host owner's last word.

The server checks the same table (app/services/backends.py) before it sends anything; the
agent checks it again on what arrives (``config.update``, ``rpc.repo_test``) and before
every run, so a compromised server still cannot set ``LD_PRELOAD`` or
``RESTIC_PASSWORD_COMMAND``, nor have restic run a program (``sftp.command``,
``rclone.program``). The backend is read from the URL alone.
"""

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from cryptography import x509

SECRET, PLAIN, FILE = "secret", "plain", "file"
MAX_VALUE_CHARS = 4096
MAX_FILE_CHARS = 64 * 1024

# backend → {environment variable: kind}; the kinds are what the agent does with the value:
# secret and plain go into restic's environment (secret ones masked in every line), file
# ones are written to a 0600 file whose path restic (or ssh) is given.
ENVIRONMENT: Dict[str, Dict[str, str]] = {
    "local": {},
    "rest": {"RESTIC_REST_USERNAME": PLAIN, "RESTIC_REST_PASSWORD": SECRET},
    "s3": {
        "AWS_ACCESS_KEY_ID": PLAIN,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": SECRET,
        "AWS_DEFAULT_REGION": PLAIN,
    },
    "b2": {"B2_ACCOUNT_ID": PLAIN, "B2_ACCOUNT_KEY": SECRET},
    "azure": {
        "AZURE_ACCOUNT_NAME": PLAIN,
        "AZURE_ACCOUNT_KEY": SECRET,
        "AZURE_ACCOUNT_SAS": SECRET,
        "AZURE_ENDPOINT_SUFFIX": PLAIN,
    },
    "gs": {
        "GOOGLE_PROJECT_ID": PLAIN,
        "GOOGLE_APPLICATION_CREDENTIALS": FILE,
        "GOOGLE_ACCESS_TOKEN": SECRET,
    },
    # Not restic's variables: the agent writes both to files and builds sftp.command itself.
    "sftp": {"SFTP_PRIVATE_KEY": FILE, "SFTP_KNOWN_HOSTS": FILE},
    # Remotes are the host owner's (rclone.conf): an rclone remote may run programs.
    "rclone": {"RCLONE_CONFIG_PASS": SECRET},
}
# Variables the agent does not hand to restic as they are (it turns them into files or ssh
# options, or into the URL for an old restic).
AGENT_ONLY = frozenset({"SFTP_PRIVATE_KEY", "SFTP_KNOWN_HOSTS"})

# ``-o key=value``: never sftp.command, sftp.args, rclone.program, rclone.args (they run
# programs as root). ``None``: any value; else a pattern the whole value must match.
_CONNECTIONS = re.compile(r"[1-9][0-9]{0,3}")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
OPTIONS: Dict[str, re.Pattern] = {
    "s3.region": _NAME,
    "s3.bucket-lookup": re.compile(r"auto|dns|path"),
    "s3.storage-class": _NAME,
    "s3.connections": _CONNECTIONS,
    "b2.connections": _CONNECTIONS,
    "azure.connections": _CONNECTIONS,
    "gs.connections": _CONNECTIONS,
    "gs.region": _NAME,
    "rest.connections": _CONNECTIONS,
    "sftp.connections": _CONNECTIONS,
    "rclone.connections": _CONNECTIONS,
    "local.connections": _CONNECTIONS,
}

_PREFIX = re.compile(r"^([a-z][a-z0-9]*):")
_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.DOTALL
)
# sftp targets end up on ssh's command line: plain host names, addresses, user names only.
_SFTP_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_SFTP_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\]")
_SFTP_SHORT = re.compile(r"^(?:([^@:/]*)@)?(\[[^\]]*\]|[^:/]*):")
_ARTICLES = {"s3": "an", "sftp": "an", "rclone": "an", "azure": "an"}


class BackendRefused(ValueError):
    """A repository setting this agent will not use; ``str()`` names it and says why."""


@dataclass(frozen=True)
class BackendSettings:
    """The checked extras of one repository section (everything but url and password)."""

    backend: str
    env: Dict[str, str] = field(default_factory=dict)
    files: Dict[str, str] = field(default_factory=dict)
    options: Tuple[str, ...] = ()
    cacert: Optional[str] = None
    insecure_tls: bool = False


@dataclass(frozen=True)
class SftpTarget:
    host: str
    user: Optional[str] = None
    port: Optional[int] = None


def backend_of(url: str) -> str:
    """``s3``, ``rest``, … from the URL's prefix; ``local`` for a path. An unknown prefix
    is returned as it is (a backend with nothing allowed)."""
    match = _PREFIX.match(url)
    if match is None or url.startswith("/"):
        return "local"
    return match.group(1)


def allowed_names(backend: str) -> List[str]:
    return sorted(ENVIRONMENT.get(backend, {}))


def kind_of(backend: str, name: str) -> Optional[str]:
    return ENVIRONMENT.get(backend, {}).get(name)


def check_settings(section: Mapping[str, Any]) -> BackendSettings:
    """The repository section's ``env``, ``files``, ``options``, ``cacert`` and
    ``insecure_tls`` checked against the table for its URL's backend (absent = none).

    ``env`` may carry values of every kind (the server's ``repo_env``); ``files`` holds
    the file-kind ones. Raises :class:`BackendRefused` naming the first refused value.
    """
    url = section.get("url")
    if not isinstance(url, str) or not url:
        raise BackendRefused("url: missing")
    backend = backend_of(url)
    env: Dict[str, str] = {}
    files: Dict[str, str] = {}
    for key in ("env", "files"):
        values = section.get(key)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise BackendRefused(f"{key}: must be an object of NAME: text")
        for name, value in values.items():
            kind = _check_name(backend, key, name)
            limit = MAX_FILE_CHARS if kind == FILE else MAX_VALUE_CHARS
            _check_text(f"{key}.{name}", value, limit)
            (files if kind == FILE else env)[name] = value
    if backend == "sftp":
        sftp_target(url)  # refused here rather than at the first run
    return BackendSettings(
        backend=backend,
        env=env,
        files=files,
        options=check_options(section.get("options"), backend),
        cacert=check_cacert(section.get("cacert")),
        insecure_tls=_check_bool(section.get("insecure_tls")),
    )


def check_options(options: Any, backend: str) -> Tuple[str, ...]:
    """``["s3.region=eu-west-1", …]`` → the same, each checked (keys of ``backend`` only);
    ``None`` → none."""
    if options is None:
        return ()
    if not isinstance(options, (list, tuple)):
        raise BackendRefused('options: must be a list of "key=value"')
    checked = []
    for option in options:
        if not isinstance(option, str) or "=" not in option:
            raise BackendRefused(f'options: {option!r} is not "key=value"')
        key, value = option.split("=", 1)
        pattern = OPTIONS.get(key)
        if pattern is None or key.split(".", 1)[0] != backend:
            allowed = ", ".join(sorted(k for k in OPTIONS if k.startswith(backend + "."))) or "none"
            raise BackendRefused(
                f"options.{key}: not allowed for {_article(backend)} repository; allowed: {allowed}"
            )
        if not pattern.fullmatch(value):
            raise BackendRefused(f"options.{key}: {value!r} is not a valid value")
        checked.append(f"{key}={value}")
    return tuple(checked)


def check_cacert(cacert: Any) -> Optional[str]:
    """PEM text of one or more certificates (≤ 64 KiB), or ``None``."""
    if cacert is None or cacert == "":
        return None
    _check_text("cacert", cacert, MAX_FILE_CHARS)
    blocks = _PEM_CERTIFICATE.findall(cacert)
    if not blocks:
        raise BackendRefused("cacert: no PEM certificate (-----BEGIN CERTIFICATE-----) in it")
    for block in blocks:
        try:
            x509.load_pem_x509_certificate(block.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise BackendRefused("cacert: a certificate in it cannot be read") from None
    return cacert


def sftp_target(url: str) -> SftpTarget:
    """User, host and port of ``sftp:user@host:/path`` or ``sftp://user@host:port//path``."""
    rest = url[len("sftp:") :]
    port: Optional[int] = None
    if rest.startswith("//"):
        user, _, hostport = rest[2:].split("/", 1)[0].rpartition("@")
        host, port = _host_and_port(hostport)
    else:
        match = _SFTP_SHORT.match(rest)
        if match is None:
            raise BackendRefused(
                "url: expected sftp:user@host:/path or sftp://user@host:port//path"
            )
        user, host = match.group(1) or "", match.group(2)
    if not _SFTP_HOST.fullmatch(host):
        raise BackendRefused(f"url: {host!r} is not a host name this agent hands to ssh")
    if user and not _SFTP_USER.fullmatch(user):
        raise BackendRefused(f"url: {user!r} is not a user name this agent hands to ssh")
    return SftpTarget(host=host.strip("[]"), user=user or None, port=port)


def _host_and_port(hostport: str) -> Tuple[str, Optional[int]]:
    if hostport.startswith("["):
        host, _, after = hostport.partition("]")
        host += "]"
        port_text = after[1:] if after.startswith(":") else ""
    else:
        host, _, port_text = hostport.partition(":")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BackendRefused(f"url: {port_text!r} is not a port")
    return host, int(port_text)


def _check_name(backend: str, key: str, name: Any) -> str:
    kind = kind_of(backend, name) if isinstance(name, str) else None
    if kind is None:
        allowed = ", ".join(allowed_names(backend)) or "none"
        raise BackendRefused(
            f"{key}.{name}: not allowed for {_article(backend)} repository; allowed: {allowed}"
        )
    return kind


def _check_text(where: str, value: Any, limit: int) -> None:
    if not isinstance(value, str):
        raise BackendRefused(f"{where}: must be text")
    if "\0" in value:
        raise BackendRefused(f"{where}: must not contain a NUL character")
    if len(value) > limit:
        raise BackendRefused(f"{where}: longer than {limit} characters")


def _check_bool(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BackendRefused("insecure_tls: must be true or false")
    return value


def _article(backend: str) -> str:
    return f"{_ARTICLES.get(backend, 'a')} {backend}"
