"""Staged tasks on a daemon: tasks the head sent ahead behind a task here (their *input*),
to start the moment the input succeeds, in its slot, with its value (the head's side and
the rules both keep are in :mod:`cluster.head.staging`).

Every task the daemon was sent is *live* here until its result is reported; a staged task
whose input is no longer live (it ended before the staged one came) goes straight back to
the head (``BOUNCED``), as does one whose input did not succeed
(:func:`cluster.policy.staging.heir_runs`).
"""

from __future__ import annotations

from cluster.common.protocol import pb
from cluster.policy.staging import heir_runs


class StagedTasks:
    """The daemon's staged tasks and the ids of the tasks it has not yet reported."""

    def __init__(self) -> None:
        #: Ids of the tasks received and not yet reported (a staged one's input must be).
        self.live: set[int] = set()
        #: Input task id -> the task staged behind it.
        self.behind: dict[int, pb.TaskSpec] = {}
        self._input_of: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.behind)

    def hold(self, spec: pb.TaskSpec) -> bool:
        """Keep `spec` (received, ``after`` set) until its input ends; False when the
        input has ended already (the caller sends it back)."""
        if spec.after not in self.live or spec.after in self.behind:
            return False
        self.behind[spec.after] = spec
        self._input_of[spec.task_id] = spec.after
        return True

    def take(self, task_id: int) -> pb.TaskSpec | None:
        """Take the staged task `task_id` out (cancelled before it started), or None."""
        input_id = self._input_of.pop(task_id, None)
        return self.behind.pop(input_id) if input_id is not None else None

    def ended(self, result: pb.TaskResult) -> tuple[pb.TaskSpec | None, pb.TaskSpec | None]:
        """The task of `result` is being reported: (the task staged behind it, to start
        now with its value, or None; the one to send back, or None)."""
        heir = self.behind.pop(result.task_id, None)
        if heir is None:
            return None, None
        del self._input_of[heir.task_id]
        if not heir_runs(result.status, result.nested):
            return None, heir
        if result.size:
            heir.dep_values.add(id=result.task_id, size=result.size)
        else:
            heir.dep_values.add(id=result.task_id, data=result.data)
        return heir, None
