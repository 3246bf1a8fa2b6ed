"""Commands the tests send an in-process Agent, and the Agent run on a thread."""

import threading

REPO_PASSWORD = "Tr0ub4dor-&3-repo-secret"


def config_update(command_id="c-config", url="fake:ready"):
    return {
        "command_id": command_id,
        "type": "config.update",
        "delivery_count": 1,
        "job_id": None,
        "attempt_id": None,
        "payload": {"repository": {"url": url, "username": "", "password": REPO_PASSWORD}},
    }


def job_run(job_id, command_id=None, kind="probe", attempt_id="att-1"):
    return {
        "command_id": command_id or f"c-run-{job_id}",
        "type": "job.run",
        "delivery_count": 1,
        "job_id": job_id,
        "attempt_id": attempt_id,
        "payload": {"kind": kind, "params": {}},
    }


class Running:
    """An Agent on a thread, stopped (and checked) at the end of the test."""

    def __init__(self, agent):
        self.agent = agent
        self.stop = threading.Event()
        self.result = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.result["status"] = self.agent.run_forever(self.stop)
        except BaseException as error:
            self.result["error"] = error

    def finish(self, timeout=15):
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "run_forever did not return after stop"
        return self.result
