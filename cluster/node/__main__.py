"""``python -m cluster.node``: see :mod:`cluster.node.main`."""

import sys

if "--daemon" in sys.argv[1:]:
    # Before gRPC is imported: forks the zygote that forks this daemon's workers.
    from cluster.node import forkserver

    forkserver.start()

from cluster.node.main import main  # noqa: E402

main()
