"""WSGI entry point for gunicorn. gevent patches the standard library before anything else
is imported: psycopg, requests and the database pool must see the cooperative sockets."""

from gevent import monkey

monkey.patch_all()

from app import collector, create_app, ticker  # noqa: E402

app = create_app()
# Import-time objects frozen out of the collector, full collections by the clock
# (app/collector.py: thousands of parked polls made them long and frequent).
collector.tune()
# Each gunicorn worker imports this module, so each runs a ticker loop; only the one that
# holds the leader lock ticks.
ticker.start(app)
