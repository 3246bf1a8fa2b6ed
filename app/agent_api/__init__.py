"""/api/agent/v1: the endpoints agents call, authenticated by their own bearer token."""

from flask import Blueprint

bp = Blueprint("agent_api", __name__)

from app.agent_api import routes, rpc, runs  # noqa: E402,F401
