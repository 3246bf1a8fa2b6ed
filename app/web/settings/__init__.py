from flask import Blueprint

bp = Blueprint("settings", __name__)

from app.web.settings import notifications, routes, users  # noqa: E402,F401
