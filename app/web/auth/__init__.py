from flask import Blueprint

bp = Blueprint("auth", __name__)

from app.web.auth import invite, oidc, routes  # noqa: E402,F401
