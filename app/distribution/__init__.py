"""Agent distribution: the single-file agent (zipapp) and the install script."""

from flask import Blueprint

bp = Blueprint("distribution", __name__)

from app.distribution import routes  # noqa: E402,F401
