"""``python -m cluster.node``: see :mod:`cluster.node.main`."""

from cluster.node.main import main

main()
