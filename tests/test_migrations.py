"""One Alembic head, and `upgrade head` gives exactly the schema the models describe."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import Migrate

from app.config import PROJECT_ROOT
from app.extensions import db


def test_exactly_one_head(app):
    config = app.extensions["migrate"].migrate.get_config(str(PROJECT_ROOT / "migrations"))
    heads = ScriptDirectory.from_config(config).get_heads()
    assert len(heads) == 1, f"several Alembic heads: {heads}; merge them"


def test_upgraded_schema_matches_the_models(app):
    # The test database was built by `upgrade head` (see conftest), not by create_all.
    with db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "render_as_batch": True}
        )
        differences = compare_metadata(context, db.metadata)
    assert differences == []


def test_migrate_extension_uses_batch_mode(app):
    assert isinstance(app.extensions["migrate"].migrate, Migrate)
    assert app.extensions["migrate"].configure_args["render_as_batch"] is True
