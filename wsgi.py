"""WSGI entry point for gunicorn. gevent patches the standard library before anything else
is imported: psycopg, requests and the database pool must see the cooperative sockets."""

from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402

from app import create_app, ticker  # noqa: E402

app = create_app()
# Everything loaded so far (modules, the app, SQLAlchemy's metadata: ~100,000 objects)
# lives as long as the worker: keep it out of every collection. A full collection then
# walks only what requests allocate, and its pause no longer grows with the code base
# (docs/performance.md: "Where the tail comes from").
gc.collect()
gc.freeze()
# Each gunicorn worker imports this module, so each runs a ticker loop; only the one that
# holds the leader lock ticks.
ticker.start(app)
