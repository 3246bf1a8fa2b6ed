"""Agent downloads and the install script.

Anonymous by design: a host fetches these with curl before it has any credential. They hold
no secrets — the enrollment token travels on the install command line, not in the script.
"""

from __future__ import annotations

import re

from flask import Response, current_app, jsonify, send_file

from app.access import public
from app.config import PROJECT_ROOT
from app.distribution import bp
from app.distribution.build import PYZ_NAME, BuildError, current_build
from app.install_commands import server_url

INSTALL_SCRIPT = PROJECT_ROOT / "install" / "install.sh"
# The lines install.sh carries for the server to fill in (empty in the repository copy).
SERVER_LINE = "DEFAULT_SERVER=''"
MINIMUM_PYTHON_LINE = "MINIMUM_PYTHON='3.9'"
# Pasted into a shell script between single quotes: allow nothing that could end the quoting.
SAFE_URL = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/%-]*)?$")


def _build():
    return current_build(current_app.config["RM_DATA_DIR"])


@bp.errorhandler(BuildError)
def build_failed(error):
    """The server's environment cannot make the agent: say what is missing, not a bare 500."""
    current_app.logger.error("cannot build the agent: %s", error)
    return Response(
        f"The agent cannot be built on this server: {error}\n", 503, mimetype="text/plain"
    )


@bp.get(f"/agent/{PYZ_NAME}")
@public
def agent_pyz():
    build = _build()
    return send_file(
        build.path,
        mimetype="application/octet-stream",
        as_attachment=True,
        download_name=PYZ_NAME,
        etag=build.sha256,
        conditional=True,
    )


@bp.get(f"/agent/{PYZ_NAME}.sha256")
@public
def agent_pyz_sha256():
    build = _build()
    response = Response(f"{build.sha256}  {PYZ_NAME}\n", mimetype="text/plain")
    response.set_etag(build.sha256)
    response.cache_control.no_cache = True
    return response


@bp.get("/agent/version")
@public
def agent_version():
    build = _build()
    response = jsonify(
        {
            "version": build.version,
            "sha256": build.sha256,
            "size": build.size,
            "requires_python": build.requires_python,
            "dependencies": build.dependencies,
        }
    )
    response.cache_control.no_cache = True
    return response


def render_install_script(base_url: str, minimum_python: str) -> str:
    """install.sh with this server's URL and the archive's minimum Python filled in."""
    script = INSTALL_SCRIPT.read_text(encoding="utf-8")
    if base_url and not SAFE_URL.match(base_url):
        # An odd Host header or base URL: the script then insists on --server.
        current_app.logger.warning("install.sh: not pre-filling unusual server URL %r", base_url)
        base_url = ""
    for line, value in ((SERVER_LINE, base_url), (MINIMUM_PYTHON_LINE, minimum_python)):
        if script.count(line) != 1:
            raise RuntimeError(f"install/install.sh must contain the line {line!r} once")
        name = line.split("=", 1)[0]
        script = script.replace(line, f"{name}='{value}'")
    return script


@bp.get("/install/install.sh")
@public
def install_script():
    # Empty when the server does not know its address: the script then asks for --server
    # and says to set RM_BASE_URL.
    script = render_install_script(server_url() or "", _build().requires_python)
    response = Response(script, mimetype="text/x-shellscript")
    response.cache_control.no_store = True  # it names the server the request came through
    return response
