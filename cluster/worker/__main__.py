"""``python -m cluster.worker FD``: a worker process (see :mod:`cluster.worker.worker`).

It runs the importable module's ``main``, so ``cluster.worker.worker.CURRENT`` is what
apps see.

``python -m cluster.worker --ranks N CMD ARGS...`` is the fallback ``$CLUSTER_MPI_PREFIX``
of a one-node app with ``ranks_per_node=N`` outside Slurm on a host without ``mpirun``:
it runs N copies of the command at once, rank i with ``CLUSTER_RANK=i`` and
``CLUSTER_NUM_RANKS=N`` in its environment (no MPI wiring: the copies do not know each
other as MPI ranks), and exits with the first non-zero exit code (0 if all succeeded).
"""

from __future__ import annotations

import os
import subprocess
import sys


def run_ranks(argv: list[str]) -> int:
    """Run ``argv[1:]`` as ``int(argv[0])`` local ranks; the exit code described above."""
    count, command = int(argv[0]), argv[1:]
    if count < 1 or not command:
        print("usage: python -m cluster.worker --ranks N CMD [ARGS...]", file=sys.stderr)
        return 2
    procs = [subprocess.Popen(command, env={**os.environ, "CLUSTER_RANK": str(rank),
                                            "CLUSTER_NUM_RANKS": str(count)})
             for rank in range(count)]
    codes = [proc.wait() for proc in procs]
    return next((code for code in codes if code != 0), 0)


if len(sys.argv) > 1 and sys.argv[1] == "--ranks":
    sys.exit(run_ranks(sys.argv[2:]))
else:
    from cluster.worker.worker import main

    main()
