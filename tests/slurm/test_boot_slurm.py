"""`clusterctl up` in an allocation starts the daemons' step beside the head's (they read
its address from stdin), except with --tls, where they read the CA from the cluster file
the head writes: both come up and run tasks on every node (over the head's node lane, TLS
with --tls)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT_PATH as ROOT
from helpers import bed_is_up, job_alive, our_processes, wait_until

PY = sys.executable

pytestmark = [pytest.mark.skipif(bool(bed_is_up()), reason=bed_is_up() or "up"),
              pytest.mark.timeout(300)]

DRIVER = textwrap.dedent("""
    import api
    api.init("auto")

    @api.python_app
    def host():
        import os, socket, time
        time.sleep(0.2)
        with open(f"/proc/{os.getppid()}/maps") as f:   # the worker's daemon
            grpc = "cygrpc" in f.read()
        return socket.gethostname(), grpc

    seen = {f.result(timeout=120) for f in [host() for _ in range(8)]}
    print("HOSTS", ",".join(sorted({h for h, _ in seen})))
    print("DAEMON GRPC", sorted({g for _, g in seen}))
    api.shutdown()
""")


@pytest.mark.parametrize("flags", ["", "--tls"])
def test_up_in_an_allocation_with_and_without_tls(tmp_path, flags):
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {**os.environ, "SHOAL_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT),
           "PATH": f"{os.path.dirname(PY)}:{os.environ['PATH']}"}
    script = tmp_path / "job.sh"
    script.write_text(f'set -e\ncd {tmp_path}\necho "JOB $SLURM_JOB_ID"\n'
                      f"clusterctl up --quiet {flags}\npython driver.py\nclusterctl down\n")
    proc = subprocess.run(["salloc", "-N2", "-c2", "bash", str(script)], capture_output=True,
                          text=True, env=env, timeout=240, cwd=tmp_path)
    job = next((line.split()[1] for line in proc.stdout.splitlines()
                if line.startswith("JOB ")), "")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "HOSTS node1,node2" in proc.stdout, proc.stdout
    # The daemons join over the node lane (TLS with --tls) and never load gRPC.
    assert "DAEMON GRPC [False]" in proc.stdout, proc.stdout
    wait_until(lambda: not our_processes(job), 30, "shoal processes to leave the nodes")
    assert not job_alive(job)
