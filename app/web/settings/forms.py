from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import DataRequired, Length

from app.web.once import request_id_field


class NewTokenForm(FlaskForm):
    name = StringField(
        "Token name",
        validators=[
            DataRequired(message="Give the token a name."),
            Length(max=100, message="At most 100 characters."),
        ],
        description="What will use it, e.g. “nightly report script”. You can revoke it any time.",
    )
    # One per page load: reloading the answer that showed a token does not mint another.
    request_id = request_id_field()
