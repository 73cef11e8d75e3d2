"""shoal's runtime: the head, the per-node daemons, their workers, and the Slurm glue.

Users import :mod:`api`; nothing in this package is a public interface except the
``clusterctl`` command line (:mod:`cluster.cli`).
"""
