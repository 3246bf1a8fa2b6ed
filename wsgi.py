"""WSGI entry point for gunicorn. gevent patches the standard library before anything else
is imported: psycopg, requests and the database pool must see the cooperative sockets."""

from gevent import monkey

monkey.patch_all()

from app import create_app, ticker  # noqa: E402

app = create_app()
# Each gunicorn worker imports this module, so each runs a ticker loop; only the one that
# holds the leader lock ticks.
ticker.start(app)
