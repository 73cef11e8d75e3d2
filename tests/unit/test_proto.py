"""The checked-in generated modules match proto/ (regenerate: python scripts/gen_proto.py)."""

import subprocess
import sys

from helpers import ROOT_PATH as ROOT


def test_generated_modules_are_fresh(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out",
                    str(tmp_path)], check=True, capture_output=True)
    for name in ("shoal_pb2.py", "shoal_pb2.pyi", "shoal_pb2_grpc.py", "status.py"):
        fresh = (tmp_path / name).read_text()
        checked_in = (ROOT / "cluster" / "common" / name).read_text()
        assert fresh == checked_in, \
            f"cluster/common/{name} is stale: run python scripts/gen_proto.py"


def test_status_constants_match_the_enum():
    from cluster.common import status
    from cluster.common.protocol import pb

    names = pb.Status.keys()
    assert names and sorted(status.NAMES.values()) == sorted(names)
    for name in names:
        assert getattr(status, name) == pb.Status.Value(name)
