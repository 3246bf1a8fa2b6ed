"""All models, imported here so Alembic and the app see the whole schema."""

from app.models.alert import (
    Alert,
    AlertOverride,
    AlertRuleSetting,
    Notification,
    NotificationChannel,
    Silence,
)
from app.models.audit import AuditLog
from app.models.host import (
    AgentToken,
    EnrollmentToken,
    Host,
    HostCredential,
    RetiredAgentToken,
    SourceGroup,
)
from app.models.job import TERMINAL_STATUSES, AgentEvent, Command, Job, JobLog
from app.models.rpc import DiffEntry, RpcCall, RpcChunk
from app.models.schedule import RepoMaintenance, Schedule, schedule_source_groups
from app.models.snapshot import RepoStats, Snapshot
from app.models.user import (
    ApiToken,
    LoginFailure,
    Role,
    SetupToken,
    User,
    UserInvite,
    UserSession,
)

__all__ = [
    "TERMINAL_STATUSES",
    "AgentEvent",
    "AgentToken",
    "Alert",
    "AlertOverride",
    "AlertRuleSetting",
    "ApiToken",
    "AuditLog",
    "Command",
    "DiffEntry",
    "EnrollmentToken",
    "Host",
    "HostCredential",
    "Job",
    "JobLog",
    "LoginFailure",
    "Notification",
    "NotificationChannel",
    "RepoMaintenance",
    "RepoStats",
    "RetiredAgentToken",
    "Role",
    "RpcCall",
    "RpcChunk",
    "Schedule",
    "SetupToken",
    "Silence",
    "Snapshot",
    "SourceGroup",
    "User",
    "UserInvite",
    "UserSession",
    "schedule_source_groups",
]
