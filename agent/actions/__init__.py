"""One module per job kind (docs/protocol.md, "Job kinds"): each kind's params, hooks,
restic calls, progress and reports read top to bottom in its own file.

Every action is ``run(job, params) -> JobResult``: ``job`` is the
:class:`~agent.jobcontext.Job` it runs as, ``params`` what
:func:`agent.jobparams.parse_params` made of the command's params.
"""

from typing import Any, Callable, Dict

from agent.actions import (
    backup,
    check,
    diff,
    forget,
    init,
    probe,
    prune,
    restore,
    snapshots,
    stats,
    unlock,
)
from agent.jobcontext import Job, JobResult

Action = Callable[[Job, Any], JobResult]

ACTIONS: Dict[str, Action] = {
    "probe": probe.run,
    "init": init.run,
    "backup": backup.run,
    "snapshots": snapshots.run,
    "forget": forget.run,
    "prune": prune.run,
    "check": check.run,
    "unlock": unlock.run,
    "stats": stats.run,
    "restore": restore.run,
    "diff": diff.run,
}
