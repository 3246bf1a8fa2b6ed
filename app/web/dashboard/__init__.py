from flask import Blueprint

bp = Blueprint("web", __name__)

from app.web.dashboard import routes  # noqa: E402,F401
