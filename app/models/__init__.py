"""All models, imported here so Alembic and the app see the whole schema."""

from app.models.audit import AuditLog
from app.models.host import Host
from app.models.user import ApiToken, LoginFailure, Role, SetupToken, User, UserSession

__all__ = [
    "ApiToken",
    "AuditLog",
    "Host",
    "LoginFailure",
    "Role",
    "SetupToken",
    "User",
    "UserSession",
]
