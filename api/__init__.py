"""shoal's user API: apps, futures, object refs, and connecting to a cluster.

>>> import api
>>> api.init()                                  # doctest: +SKIP
>>> @api.python_app
... def square(x):
...     return x * x
>>> sum(f.result() for f in [square(i) for i in range(10)])   # doctest: +SKIP
285
"""

from __future__ import annotations

import concurrent.futures
import errno
import math
import os
import re
import socket
import sys
from collections.abc import Iterable, Iterator
from typing import Any, cast

from api import _actors, _cache, _cancel, _errors, _futures, _progress, _session
from api._actors import ActorClass, ActorHandle, actor, kill
from api._apps import AUTO_LOGNAME, App, bash_app, python_app
from api._client import Client
from api._errors import (
    ActorDiedError,
    AppTimeout,
    BashExitFailure,
    ConnectionError,
    DependencyError,
    ObjectLostError,
    ObjectStoreFullError,
    ResourceUnavailableError,
    SerializationError,
    ShoalError,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
)
from api._files import DataFuture, File
from api._futures import AppFuture, format_id
from api._join import join_app
from api._memo import CacheKeyError
from api._progress import progress
from api._session import ClusterInfo
from api.executor import Executor
from cluster.common import auth, clusterfile, paths
from cluster.common.protocol import pb, to_dict
from cluster.common.serialization import ObjectRef
from cluster.store import objectformat

__all__ = [
    "AUTO_LOGNAME",
    "ActorClass",
    "ActorDiedError",
    "ActorHandle",
    "App",
    "AppFuture",
    "AppTimeout",
    "BashExitFailure",
    "CacheKeyError",
    "ClusterInfo",
    "ConnectionError",
    "DataFuture",
    "DependencyError",
    "Executor",
    "File",
    "ObjectLostError",
    "ObjectStoreFullError",
    "ObjectRef",
    "ResourceUnavailableError",
    "SerializationError",
    "ShoalError",
    "TaskCancelledError",
    "TaskError",
    "WorkerCrashedError",
    "actor",
    "as_completed",
    "bash_app",
    "cancel",
    "checkpoint",
    "get",
    "get_actor",
    "init",
    "is_initialized",
    "join_app",
    "kill",
    "progress",
    "put",
    "python_app",
    "shutdown",
    "wait",
]

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")


def _targets(cf: clusterfile.ClusterFile) -> list[str]:
    """Where a driver reading `cf` tries to connect, in order: the head's Unix socket (on
    its host), its driver lane over TCP, its gRPC address."""
    targets = []
    if cf.unix_socket and cf.host == socket.gethostname() and os.path.exists(cf.unix_socket):
        targets.append(f"unix:{cf.unix_socket}")
    if cf.lane_address:
        targets.append(f"tcp:{cf.lane_address}")
    targets.append(cf.address)
    return targets


def _job_cluster() -> clusterfile.ClusterFile | None:
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        cf = clusterfile.read(clusterfile.path_for(job))
    except ValueError:
        return None
    return cf if clusterfile.head_alive(cf) else None


def _resolve(address: str | None) -> tuple[list[str], str, clusterfile.ClusterFile | None]:
    if address is None:
        address = os.environ.get("SHOAL_ADDRESS") or None
        if address is None:
            cf = _job_cluster()
            return (_targets(cf), cf.secret, cf) if cf else ([], "", None)
    if address == "auto":
        cf = _job_cluster()
        if cf is None:
            found = clusterfile.running()
            if os.environ.get("SLURM_JOB_ID") or len(found) != 1:
                where = os.environ.get("SLURM_JOB_ID")
                listing = ", ".join(f"{c.cluster_id} at {c.address}" for c in found) or "none"
                scope = f"Slurm job {where}" if where else "this user"
                raise _errors.ConnectionError(
                    f'api.init("auto") needs exactly one running cluster for {scope}; found: '
                    f"{listing} (in {clusterfile.clusters_dir()}). Start one with "
                    "`clusterctl up`, or pass its address or cluster file.")
            cf = found[0]
        return _targets(cf), cf.secret, cf
    if address.endswith(".json") or os.path.isfile(address):
        try:
            cf = clusterfile.read(address)
        except ValueError as err:
            raise _errors.ConnectionError(str(err)) from None
        if cf.state != "up":
            raise _errors.ConnectionError(
                f"cluster {cf.cluster_id} in {address} is {cf.state}; start it with "
                "`clusterctl up`")
        return _targets(cf), cf.secret, cf
    match = _HOST_PORT.match(address)
    if not match:
        raise ValueError(f"api.init(address={address!r}): expected 'host:port', a cluster file "
                         'path, "auto", or None for a local cluster')
    if not 1 <= int(match.group(2)) <= 65535:
        raise ValueError(f"api.init(address={address!r}): port {int(match.group(2))} is out of "
                         "range; a port is 1-65535 (see `clusterctl status` for the head's)")
    cf = clusterfile.find_by_address(address)
    if cf is not None:
        return [address], cf.secret, cf
    secret = os.environ.get(auth.ENV_VAR, "")
    if not secret:
        raise _errors.ConnectionError(
            f"no secret known for the cluster at {address}: no cluster file of yours names that "
            f"address and ${auth.ENV_VAR} is not set. Pass the cluster file's path instead.")
    return [address], secret, None


def _check_count(name: str, value: Any, whole: bool) -> None:
    """ValueError naming `name` unless `value` is None or a non-negative (whole) number."""
    if value is None:
        return
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0 or (whole and value != int(value)):
        kind = "a whole number >= 0" if whole else "a number >= 0"
        raise ValueError(f"api.init({name}={value!r}): expected {kind}")


def check_resources(resources: Any, where: str) -> None:
    """ValueError unless `resources` maps names (strings) to finite amounts >= 0."""
    if resources is None:
        return
    if not isinstance(resources, dict):
        raise ValueError(f"{where}(resources={resources!r}): expected a dict of name: amount, "
                         'e.g. {"licence": 1}')
    for key, value in resources.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}(resources=...): resource name {key!r} must be a "
                             "non-empty string")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}(resources=...): resource {key!r} is {value!r}; an "
                             "amount must be a finite number >= 0")


def _check_init_args(num_cpus: Any, num_gpus: Any, resources: Any, timeout: Any,
                     object_store_memory: Any) -> None:
    _check_count("num_cpus", num_cpus, whole=True)
    _check_count("num_gpus", num_gpus, whole=True)
    _check_count("object_store_memory", object_store_memory, whole=True)
    if object_store_memory == 0:
        raise ValueError("api.init(object_store_memory=0): expected a number of bytes > 0, or "
                         "None for the default (30% of RAM)")
    _check_count("timeout", timeout, whole=False)
    if timeout == 0:
        raise ValueError("api.init(timeout=0): expected a number of seconds > 0")
    check_resources(resources, "api.init")
    for key in ("cpus", "gpus"):
        if resources and key in resources:
            raise ValueError(f"api.init(resources={{{key!r}: ...}}): use num_{key}= instead")


def _refused(targets: list[str], timeout: float) -> tuple[list[str], list[str]]:
    """`targets` split into those worth trying and notes on those that refuse at once
    (nothing listens on the port, or the host name does not resolve)."""
    keep, notes = [], []
    for target in targets:
        match = _HOST_PORT.match(target)
        if target.startswith("unix:") or not match:
            keep.append(target)
            continue
        host, port = match.group(1).strip("[]"), int(match.group(2))
        try:
            with socket.create_connection((host, port), timeout=min(timeout, 5.0)):
                pass
        except ConnectionRefusedError:
            notes.append(f"{target} (connection refused: nothing listens on port {port})")
            continue
        except socket.gaierror as err:
            notes.append(f"{target} (cannot resolve host {host!r}: {err.strerror})")
            continue
        except OSError as err:
            if err.errno in (errno.ECONNREFUSED, errno.EADDRNOTAVAIL):
                notes.append(f"{target} ({err.strerror})")
                continue
        keep.append(target)  # answered, or slow: let the client wait for it
    return keep, notes


def init(address: str | None = None, *, num_cpus: int | None = None,
         num_gpus: int | None = None, resources: dict[str, float] | None = None,
         run_dir: str | None = None, timeout: float = 10.0, log_to_driver: bool = True,
         ignore_reinit_error: bool = False,
         object_store_memory: int | None = None, checkpoint_dir: str | None = None,
         checkpoint_mode: str = "task_exit", checkpoint_period: float = 60.0) -> ClusterInfo:
    """Connect this driver to a cluster, or start a local one.

    ``address``: ``None`` connects to ``$SHOAL_ADDRESS`` or this Slurm job's cluster when
    there is one, and otherwise starts an embedded local cluster (a head and one daemon
    with ``num_cpus`` worker slots, default all CPUs) that stops at :func:`shutdown` or
    exit; ``"host:port"``; the path of a cluster file; or ``"auto"`` (this Slurm job's
    cluster, else this user's only running one). ``run_dir`` is where per-task files such as
    :data:`AUTO_LOGNAME` go (default ``./runinfo/NNN``). ``log_to_driver`` prints apps'
    output here, prefixed with the app, task and node. ``object_store_memory``: the local
    cluster's object store limit in bytes (default 30% of RAM); past it, objects spill to
    disk.

    ``checkpoint_dir``: a directory (on a file system the next job sees) where the results
    of ``cache=True`` apps are kept, so a later driver with the same directory gets them
    without running anything (default ``$SHOAL_CHECKPOINT_DIR``, which ``clusterctl run
    --checkpoint-dir`` sets; None: memoize in this driver only). ``checkpoint_mode``:
    ``"task_exit"`` writes each result as its task finishes, ``"periodic"`` every
    ``checkpoint_period`` seconds and at :func:`shutdown`, ``"manual"`` only at
    :func:`checkpoint`.

    Raises :class:`ConnectionError`, saying what it tried, when the cluster cannot be
    reached within ``timeout`` seconds.

    >>> api.init()                     # doctest: +SKIP
    >>> api.init("auto")               # doctest: +SKIP
    """
    _check_init_args(num_cpus, num_gpus, resources, timeout, object_store_memory)
    _cache.check_options(checkpoint_dir, checkpoint_mode, checkpoint_period)
    with _session.lock():
        current, info = _session.current()
        if current is not None and not current.closed:
            if ignore_reinit_error:
                return info
            raise _errors.ShoalError("api.init() was already called; call api.shutdown() "
                                     "first, or pass ignore_reinit_error=True")
        targets, secret, cf = _resolve(address)
        store = _cache.open_store(checkpoint_dir)  # (a bad directory fails before any start)
        process = None
        embedded = not targets
        log_dir = cf.log_dir if cf else ""
        dashboard = cf.extra.get("dashboard", "") if cf else ""
        if embedded:
            process, started = _session.start_embedded(num_cpus, num_gpus, resources, timeout,
                                                        object_store_memory)
            targets = [f"unix:{started['unix_socket']}", started["address"]]
            secret = started["secret"]
            log_dir = started.get("log_dir", "")
            dashboard = started.get("dashboard", "")
        tls_ca = (cf.extra.get("tls_ca", "") if cf else "") or os.environ.get("SHOAL_TLS_CA", "")
        try:
            if not embedded:
                targets, refused = _refused(targets, timeout)
                if not targets:
                    raise _errors.ConnectionError(
                        "could not connect to a shoal cluster; tried " + "; ".join(refused)
                        + ". Is it up? (`clusterctl status`, or api.init() with no address "
                        "for a local one)")
            client = Client(targets, secret, log_to_driver=log_to_driver, tls_ca=tls_ca)
            client.connect(timeout)
        except _errors.ConnectionError as err:
            _session.stop_embedded(process)
            if cf is not None and cf.host == socket.gethostname() and cf.head_pid and \
                    not paths.pid_alive(cf.head_pid):
                raise _errors.ConnectionError(
                    f"cluster {cf.cluster_id} is gone: its head (pid {cf.head_pid}) is not "
                    f"running. Run `clusterctl down --cluster {cf.cluster_id}` to clean up, "
                    "then `clusterctl up` again") from err
            raise
        except BaseException:
            _session.stop_embedded(process)
            raise
        address = client.address.removeprefix("unix:")
        if embedded:
            address = targets[-1]
        elif cf is not None and address.startswith("tcp:"):
            address = cf.address  # the head's gRPC address, which api.init() takes
        info = ClusterInfo(address=address, cluster_id=client.cluster_id, embedded=embedded,
                           nodes=[{"name": n.name, **to_dict(n.total)}
                                  for n in client.nodes.values()], log_dir=log_dir,
                           dashboard_url=f"{dashboard}?token={auth.dashboard_token(secret)}"
                           if dashboard else "")
        if embedded and dashboard and log_to_driver:
            print(f"shoal: local cluster {client.cluster_id}; dashboard at "
                  f"{info.dashboard_url}", file=sys.stderr, flush=True)
        _cache.configure(client, store, checkpoint_mode, checkpoint_period)
        _session.set_session(client, process, info, run_dir)
        return info


def get_actor(name: str, timeout: float | None = 10.0) -> ActorHandle:
    """The live actor registered under `name` (by any driver of the cluster).

    Raises TypeError when `name` is not a string, ValueError naming what to do when there
    is no such actor.
    """
    if not isinstance(name, str):
        raise TypeError(f"api.get_actor(): the actor name must be a str, as given to "
                        f"MyActor.options(name=...); got {type(name).__name__} {name!r}")
    return _actors.get_actor(name, timeout)


def checkpoint() -> int:
    """Write the finished results of ``cache=True`` apps to the checkpoint directory now,
    and wait for writes in flight; returns how many results this driver has written.

    With ``checkpoint_mode="manual"`` this is the only time they are written; in the other
    modes it makes sure everything finished so far is on disk (e.g. before a long step).

    >>> api.init(checkpoint_dir="ckpt", checkpoint_mode="manual")   # doctest: +SKIP
    >>> results = [simulate(s).result() for s in range(10)]          # doctest: +SKIP
    >>> api.checkpoint()                                             # doctest: +SKIP
    10
    """
    return _cache.checkpoint()


def is_initialized() -> bool:
    """True while connected to a cluster."""
    current, _ = _session.current()
    return current is not None and not current.closed


def shutdown() -> None:
    """Disconnect; an embedded local cluster is stopped. Safe to call twice."""
    _session.end_session()


_session.set_initializer(init)


def put(value: Any) -> ObjectRef:
    """Store `value` in the cluster and return a reference to pass to apps.

    Small values travel with the reference; large ones (over ~100 KB) go into the object
    store of a node (this host's when it runs one) and stay there until no reference is
    left. numpy arrays and Arrow tables are stored as is, and read without a copy by apps on
    that node. Refs and futures inside `value` stay alive as long as it does.

    >>> ref = api.put(numpy.arange(10**8))   # doctest: +SKIP
    >>> total(ref).result()                  # doctest: +SKIP
    4999999950000000
    """
    client = _session.client()
    if isinstance(value, AppFuture | ObjectRef):
        raise TypeError("api.put() of a future or ref: pass it to apps directly")
    object_id = client.new_id()
    try:
        enc = objectformat.encode(value)
        inline = objectformat.inline_bytes(enc, value)
    except ShoalError:
        raise  # e.g. an actor handle of an earlier session inside
    except Exception as err:
        raise SerializationError(f"api.put(): {type(value).__name__} cannot be pickled: "
                                 f"{err}") from err
    if enc.refs:
        _session.check_owned(value)
        client.make_known(enc.refs)  # direct actor calls' results inside
    if inline is not None:
        message = pb.Value(id=object_id, data=inline, nested=enc.refs)
    else:
        message = client.objects.store(object_id, enc)
    client.put(message)
    return ObjectRef(object_id, client)


def _get_refs(refs: list[ObjectRef], timeout: float | None) -> list[Any]:
    client = _session.client()
    for ref in refs:
        _session.check_ref(ref)
    known = [client.put_locations.get(r.id) for r in refs]
    if None not in known:  # our own stored puts: read them where we put them
        return [client.load(result) for result in known]
    results = client.get_values([r.id for r in refs], timeout)
    out = []
    for result in results:
        if result.status != pb.OK:
            raise client.error_for(result, f"object {format_id(result.task_id)}")
        out.append(client.load(result))
    return out


def get(refs: Any, timeout: float | None = None) -> Any:
    """The value of a future or ref, or a list of values for a list of them.

    Raises the app's error (e.g. :class:`TaskError`) for a failed task, ``TimeoutError``
    when ``timeout`` seconds pass first.
    """
    if isinstance(refs, AppFuture):
        return refs.result(timeout)
    if isinstance(refs, ObjectRef):
        return _get_refs([refs], timeout)[0]
    if isinstance(refs, list | tuple):
        waiting = [r for r in refs if isinstance(r, AppFuture) and not r.done()]
        if waiting:  # inside an app: one wait for all (CPUs given back); else a no-op
            timeout = _futures.block(waiting, len(waiting), timeout)
        plain = [r for r in refs if isinstance(r, ObjectRef)]
        fetched = iter(_get_refs(plain, timeout)) if plain else iter(())
        out = []
        for r in refs:
            if isinstance(r, AppFuture):
                out.append(r.result(timeout))
            elif isinstance(r, ObjectRef):
                out.append(next(fetched))
            else:
                raise TypeError(f"api.get() takes futures and refs, got {type(r).__name__}")
        return out
    raise TypeError(f"api.get() takes a future, a ref or a list of them, got "
                    f"{type(refs).__name__}")


def cancel(futures: Any, force: bool = False) -> Any:
    """Cancel a future's task, or a list of futures' (asked all at once); returns whether
    it was cancelled (a list of bools for a list).

    Without ``force``, as ``fut.cancel()``: a task that has not started is taken out
    wherever it waits (this driver's send buffer, the head's queue, a node's backlog, an
    actor's queue); a running one goes on. With ``force=True`` a running task is stopped
    too: its worker and every process it started (a bash app's children included) are
    killed, the worker is replaced and the node's resources are freed. A running actor
    call is never stopped (that would kill the actor for every caller: use
    :func:`kill`). A cancelled task is never retried; its dependents fail with
    :class:`DependencyError`, and its ``result()`` raises :class:`TaskCancelledError`.

    >>> api.cancel(fut)                       # doctest: +SKIP
    True
    >>> api.cancel([a, b], force=True)        # doctest: +SKIP
    [True, False]
    """
    single = isinstance(futures, AppFuture)
    items = [futures] if single else futures
    if not isinstance(items, list | tuple) or not all(isinstance(f, AppFuture) for f in items):
        raise TypeError("api.cancel() takes an app's future or a list of them, got "
                        f"{type(futures).__name__}")
    if not isinstance(force, bool):
        raise TypeError(f"api.cancel(force={force!r}): expected True or False")
    done = _cancel.cancel_futures(list(items), force)
    return done[0] if single else done


def wait(futures: Iterable[Any], num_returns: int = 1,
         timeout: float | None = None, progress: bool = False) -> tuple[list[Any], list[Any]]:
    """Wait until `num_returns` of `futures` are done (or `timeout`); returns (done, pending).

    Order within each list follows the input. Refs made by :func:`put` count as done.
    ``progress=True`` shows a bar of the `num_returns` awaited while it waits (as
    :func:`progress` does).

    >>> done, pending = api.wait(futs, num_returns=len(futs), progress=True)  # doctest: +SKIP
    tasks: 100%|██████████| 1000/1000 [00:12<00:00, 81.3task/s]
    """
    items = list(futures)
    if not 0 <= num_returns <= len(items):
        raise ValueError(f"num_returns must be between 0 and {len(items)}, got {num_returns}")
    waitable = [f for f in items if isinstance(f, concurrent.futures.Future)]
    ready_now = len(items) - len(waitable)
    needed = num_returns - ready_now
    if needed > 0:
        pending = [f for f in waitable if not f.done()]
        already = len(waitable) - len(pending)
        if already < needed:
            timeout = _futures.block(pending, needed - already, timeout)
            bar = _progress.Bar(num_returns, done=ready_now + already) if progress else None
            try:
                for fut in concurrent.futures.as_completed(pending, timeout=timeout):
                    already += 1
                    if bar is not None:
                        bar.step(fut)
                    if already >= needed:
                        break
            finally:
                if bar is not None:
                    bar.close()
    done = [f for f in items if not isinstance(f, concurrent.futures.Future) or f.done()]
    not_done = [f for f in items if isinstance(f, concurrent.futures.Future) and not f.done()]
    return done, not_done


def as_completed(futures: Iterable[AppFuture],
                 timeout: float | None = None) -> Iterator[AppFuture]:
    """Yield futures as they finish (like :func:`concurrent.futures.as_completed`)."""
    items = list(futures)
    if _futures.in_worker():
        return _futures.as_completed_in_worker(items, timeout)
    # The same objects come back; typeshed's signature only knows them as Futures.
    return cast("Iterator[AppFuture]", concurrent.futures.as_completed(items, timeout=timeout))
