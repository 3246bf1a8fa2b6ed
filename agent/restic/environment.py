"""The fresh environment restic runs with: secrets travel here, never on argv."""

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional
from urllib.parse import quote, unquote, urlsplit

from agent.restic.backends import FILE, PLAIN, backend_of, kind_of

# Passed through from the agent's own environment: what restic needs to find its way out
# (proxies, CA bundles, temp space, locale). Nothing RESTIC_* is inherited: an inherited
# RESTIC_PASSWORD_FILE or RESTIC_PASSWORD_COMMAND would win over our RESTIC_PASSWORD.
_PASS_THROUGH = (
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "LC_ALL",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
)
MIN_MASKED_PLAIN = 8  # shorter plain values (a user name, a region) are not masked
MIN_MASKED_LINE = 8  # a line of a file secret is masked on its own when longer
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def restic_environment(
    credentials: Optional[Mapping[str, Any]],
    cache_dir: Optional[Path] = None,
    base: Optional[Mapping[str, str]] = None,
    progress_fps: float = 1,
) -> Dict[str, str]:
    """A new dict for ``Popen(env=...)``: a few safe variables plus the repository secrets."""
    base = os.environ if base is None else base
    env = {name: base[name] for name in _PASS_THROUGH if name in base}
    env.setdefault("PATH", DEFAULT_PATH)
    # restic prints 60 status lines a second otherwise, even to a pipe.
    env["RESTIC_PROGRESS_FPS"] = f"{progress_fps:g}"
    if cache_dir is not None:
        env["RESTIC_CACHE_DIR"] = str(cache_dir)
    if credentials:
        env["RESTIC_REPOSITORY"] = str(credentials.get("url") or "")
        env["RESTIC_PASSWORD"] = str(credentials.get("password") or "")
    return env


def secrets_of(credentials: Optional[Mapping[str, Any]]) -> List[str]:
    """Strings that must never reach a log: the password, any password inside the URL, the
    backend's secret values (plain ones too when long enough not to hide ordinary words),
    and every file's text with each of its longer lines (restic may echo one line of a key).
    Percent-encoded forms too: a REST password travels inside the URL for old restic."""
    if not credentials:
        return []
    found = []
    password = credentials.get("password")
    if password:
        found.append(str(password))
    url = str(credentials.get("url") or "")
    # rest:https://user:secret@host/ or s3:https://… — restic URLs carry a scheme prefix.
    target = url.split(":", 1)[1] if url.count(":") >= 2 and "://" in url else url
    try:
        url_password = urlsplit(target).password
    except ValueError:
        url_password = None
    if url_password:
        found.extend({url_password, unquote(url_password)})
    backend = backend_of(url)
    lines = []
    for values in (credentials.get("env"), credentials.get("files")):
        for name, value in (values if isinstance(values, Mapping) else {}).items():
            if not isinstance(value, str) or not value:
                continue
            kind = kind_of(backend, name)
            if kind == PLAIN and len(value) < MIN_MASKED_PLAIN:
                continue  # a user name like "backup" must not hide that word everywhere
            found.append(value)
            if kind == FILE:
                lines.extend(line.strip() for line in value.splitlines())
    found += [quote(secret, safe="") for secret in found]
    return found + [line for line in lines if len(line) > MIN_MASKED_LINE]


class Masker:
    """Replaces every known secret in a text with ``******``."""

    REPLACEMENT = "******"

    def __init__(self, secrets: List[str]):
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, self.REPLACEMENT)
        return text
