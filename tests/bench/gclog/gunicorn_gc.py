"""Gunicorn config for ``longpoll.py --server-gc MODE``: an experiment, not the shipped server.

Tries collector settings in the server's worker without touching server code (the driver
passes ``-c`` this file through GUNICORN_CMD_ARGS, which gunicorn reads besides the argv
``restic-manager serve`` builds). MODE comes from BENCH_SERVER_GC:

* ``freeze``: gc.freeze() once the app is loaded (import-time objects leave every collection)
* ``freeze-threshold``: that, plus gc.set_threshold(50_000, 20, 100) (fewer collections)
* ``off``: gc.disable() (diagnosis only: shows how much of the tail is the collector)
"""

import gc
import os
import sys


def post_worker_init(worker):
    mode = os.environ.get("BENCH_SERVER_GC", "")
    if mode in ("freeze", "freeze-threshold"):
        gc.freeze()
    if mode == "freeze-threshold":
        gc.set_threshold(50_000, 20, 100)
    if mode == "off":
        gc.disable()
    sys.stderr.write(
        f"[gc-experiment] mode={mode} enabled={gc.isenabled()} threshold={gc.get_threshold()} "
        f"frozen={gc.get_freeze_count()}\n"
    )
