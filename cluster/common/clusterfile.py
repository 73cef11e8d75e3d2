"""Cluster files: how drivers and ``clusterctl`` find a running cluster and its secret.

``$SHOAL_HOME/clusters/<id>.json``, mode 0600, written atomically. Everything needed to
reach, inspect and tear down a cluster is here, so ``clusterctl down`` still works after
the head has crashed.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

from cluster.common import paths


@dataclass
class ClusterFile:
    """The content of one cluster file."""

    cluster_id: str
    address: str                      # host:port of the head
    secret: str
    state: str = "up"                 # up, down
    host: str = ""                    # where the head runs
    head_pid: int = 0
    unix_socket: str = ""             # for drivers on the head's host
    lane_address: str = ""            # host:port of the driver lane over TCP (not --tls)
    node_lane_address: str = ""       # host:port daemons join over (tcp:...; TLS if --tls)
    runtime_dir: str = ""
    log_dir: str = ""
    slurm_job_id: str = ""
    nodes: list[str] = field(default_factory=list)
    slurm_jobs: list[str] = field(default_factory=list)
    slurm_steps: list[str] = field(default_factory=list)
    created: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """Where this cluster's file lives."""
        return path_for(self.cluster_id)

    def save(self) -> str:
        """Write atomically with mode 0600; returns the path."""
        return write(self)


def clusters_dir() -> str:
    """The directory of this user's cluster files (0700)."""
    path = os.path.join(paths.shoal_home(), "clusters")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def path_for(cluster_id: str) -> str:
    """The cluster file path of `cluster_id`."""
    return os.path.join(clusters_dir(), f"{cluster_id}.json")


def new_local_id() -> str:
    """An id for a cluster started outside Slurm."""
    return f"local-{secrets.token_hex(3)}"


def write(cf: ClusterFile) -> str:
    """Write `cf` atomically, readable by the owner only."""
    path = path_for(cf.cluster_id)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(cf), f, indent=1)
    os.replace(tmp, path)
    return path


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "cluster_id": (str,), "address": (str,), "secret": (str,), "state": (str,),
    "host": (str,), "head_pid": (int,), "unix_socket": (str,), "lane_address": (str,),
    "node_lane_address": (str,), "runtime_dir": (str,),
    "log_dir": (str,), "slurm_job_id": (str,), "nodes": (list,), "slurm_jobs": (list,),
    "slurm_steps": (list,), "created": (int, float), "extra": (dict,),
}
_REQUIRED = ("cluster_id", "address", "secret")


def _check_fields(data: Any) -> dict[str, Any]:
    """The known fields of `data`; ValueError naming the first field of the wrong type."""
    if not isinstance(data, dict):
        kind = {"list": "array", "str": "string", "int": "number", "float": "number",
                "bool": "boolean", "NoneType": "null"}.get(type(data).__name__, "value")
        raise ValueError(f"it holds a JSON {kind}, not a JSON object")
    missing = [name for name in _REQUIRED if name not in data]
    if missing:
        raise ValueError(f"field {missing[0]!r} is missing")
    known = {k: v for k, v in data.items() if k in ClusterFile.__dataclass_fields__}
    for name, value in known.items():
        kinds = _FIELD_TYPES[name]
        if isinstance(value, bool) or not isinstance(value, kinds):
            want = " or ".join(k.__name__ for k in kinds)
            raise ValueError(f"field {name!r} is {value!r}, expected a {want}")
        if (kinds == (list,) and isinstance(value, list)
                and not all(isinstance(item, str) for item in value)):
            raise ValueError(f"field {name!r} is {value!r}, expected a list of strings")
    return known


def read(path: str) -> ClusterFile:
    """Load a cluster file; raises ValueError naming the file (and the field) when it is
    not one."""
    try:
        with open(path) as f:
            data = json.load(f)
        return ClusterFile(**_check_fields(data))
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{path} is not a readable shoal cluster file: {err}") from err


def mark_down(cf: ClusterFile) -> str:
    """Mark `cf` down and blank its secret, keeping the rest (pids, ids) for history and for
    ``clusterctl down``; saves it and returns the path."""
    cf.state = "down"
    cf.secret = ""
    return cf.save()


def all_clusters() -> list[ClusterFile]:
    """Every readable cluster file of this user, newest first."""
    out: list[ClusterFile] = []
    try:
        names = os.listdir(clusters_dir())
    except OSError:
        return out
    for name in names:
        if name.endswith(".json"):
            try:
                out.append(read(os.path.join(clusters_dir(), name)))
            except ValueError:
                continue
    out.sort(key=lambda c: c.created, reverse=True)
    return out


def head_alive(cf: ClusterFile) -> bool:
    """Best effort: False when the head is known dead (its pid is gone on this host)."""
    if cf.state != "up":
        return False
    if cf.head_pid and cf.host == socket.gethostname():
        try:
            os.kill(cf.head_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


def running() -> list[ClusterFile]:
    """This user's clusters that are up and whose head is not known dead."""
    return [c for c in all_clusters() if head_alive(c)]


def find_by_address(address: str) -> ClusterFile | None:
    """The running cluster file whose head is at `address`, if any."""
    for cf in running():
        if cf.address == address:
            return cf
    return None
