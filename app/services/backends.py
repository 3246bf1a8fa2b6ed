"""The repository backends restic reaches, and what each may be given (docs/repositories.md).

A repository is a URL and restic's password; most backends also need credentials that
restic reads from its environment (``AWS_SECRET_ACCESS_KEY`` …) or from a file (a GCS
service-account key, an SFTP private key). This module is the allow-list: which variable
names each backend takes, which are secret, which are files, and which ``-o`` options
restic may be given. The agent enforces the same table again (``agent/restic/backends.py``):
nothing outside it reaches restic's environment, so neither an operator nor a server can
hand restic ``LD_PRELOAD`` or a command to run (``sftp.command``, ``rclone.program``).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from app.services import validate
from app.services.errors import ValidationFailed

MAX_VALUE_LENGTH = 4096
MAX_FILE_LENGTH = 64 * 1024
MAX_OPTIONS = 20
PLAIN, SECRET, FILE = "plain", "secret", "file"


@dataclass(frozen=True)
class Variable:
    name: str
    kind: str  # plain | secret | file
    label: str
    help: str = ""
    required: bool = False

    @property
    def secret(self) -> bool:
        return self.kind != PLAIN


@dataclass(frozen=True)
class Backend:
    key: str
    label: str
    examples: tuple[str, ...]
    variables: tuple[Variable, ...] = ()
    help: str = ""
    option_keys: tuple[str, ...] = field(default=())

    def variable(self, name: str) -> Optional[Variable]:
        return next((v for v in self.variables if v.name == name), None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variables)


BACKENDS: dict[str, Backend] = {
    backend.key: backend
    for backend in (
        Backend(
            "local",
            "Local directory",
            ("/srv/restic/web-1", "local:/mnt/backup/web-1"),
            help="A directory on the host itself (a mounted disk or NFS share).",
            option_keys=("local.connections",),
        ),
        Backend(
            "rest",
            "REST server",
            ("rest:https://backup.example.com:8000/web-1",),
            (
                Variable(
                    "RESTIC_REST_USERNAME",
                    PLAIN,
                    "REST user",
                    "The rest-server (or rclone serve restic) user; the Username field "
                    "sets it too.",
                ),
                Variable("RESTIC_REST_PASSWORD", SECRET, "REST password"),
            ),
            help="restic's rest-server or `rclone serve restic`, with HTTP basic auth.",
            option_keys=("rest.connections",),
        ),
        Backend(
            "s3",
            "S3-compatible (AWS, MinIO, Wasabi, Garage …)",
            ("s3:s3.amazonaws.com/bucket/web-1", "s3:https://minio.example.com:9000/bucket/web-1"),
            (
                Variable("AWS_ACCESS_KEY_ID", PLAIN, "Access key ID", required=True),
                Variable("AWS_SECRET_ACCESS_KEY", SECRET, "Secret access key", required=True),
                Variable("AWS_DEFAULT_REGION", PLAIN, "Region", "e.g. eu-central-1"),
                Variable("AWS_SESSION_TOKEN", SECRET, "Session token", "Temporary credentials."),
            ),
            help="The endpoint and bucket are in the URL; restic creates the bucket at init.",
            option_keys=(
                "s3.region",
                "s3.bucket-lookup",
                "s3.storage-class",
                "s3.connections",
            ),
        ),
        Backend(
            "b2",
            "Backblaze B2",
            ("b2:bucketname:web-1",),
            (
                Variable("B2_ACCOUNT_ID", PLAIN, "Account or key ID", required=True),
                Variable("B2_ACCOUNT_KEY", SECRET, "Application key", required=True),
            ),
            option_keys=("b2.connections",),
        ),
        Backend(
            "azure",
            "Azure Blob Storage",
            ("azure:container:/web-1",),
            (
                Variable("AZURE_ACCOUNT_NAME", PLAIN, "Storage account name", required=True),
                Variable("AZURE_ACCOUNT_KEY", SECRET, "Account key", "Or a SAS token below."),
                Variable("AZURE_ACCOUNT_SAS", SECRET, "SAS token"),
                Variable(
                    "AZURE_ENDPOINT_SUFFIX", PLAIN, "Endpoint suffix", "e.g. core.chinacloudapi.cn"
                ),
            ),
            option_keys=("azure.connections",),
        ),
        Backend(
            "gs",
            "Google Cloud Storage",
            ("gs:bucketname:/web-1",),
            (
                Variable("GOOGLE_PROJECT_ID", PLAIN, "Project ID"),
                Variable(
                    "GOOGLE_APPLICATION_CREDENTIALS",
                    FILE,
                    "Service account key (JSON)",
                    "Paste the key file; the agent writes it to a private file only while "
                    "restic runs.",
                ),
                Variable("GOOGLE_ACCESS_TOKEN", SECRET, "Access token", "Instead of a key."),
            ),
            option_keys=("gs.connections", "gs.region"),
        ),
        Backend(
            "sftp",
            "SFTP",
            ("sftp:backup@nas.example.com:/srv/restic/web-1", "sftp://backup@nas:2222//restic"),
            (
                Variable(
                    "SFTP_PRIVATE_KEY",
                    FILE,
                    "Private key",
                    "An OpenSSH or PEM key without a passphrase; empty uses the host's own "
                    "ssh setup.",
                ),
                Variable(
                    "SFTP_KNOWN_HOSTS",
                    FILE,
                    "Known hosts line",
                    "The server's host key (ssh-keyscan output); empty trusts the key seen first.",
                ),
            ),
            option_keys=("sftp.connections",),
        ),
        Backend(
            "rclone",
            "rclone",
            ("rclone:remote:bucket/web-1",),
            (
                Variable(
                    "RCLONE_CONFIG_PASS",
                    SECRET,
                    "rclone config password",
                    "Only when the host's rclone.conf is encrypted. Remotes are set up by "
                    "the host's owner: an rclone remote can run programs.",
                ),
            ),
            option_keys=("rclone.connections",),
        ),
    )
}
ORDER = tuple(BACKENDS)
_PREFIX = re.compile(r"^(rest|s3|b2|azure|gs|sftp|rclone|local|swift):")
_OPTION = re.compile(r"^([a-z0-9]+\.[a-z0-9-]+)=(.{1,256})$")
_BUCKET_LOOKUP = ("auto", "dns", "path")


def backend_of(url: str) -> Backend:
    """The backend a restic URL names (a path without a prefix is local)."""
    match = _PREFIX.match(url or "")
    if match is None:
        return BACKENDS["local"]
    key = match.group(1)
    if key == "swift":
        return BACKENDS["local"]  # refused by check_url
    return BACKENDS[key]


def check_url(url: str) -> None:
    """Refuse a backend this product does not support (its credentials could not be given)."""
    if url.startswith("swift:"):
        validate.fail(
            "repo_url", "OpenStack Swift repositories are not supported: use its S3 API (s3:…)."
        )


def check_username(backend: Backend, username: Optional[str]) -> None:
    if username and backend.key != "rest":
        validate.fail(
            "repo_username",
            f"The username is the REST server's user; a {backend.label} repository takes its "
            "credentials in the backend fields (repo_env).",
        )


def _file_problem(name: str, value: str) -> Optional[str]:
    """Why a file secret cannot be used (it would only fail later on the host), or None."""
    data = value.encode()
    if name == "GOOGLE_APPLICATION_CREDENTIALS":
        try:
            parsed = json.loads(value)
        except ValueError:
            return "must be the service account's JSON key file"
        if not isinstance(parsed, dict) or "type" not in parsed:
            return 'must be the service account\'s JSON key file (an object with "type")'
    elif name == "SFTP_PRIVATE_KEY":
        locked_key = "must not be protected by a passphrase (the agent cannot type one)"
        if _openssh_encrypted(value):
            return locked_key
        try:
            if b"OPENSSH PRIVATE KEY" in data:
                serialization.load_ssh_private_key(data, password=None)
            else:
                serialization.load_pem_private_key(data, password=None)
        except TypeError:
            return locked_key
        except Exception:  # any parse failure gets the same answer
            return "must be a private key in OpenSSH or PEM format"
    elif name == "SFTP_KNOWN_HOSTS":
        lines = [line for line in value.splitlines() if line.strip()]
        if not lines or any(len(line.split()) < 3 for line in lines):
            return "must be known_hosts lines: host, key type, key (ssh-keyscan prints them)"
    return None


def _openssh_encrypted(text: str) -> bool:
    """An OpenSSH key whose cipher is not "none" (read from the header: checking the
    passphrase itself would need bcrypt)."""
    match = re.search(
        r"-----BEGIN OPENSSH PRIVATE KEY-----(.*?)-----END OPENSSH PRIVATE KEY-----", text, re.S
    )
    if match is None:
        return False
    try:
        blob = base64.b64decode("".join(match.group(1).split()), validate=True)
    except ValueError:
        return False
    magic = b"openssh-key-v1\x00"
    if not blob.startswith(magic) or len(blob) < len(magic) + 4:
        return False
    length = int.from_bytes(blob[len(magic) : len(magic) + 4], "big")
    cipher = blob[len(magic) + 4 : len(magic) + 4 + length]
    return cipher != b"none"


def check_env(backend: Backend, env: Any, field_name: str = "repo_env") -> dict[str, str]:
    """The backend variables given, or ValidationFailed naming every refused one."""
    if env is None:
        return {}
    if not isinstance(env, dict):
        validate.fail(field_name, f"{field_name} must be an object of variable names to values.")
    errors = validate.FieldErrors()
    allowed = ", ".join(backend.names) or "none"
    clean: dict[str, str] = {}
    for name, value in env.items():
        where = f"{field_name}.{validate.echo(name)}"
        variable = backend.variable(name)
        if variable is None:
            errors.add(
                where,
                f"{validate.echo(name)} is not allowed for a {backend.label} repository; "
                f"allowed: {allowed}.",
            )
            continue
        if value is None or value == "":
            continue  # an empty field is no variable
        if not isinstance(value, str):
            errors.add(where, f"{name} must be a string.")
            continue
        limit = MAX_FILE_LENGTH if variable.kind == FILE else MAX_VALUE_LENGTH
        if len(value) > limit:
            errors.add(where, f"{name} must be at most {limit} characters.")
            continue
        reason = validate.unstorable(value)
        if reason is None and variable.kind != FILE and re.search(r"[\r\n]", value):
            reason = "must be one line"
        reason = reason or (_file_problem(name, value) if variable.kind == FILE else None)
        if reason:
            errors.add(where, f"{name} {reason}.")
            continue
        clean[name] = value if variable.kind == FILE else value.strip()
    errors.raise_any()
    return clean


def missing_required(backend: Backend, env: dict[str, str]) -> list[str]:
    return [v.name for v in backend.variables if v.required and not env.get(v.name)]


def check_options(backend: Backend, options: Any) -> list[str]:
    """``-o key=value`` options from the backend's allow-list."""
    if options is None or options == "":
        return []
    if isinstance(options, str):
        options = [line.strip() for line in options.splitlines() if line.strip()]
    if not isinstance(options, list) or not all(isinstance(item, str) for item in options):
        validate.fail("repo_options", "repo_options must be a list of key=value strings.")
    if len(options) > MAX_OPTIONS:
        validate.fail("repo_options", f"At most {MAX_OPTIONS} options.")
    problems = []
    for item in options:
        match = _OPTION.match(item)
        if match is None or validate.unstorable(item):
            problems.append(f"{validate.echo(item)}: write key=value, e.g. s3.region=eu-west-1.")
            continue
        key, value = match.groups()
        if key not in backend.option_keys:
            allowed = ", ".join(backend.option_keys) or "none"
            problems.append(
                f"{key} is not allowed for a {backend.label} repository; allowed: {allowed}."
            )
        elif key.endswith(".connections") and not (value.isdigit() and 1 <= int(value) <= 128):
            problems.append(f"{key} is a number of connections from 1 to 128.")
        elif key == "s3.bucket-lookup" and value not in _BUCKET_LOOKUP:
            problems.append("s3.bucket-lookup is auto, dns or path.")
        elif not re.fullmatch(r"[A-Za-z0-9._-]+", value):
            problems.append(f"{key}: letters, digits, dot, dash and underscore only.")
    if problems:
        raise ValidationFailed(" ".join(problems), fields={"repo_options": problems})
    return list(dict.fromkeys(options))


def check_cacert(value: Any) -> Optional[str]:
    """A PEM bundle of one or more CA certificates, or None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or len(value) > MAX_FILE_LENGTH:
        validate.fail("cacert", f"The CA certificate is PEM text of at most {MAX_FILE_LENGTH} B.")
    if validate.unstorable(value):
        validate.fail("cacert", "The CA certificate must be PEM text.")
    try:
        x509.load_pem_x509_certificates(value.encode())
    except ValueError:
        validate.fail(
            "cacert",
            "The CA certificate must be PEM (-----BEGIN CERTIFICATE----- …) and parse.",
        )
    return value.strip() + "\n"


def cacert_summary(pem: Optional[str]) -> Optional[str]:
    """The subject of the first certificate and its SHA-256 prefix, for display."""
    if not pem:
        return None
    try:
        certificate = x509.load_pem_x509_certificates(pem.encode())[0]
    except ValueError:
        return None
    digest = certificate.fingerprint(hashes.SHA256()).hex()
    return f"{certificate.subject.rfc4514_string()[:200]} (SHA-256 {digest[:16]}…)"


@dataclass
class Settings:
    """A whole repository connection as an operator gave it (validated)."""

    url: str
    username: Optional[str]
    password: str
    env: dict[str, str] = field(default_factory=dict)
    options: list[str] = field(default_factory=list)
    cacert: Optional[str] = None
    insecure_tls: bool = False

    @property
    def backend(self) -> Backend:
        return backend_of(self.url)

    def secrets(self) -> dict:
        """What is sealed: env values, file texts and the CA certificate."""
        return {"env": self.env, "cacert": self.cacert}

    def agent_section(self) -> dict:
        """The sealed ``repository`` section of a ``config.update`` (docs/protocol.md)."""
        backend = self.backend
        files = {k: v for k, v in self.env.items() if backend.variable(k).kind == FILE}
        env = {k: v for k, v in self.env.items() if k not in files}
        section = {
            "url": self.url,
            "password": self.password,
            "env": env,
            "files": files,
            "options": list(self.options),
            "cacert": self.cacert,
            "insecure_tls": self.insecure_tls,
        }
        # Only what is set: a plain repository's section stays as older agents know it.
        return {key: value for key, value in section.items() if value or key == "password"}

    @property
    def env_names(self) -> list[str]:
        return sorted(self.env)


def settings(
    url,
    username,
    password,
    env=None,
    options=None,
    cacert=None,
    insecure_tls=False,
    *,
    errors: Optional[validate.FieldErrors] = None,
) -> Optional[Settings]:
    """Every part checked (each problem under its field); None when ``errors`` got some."""
    own = errors is None
    errors = errors or validate.FieldErrors()
    url, username, password = validate.repository(url, username, password, errors)
    backend = backend_of(url or "")
    if url:
        errors.check(check_url, url)
        errors.check(check_username, backend, username)
    env = errors.check(check_env, backend, env) or {}
    if url and not errors.fields:
        missing = missing_required(backend, env)
        if missing and not (backend.key == "s3" and not env):
            # An S3 repository without any keys may use the host's instance role; one key
            # without the other is a typo.
            for name in missing:
                errors.add(
                    f"repo_env.{name}",
                    f"{backend.variable(name).label} ({name}) is needed for {backend.label}.",
                )
    options = errors.check(check_options, backend, options) or []
    cacert = errors.check(check_cacert, cacert)
    if not isinstance(insecure_tls, bool):
        errors.add("insecure_tls", "insecure_tls must be true or false.")
    if own:
        errors.raise_any()
    if errors.fields:
        return None
    return Settings(url, username, password, env, options, cacert, bool(insecure_tls))


def catalog() -> list[dict]:
    """The table for forms and the API (names, kinds, labels; never values)."""
    return [
        {
            "key": backend.key,
            "label": backend.label,
            "examples": list(backend.examples),
            "help": backend.help,
            "options": list(backend.option_keys),
            "variables": [
                {
                    "name": v.name,
                    "kind": v.kind,
                    "label": v.label,
                    "help": v.help,
                    "required": v.required,
                }
                for v in backend.variables
            ],
        }
        for backend in BACKENDS.values()
    ]


def backend_input(body: dict) -> dict:
    """The backend parts of an API body (``repo_env``, ``repo_options``, ``cacert``,
    ``insecure_tls``), as the services take them."""
    return {
        "repo_env": body.get("repo_env"),
        "repo_options": body.get("repo_options"),
        "cacert": body.get("cacert"),
        "insecure_tls": body.get("insecure_tls", False),
    }


def from_body(body: dict) -> Settings:
    """A repository connection from a JSON body: ``repo_url``, ``repo_username``,
    ``repo_password`` (``url``, ``username``, ``password`` are the older spellings of
    ``PUT …/repository``, still taken) and the backend parts."""

    def pick(name: str):
        new, old = body.get(f"repo_{name}"), body.get(name)
        if new is not None and old is not None and new != old:
            validate.fail(f"repo_{name}", f"Give repo_{name} or {name}, not both.")
        return new if new is not None else old

    return settings_from(pick("url"), pick("username"), pick("password"), backend_input(body))


def settings_from(
    url,
    username,
    password,
    backend: Optional[dict],
    *,
    errors: Optional[validate.FieldErrors] = None,
) -> Optional[Settings]:
    """:func:`settings` with the backend parts as :func:`backend_input` gives them (the
    shape every door hands in: an API body, a form, an enrollment)."""
    backend = backend or {}
    return settings(
        url,
        username,
        password,
        backend.get("repo_env"),
        backend.get("repo_options"),
        backend.get("cacert"),
        backend.get("insecure_tls", False),
        errors=errors,
    )
