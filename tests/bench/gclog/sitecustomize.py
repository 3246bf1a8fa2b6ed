"""Logs the server's garbage-collector pauses (``longpoll.py --gc-log`` puts this directory
on the server's PYTHONPATH; nothing in the server changes). One stderr line per full
collection and per younger collection of 5 ms or more:

    [gc] pid=123 at=4567.891 gen=2 ms=212.4 cpu_ms=20.1 collected=97

``at`` is time.monotonic() when the collection started (comparable with the driver's);
``ms`` the wall time of the pause, ``cpu_ms`` the CPU the process spent in it (less when
the operating system ran another process meanwhile: on two busy cores a collection of a
few ms can take tens of ms of wall time).
"""

import gc
import os
import sys
import time

_started = [0.0, 0.0]


def _on_collection(phase, info):
    if phase == "start":
        _started[0] = time.monotonic()
        _started[1] = time.thread_time()
        return
    took = (time.monotonic() - _started[0]) * 1000
    cpu = (time.thread_time() - _started[1]) * 1000
    if info["generation"] == 2 or took >= 5:
        sys.stderr.write(
            f"[gc] pid={os.getpid()} at={_started[0]:.3f} gen={info['generation']} "
            f"ms={took:.1f} cpu_ms={cpu:.1f} collected={info['collected']}\n"
        )
        sys.stderr.flush()


gc.callbacks.append(_on_collection)
