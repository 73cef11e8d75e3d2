"""The Parsl seed example (NERSC's "Parsl inside Slurm" page), unchanged but for imports.

A python app and a bash app mapped over 8 tuples; the bash app runs calc_sum.py and its
stdout lands in a per-task file (AUTO_LOGNAME). Run from this directory:

    python argsum.py              # embedded local cluster
    python argsum.py auto         # this Slurm job's (or your only) running cluster
"""

import os
import sys

import api as parsl  # the one change: shoal's API in place of parsl's
from api import AUTO_LOGNAME, bash_app, python_app


@python_app
def app_argsum(a, b, c):
    return a + b + c


@bash_app
def app_argsum_bash(a, b, c, stdout=AUTO_LOGNAME, stderr=AUTO_LOGNAME):
    return f"python calc_sum.py -a {a} -b {b} -c {c}"


def main() -> None:
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    parsl.init(sys.argv[1] if len(sys.argv) > 1 else None)
    items = [(1, 2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12),
             (13, 14, 15), (16, 17, 18), (19, 20, 21), (22, 23, 24)]
    mapped = [app_argsum(*args) for args in items]
    mapped_bash = [app_argsum_bash(*args) for args in items]
    for args, fut, bfut in zip(items, mapped, mapped_bash, strict=True):
        bfut.result()
        with open(bfut.stdout) as f:
            from_bash = f.read().strip()
        print(f"sum{args} = {fut.result()}   (bash app wrote {from_bash} to {bfut.stdout})")
    parsl.shutdown()


if __name__ == "__main__":
    main()
