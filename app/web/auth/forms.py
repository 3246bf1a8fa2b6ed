from flask_wtf import FlaskForm
from markupsafe import Markup
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from app.security import PASSWORD_MAX_LENGTH, PASSWORD_RULES
from app.services.users import USERNAME_RULES


class LoginForm(FlaskForm):
    username = StringField(
        "Username", validators=[DataRequired(message="Give your username."), Length(max=64)]
    )
    password = PasswordField(
        "Password",
        validators=[
            DataRequired(message="Give your password."),
            Length(max=PASSWORD_MAX_LENGTH),
        ],
    )


class SetupForm(FlaskForm):
    token = StringField(
        "Setup token",
        validators=[DataRequired(message="Paste the setup token from the server log.")],
        description=Markup(
            "Printed in the server log on start; <code>restic-manager setup-url</code> prints "
            "a new one."
        ),
    )
    username = StringField(
        "Admin username",
        validators=[DataRequired(message="Choose a username."), Length(max=64)],
        description=USERNAME_RULES,
    )
    password = PasswordField(
        "Password",
        validators=[DataRequired(message="Choose a password."), Length(max=PASSWORD_MAX_LENGTH)],
        description=PASSWORD_RULES,
    )
    confirm = PasswordField(
        "Repeat password",
        validators=[
            DataRequired(message="Type the password again."),
            EqualTo("password", message="The two passwords differ."),
        ],
    )


class InviteForm(FlaskForm):
    password = PasswordField(
        "New password",
        validators=[DataRequired(message="Choose a password."), Length(max=PASSWORD_MAX_LENGTH)],
        description=PASSWORD_RULES,
    )
    confirm = PasswordField(
        "Repeat password",
        validators=[
            DataRequired(message="Type the password again."),
            EqualTo("password", message="The two passwords differ."),
        ],
    )
