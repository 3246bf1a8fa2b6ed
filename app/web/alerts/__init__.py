"""Alert pages: the alert list and one alert, silences, the fleet's rule settings, and the
banner and nav badge every signed-in page shows."""

from flask import Blueprint

bp = Blueprint("alerts", __name__)

from app.web.alerts import routes, rules  # noqa: E402,F401
