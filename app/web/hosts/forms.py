from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    IntegerField,
    PasswordField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import Length, Optional

from app.services import backends
from app.services.retention import KEEP_COUNTS
from app.web.forms import place_refusal
from app.web.once import request_id_field

# --- repository backends -----------------------------------------------------------------
# One field per backend variable, named like the variable (the service's refusals name
# ``repo_env.<NAME>``: ``place_refusal(..., prefixes=("repo_env.",))`` puts them here).


def _backend_field(variable: backends.Variable):
    label = variable.label
    if variable.kind == backends.FILE:
        return TextAreaField(label, description=variable.help, render_kw={"rows": 4})
    if variable.kind == backends.SECRET:
        return PasswordField(label, description=variable.help)
    return StringField(label, description=variable.help)


class BackendFields:
    """The backend part of a repository form: its variables, options, CA, insecure TLS."""

    repo_options = TextAreaField(
        "restic options (-o)",
        description="One key=value per line, e.g. s3.region=eu-west-1 or "
        "s3.bucket-lookup=path; only the backend's own options are taken.",
        render_kw={"rows": 2},
    )
    cacert = TextAreaField(
        "CA certificate (PEM)",
        description="For a self-hosted endpoint with its own certificate authority "
        "(restic --cacert).",
        render_kw={"rows": 3},
    )
    insecure_tls = BooleanField(
        "Skip TLS certificate verification (--insecure-tls)",
        description="Insecure: anyone between the host and the repository can read and change "
        "what is sent. Prefer a CA certificate.",
    )

    def variable_fields(self, backend: backends.Backend) -> list:
        return [self._fields[name] for name in backend.names]

    def forget_secrets(self) -> None:
        """A form shown again never carries a secret back: secret and file fields are
        emptied (password fields never render their value anyway)."""
        for backend in backends.BACKENDS.values():
            for variable in backend.variables:
                if variable.kind != backends.PLAIN:
                    self._fields[variable.name].data = ""

    def backend_input(self) -> dict:
        """What the services take: only the variables of the backend the URL names."""
        backend = backends.backend_of((self.repo_url.data or "").strip())
        env = {}
        for name in backend.names:
            value = self._fields[name].data
            if value:
                env[name] = value
        return {
            "repo_env": env,
            "repo_options": self.repo_options.data or None,
            "cacert": self.cacert.data or None,
            "insecure_tls": bool(self.insecure_tls.data),
        }


for _backend in backends.BACKENDS.values():
    for _variable in _backend.variables:
        setattr(BackendFields, _variable.name, _backend_field(_variable))


class AddHostForm(BackendFields, FlaskForm):
    """Carries the input only: the enrollment service checks it and names every problem."""

    hostname = StringField(
        "Hostname",
        description="Leave empty to use the name the machine reports when it enrolls.",
    )
    repo_url = StringField(
        "Repository URL",
        description="Anything restic accepts: /srv/restic/web-1, sftp:backup@nas:/restic/web-1, "
        "rest:https://backup.example.com/web-1, s3:s3.amazonaws.com/bucket/web-1 …",
    )
    repo_username = StringField(
        "Username",
        description="The REST server's user (rest-server's htpasswd); sent as "
        "RESTIC_REST_USERNAME.",
    )
    repo_password = PasswordField(
        "Repository password",
        description="Sealed on the server and on the host; never shown again. Keep a copy in "
        "your password manager: without it the backups cannot be read.",
    )
    paths = TextAreaField(
        "Paths to back up",
        description="One absolute path per line, e.g. /etc and /home. They become the host's "
        "“default” source group; you can change them later.",
    )
    # One per page load: a reload of the answer that showed a token does not mint another.
    request_id = request_id_field()


# --- host page ---------------------------------------------------------------------------
# The rules themselves live in app/services/job_params.py (shared with the JSON API); these
# forms only carry what the operator typed to it and show its messages next to the fields.


class RunForm(FlaskForm):
    """One "Run now" form per job kind; ``prefix`` keeps their field ids apart on one page."""

    class Meta:
        csrf = False  # every POST is CSRF-checked before it reaches a view (app/__init__.py)

    kind = ""
    title = ""
    description = ""
    button = "Run"

    def __init__(self, host=None, **kwargs):
        super().__init__(prefix=self.kind, **kwargs)

    def params(self) -> dict:
        return {}

    def apply_refusal(self, refused) -> str | None:
        """Put the service's field errors (``params.…``) on our fields (see place_refusal)."""
        return place_refusal(self, refused, prefixes=("params.", "policy."))


def _number(label: str, description: str = ""):
    return IntegerField(
        label,
        validators=[Optional()],
        description=description,
        render_kw={"min": 0, "inputmode": "numeric"},
    )


class BackupForm(RunForm):
    kind = "backup"
    title = "Backup"
    description = "Back up one source group now."
    button = "Start backup"
    group = SelectField("Source group", validate_choice=False)
    limit_upload_kib = _number("Upload limit (KiB/s)", "Empty for no limit.")
    limit_download_kib = _number("Download limit (KiB/s)", "Empty for no limit.")

    def __init__(self, host=None, **kwargs):
        super().__init__(host, **kwargs)
        groups = sorted(host.source_groups, key=lambda g: (g.name != "default", g.name))
        self.group.choices = [
            (group.name, f"{group.name} — {', '.join(group.includes) or 'no paths'}")
            for group in groups
        ]

    def params(self) -> dict:
        return {
            "group": self.group.data or "default",
            "limit_upload_kib": self.limit_upload_kib.data,
            "limit_download_kib": self.limit_download_kib.data,
        }


class ForgetForm(RunForm):
    kind = "forget"
    title = "Forget"
    description = (
        "Remove snapshots the retention policy does not keep. The data stays in the "
        "repository until a prune."
    )
    button = "Apply policy"
    keep_last = _number("Last")
    keep_hourly = _number("Hourly")
    keep_daily = _number("Daily")
    keep_weekly = _number("Weekly")
    keep_monthly = _number("Monthly")
    keep_yearly = _number("Yearly")
    keep_within = StringField(
        "Keep within",
        validators=[Optional(), Length(max=32)],
        description="A duration such as 1y6m, 30d or 12h.",
    )
    tags = StringField(
        "Only snapshots tagged",
        validators=[Optional(), Length(max=1000)],
        description="Comma-separated; empty for every snapshot.",
    )
    dry_run = BooleanField(
        "Dry run: only show what would be removed",
        default=True,
    )

    def params(self) -> dict:
        policy = {
            name: getattr(self, name).data
            for name in KEEP_COUNTS
            if getattr(self, name).data is not None
        }
        if self.keep_within.data:
            policy["keep_within"] = self.keep_within.data.strip()
        return {"policy": policy, "tags": self.tags.data or "", "dry_run": bool(self.dry_run.data)}


class PruneForm(RunForm):
    kind = "prune"
    title = "Prune"
    description = "Delete data no snapshot uses any more. Locks the repository while it runs."
    button = "Start prune"


class CheckForm(RunForm):
    kind = "check"
    title = "Check"
    description = "Verify the repository's structure and, optionally, read back part of the data."
    button = "Start check"
    read_data_subset = StringField(
        "Read data subset",
        validators=[Optional(), Length(max=32)],
        description="e.g. 10%, 1/5 or 500M; empty checks the structure only.",
    )

    def params(self) -> dict:
        return {"read_data_subset": self.read_data_subset.data or None}


class UnlockForm(RunForm):
    kind = "unlock"
    title = "Unlock"
    description = "Remove stale locks left behind by a restic that was killed."
    button = "Unlock"
    remove_all = BooleanField(
        "Remove all locks, also those of restic processes that are still running",
        description="Only when you are sure nothing else uses the repository: removing a "
        "live lock can corrupt it.",
    )

    def params(self) -> dict:
        return {"remove_all": bool(self.remove_all.data)}


class StatsForm(RunForm):
    kind = "stats"
    title = "Stats"
    description = "Measure the repository's size (restic stats --mode raw-data)."
    button = "Measure"


class SnapshotsForm(RunForm):
    kind = "snapshots"
    title = "Snapshots"
    description = "Read the snapshot list from the repository again."
    button = "Refresh list"


RUN_FORMS: dict[str, type[RunForm]] = {
    form.kind: form
    for form in (
        BackupForm,
        ForgetForm,
        PruneForm,
        CheckForm,
        UnlockForm,
        StatsForm,
        SnapshotsForm,
    )
}


class RepositoryForm(BackendFields, FlaskForm):
    """New everyday credentials; field names match ``validate.repository``'s messages."""

    repo_url = StringField(
        "Repository URL",
        description="The whole URL, also when only the password changes.",
    )
    repo_username = StringField(
        "Username",
        description="The REST server's user (rest-server's htpasswd); sent as "
        "RESTIC_REST_USERNAME.",
    )
    repo_password = PasswordField(
        "Repository password",
        description="Sealed on the server and on the host; never shown again.",
    )
