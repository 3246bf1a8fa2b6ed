from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional, ValidationError

from app.services import validate
from app.services.errors import ValidationFailed


def _absolute_paths(form, field):
    """Report bad paths together with the other field errors."""
    try:
        validate.absolute_paths(field.data or "")
    except ValidationFailed as refused:
        raise ValidationError(refused.message) from None


class AddHostForm(FlaskForm):
    hostname = StringField(
        "Hostname",
        validators=[Optional(), Length(max=255)],
        description="Leave empty to use the name the machine reports when it enrolls.",
    )
    repo_url = StringField(
        "Repository URL",
        validators=[DataRequired(message="Where should this host's backups go?"), Length(max=1000)],
        description="Anything restic accepts: /srv/restic/web-1, sftp:backup@nas:/restic/web-1, "
        "rest:https://backup.example.com/web-1, s3:s3.amazonaws.com/bucket/web-1 …",
    )
    repo_username = StringField(
        "Repository username",
        validators=[Optional(), Length(max=255)],
        description="Only for repositories that need one (e.g. rest-server with --private-repos).",
    )
    repo_password = PasswordField(
        "Repository password",
        validators=[
            DataRequired(message="restic encrypts every repository with a password."),
            Length(max=1024),
        ],
        description="Sealed on the server and on the host; never shown again. Keep a copy in "
        "your password manager: without it the backups cannot be read.",
    )
    paths = TextAreaField(
        "Paths to back up",
        validators=[Optional(), Length(max=20000), _absolute_paths],
        description="One absolute path per line, e.g. /etc and /home. They become the host's "
        "“default” source group; you can change them later.",
    )
