"""``python -m cluster.worker FD``: a worker process (see :mod:`cluster.worker.worker`).

It runs the importable module's ``main``, so ``cluster.worker.worker.CURRENT`` is what
apps see.
"""

from cluster.worker.worker import main

main()
