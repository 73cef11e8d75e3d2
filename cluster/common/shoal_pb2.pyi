from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PYTHON: _ClassVar[Kind]
    BASH: _ClassVar[Kind]
    ACTOR_CREATE: _ClassVar[Kind]
    ACTOR_CALL: _ClassVar[Kind]

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OK: _ClassVar[Status]
    APP_ERROR: _ClassVar[Status]
    WORKER_CRASHED: _ClassVar[Status]
    TIMEOUT: _ClassVar[Status]
    DEPENDENCY_FAILED: _ClassVar[Status]
    BASH_EXIT: _ClassVar[Status]
    UNSCHEDULABLE: _ClassVar[Status]
    CANCELLED: _ClassVar[Status]
    NODE_LOST: _ClassVar[Status]
    OBJECT_LOST: _ClassVar[Status]
    ACTOR_DIED: _ClassVar[Status]
    OBJECT_STORE_FULL: _ClassVar[Status]
    BOUNCED: _ClassVar[Status]
PYTHON: Kind
BASH: Kind
ACTOR_CREATE: Kind
ACTOR_CALL: Kind
OK: Status
APP_ERROR: Status
WORKER_CRASHED: Status
TIMEOUT: Status
DEPENDENCY_FAILED: Status
BASH_EXIT: Status
UNSCHEDULABLE: Status
CANCELLED: Status
NODE_LOST: Status
OBJECT_LOST: Status
ACTOR_DIED: Status
OBJECT_STORE_FULL: Status
BOUNCED: Status

class Resources(_message.Message):
    __slots__ = ("cpus", "gpus", "memory", "custom")
    class CustomEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CPUS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    cpus: float
    gpus: float
    memory: float
    custom: _containers.ScalarMap[str, float]
    def __init__(self, cpus: _Optional[float] = ..., gpus: _Optional[float] = ..., memory: _Optional[float] = ..., custom: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ActorOptions(_message.Message):
    __slots__ = ("name", "detached", "max_restarts", "max_task_retries", "max_concurrency", "class_name", "methods")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DETACHED_FIELD_NUMBER: _ClassVar[int]
    MAX_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    MAX_TASK_RETRIES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    name: str
    detached: bool
    max_restarts: int
    max_task_retries: int
    max_concurrency: int
    class_name: str
    methods: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., detached: _Optional[bool] = ..., max_restarts: _Optional[int] = ..., max_task_retries: _Optional[int] = ..., max_concurrency: _Optional[int] = ..., class_name: _Optional[str] = ..., methods: _Optional[_Iterable[str]] = ...) -> None: ...

class ActorInfo(_message.Message):
    __slots__ = ("actor_id", "class_name", "name", "node", "state", "restarts", "detached", "methods", "message", "route", "max_task_retries")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    DETACHED_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    MAX_TASK_RETRIES_FIELD_NUMBER: _ClassVar[int]
    actor_id: int
    class_name: str
    name: str
    node: str
    state: str
    restarts: int
    detached: bool
    methods: _containers.RepeatedScalarFieldContainer[str]
    message: str
    route: str
    max_task_retries: int
    def __init__(self, actor_id: _Optional[int] = ..., class_name: _Optional[str] = ..., name: _Optional[str] = ..., node: _Optional[str] = ..., state: _Optional[str] = ..., restarts: _Optional[int] = ..., detached: _Optional[bool] = ..., methods: _Optional[_Iterable[str]] = ..., message: _Optional[str] = ..., route: _Optional[str] = ..., max_task_retries: _Optional[int] = ...) -> None: ...

class ActorLookup(_message.Message):
    __slots__ = ("request_id", "name")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    name: str
    def __init__(self, request_id: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class ActorLookupReply(_message.Message):
    __slots__ = ("request_id", "found", "actor")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    found: bool
    actor: ActorInfo
    def __init__(self, request_id: _Optional[int] = ..., found: _Optional[bool] = ..., actor: _Optional[_Union[ActorInfo, _Mapping]] = ...) -> None: ...

class ActorEvent(_message.Message):
    __slots__ = ("actor_id", "died", "message")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    DIED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    actor_id: int
    died: bool
    message: str
    def __init__(self, actor_id: _Optional[int] = ..., died: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("id", "data", "size", "holders", "sources", "nested")
    ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    NESTED_FIELD_NUMBER: _ClassVar[int]
    id: int
    data: bytes
    size: int
    holders: _containers.RepeatedScalarFieldContainer[int]
    sources: _containers.RepeatedScalarFieldContainer[str]
    nested: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, id: _Optional[int] = ..., data: _Optional[bytes] = ..., size: _Optional[int] = ..., holders: _Optional[_Iterable[int]] = ..., sources: _Optional[_Iterable[str]] = ..., nested: _Optional[_Iterable[int]] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("task_id", "fn_id", "fn_blob", "name", "args", "deps", "resources", "max_retries", "walltime", "kind", "stdout", "stdout_mode", "stderr", "stderr_mode", "attempt", "dep_values", "driver_id", "cwd", "num_nodes", "ranks_per_node", "env", "actor_id", "method", "actor", "args_ref", "after", "priority", "retry_handler", "parent_task")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FN_ID_FIELD_NUMBER: _ClassVar[int]
    FN_BLOB_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    DEPS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    WALLTIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDOUT_MODE_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    STDERR_MODE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DEP_VALUES_FIELD_NUMBER: _ClassVar[int]
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    NUM_NODES_FIELD_NUMBER: _ClassVar[int]
    RANKS_PER_NODE_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ARGS_REF_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RETRY_HANDLER_FIELD_NUMBER: _ClassVar[int]
    PARENT_TASK_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    fn_id: bytes
    fn_blob: bytes
    name: str
    args: bytes
    deps: _containers.RepeatedScalarFieldContainer[int]
    resources: Resources
    max_retries: int
    walltime: float
    kind: Kind
    stdout: str
    stdout_mode: str
    stderr: str
    stderr_mode: str
    attempt: int
    dep_values: _containers.RepeatedCompositeFieldContainer[Value]
    driver_id: int
    cwd: str
    num_nodes: int
    ranks_per_node: int
    env: _containers.ScalarMap[str, str]
    actor_id: int
    method: str
    actor: ActorOptions
    args_ref: int
    after: int
    priority: int
    retry_handler: bool
    parent_task: int
    def __init__(self, task_id: _Optional[int] = ..., fn_id: _Optional[bytes] = ..., fn_blob: _Optional[bytes] = ..., name: _Optional[str] = ..., args: _Optional[bytes] = ..., deps: _Optional[_Iterable[int]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., max_retries: _Optional[int] = ..., walltime: _Optional[float] = ..., kind: _Optional[_Union[Kind, str]] = ..., stdout: _Optional[str] = ..., stdout_mode: _Optional[str] = ..., stderr: _Optional[str] = ..., stderr_mode: _Optional[str] = ..., attempt: _Optional[int] = ..., dep_values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ..., driver_id: _Optional[int] = ..., cwd: _Optional[str] = ..., num_nodes: _Optional[int] = ..., ranks_per_node: _Optional[int] = ..., env: _Optional[_Mapping[str, str]] = ..., actor_id: _Optional[int] = ..., method: _Optional[str] = ..., actor: _Optional[_Union[ActorOptions, _Mapping]] = ..., args_ref: _Optional[int] = ..., after: _Optional[int] = ..., priority: _Optional[int] = ..., retry_handler: _Optional[bool] = ..., parent_task: _Optional[int] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_id", "status", "data", "node", "attempt", "run_seconds", "message", "route", "size", "holders", "nested", "worker_pid", "retry_pending")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RUN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    NESTED_FIELD_NUMBER: _ClassVar[int]
    WORKER_PID_FIELD_NUMBER: _ClassVar[int]
    RETRY_PENDING_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    status: Status
    data: bytes
    node: str
    attempt: int
    run_seconds: float
    message: str
    route: str
    size: int
    holders: _containers.RepeatedScalarFieldContainer[int]
    nested: _containers.RepeatedScalarFieldContainer[int]
    worker_pid: int
    retry_pending: bool
    def __init__(self, task_id: _Optional[int] = ..., status: _Optional[_Union[Status, str]] = ..., data: _Optional[bytes] = ..., node: _Optional[str] = ..., attempt: _Optional[int] = ..., run_seconds: _Optional[float] = ..., message: _Optional[str] = ..., route: _Optional[str] = ..., size: _Optional[int] = ..., holders: _Optional[_Iterable[int]] = ..., nested: _Optional[_Iterable[int]] = ..., worker_pid: _Optional[int] = ..., retry_pending: _Optional[bool] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("task_id", "name", "node", "text", "stderr")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    task_id: int
    name: str
    node: str
    text: str
    stderr: bool
    def __init__(self, task_id: _Optional[int] = ..., name: _Optional[str] = ..., node: _Optional[str] = ..., text: _Optional[str] = ..., stderr: _Optional[bool] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "name", "address", "total", "used", "state", "running", "queued", "workers", "done", "pid", "block_id", "draining", "store_address", "store_dir", "store", "prefetched")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    STORE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STORE_DIR_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    PREFETCHED_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    name: str
    address: str
    total: Resources
    used: Resources
    state: str
    running: int
    queued: int
    workers: int
    done: int
    pid: int
    block_id: str
    draining: bool
    store_address: str
    store_dir: str
    store: StoreStats
    prefetched: int
    def __init__(self, node_id: _Optional[int] = ..., name: _Optional[str] = ..., address: _Optional[str] = ..., total: _Optional[_Union[Resources, _Mapping]] = ..., used: _Optional[_Union[Resources, _Mapping]] = ..., state: _Optional[str] = ..., running: _Optional[int] = ..., queued: _Optional[int] = ..., workers: _Optional[int] = ..., done: _Optional[int] = ..., pid: _Optional[int] = ..., block_id: _Optional[str] = ..., draining: _Optional[bool] = ..., store_address: _Optional[str] = ..., store_dir: _Optional[str] = ..., store: _Optional[_Union[StoreStats, _Mapping]] = ..., prefetched: _Optional[int] = ...) -> None: ...

class StoreStats(_message.Message):
    __slots__ = ("objects", "bytes", "spilled", "capacity")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SPILLED_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    objects: int
    bytes: int
    spilled: int
    capacity: int
    def __init__(self, objects: _Optional[int] = ..., bytes: _Optional[int] = ..., spilled: _Optional[int] = ..., capacity: _Optional[int] = ...) -> None: ...

class BlockInfo(_message.Message):
    __slots__ = ("block_id", "job_id", "state", "nodes", "age", "walltime_left", "idle", "reason")
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    AGE_FIELD_NUMBER: _ClassVar[int]
    WALLTIME_LEFT_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    block_id: str
    job_id: str
    state: str
    nodes: int
    age: float
    walltime_left: float
    idle: float
    reason: str
    def __init__(self, block_id: _Optional[str] = ..., job_id: _Optional[str] = ..., state: _Optional[str] = ..., nodes: _Optional[int] = ..., age: _Optional[float] = ..., walltime_left: _Optional[float] = ..., idle: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class DriverHello(_message.Message):
    __slots__ = ("hostname", "pid")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    pid: int
    def __init__(self, hostname: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("driver_id", "cluster_id", "nodes", "block_shape")
    DRIVER_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SHAPE_FIELD_NUMBER: _ClassVar[int]
    driver_id: int
    cluster_id: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    block_shape: Resources
    def __init__(self, driver_id: _Optional[int] = ..., cluster_id: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., block_shape: _Optional[_Union[Resources, _Mapping]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("request_id", "task_id", "force")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    task_id: int
    force: bool
    def __init__(self, request_id: _Optional[int] = ..., task_id: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class CancelReply(_message.Message):
    __slots__ = ("request_id", "task_id", "cancelled", "message")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    task_id: int
    cancelled: bool
    message: str
    def __init__(self, request_id: _Optional[int] = ..., task_id: _Optional[int] = ..., cancelled: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("request_id", "ids")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, request_id: _Optional[int] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GetReply(_message.Message):
    __slots__ = ("request_id", "values")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    values: _containers.RepeatedCompositeFieldContainer[TaskResult]
    def __init__(self, request_id: _Optional[int] = ..., values: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ...) -> None: ...

class DriverToHead(_message.Message):
    __slots__ = ("hello", "submit", "put", "release", "get", "kill_actor", "lookup", "cancel", "retry", "give_up", "leased")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    KILL_ACTOR_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    GIVE_UP_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    hello: DriverHello
    submit: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    put: _containers.RepeatedCompositeFieldContainer[Value]
    release: _containers.RepeatedScalarFieldContainer[int]
    get: _containers.RepeatedCompositeFieldContainer[GetRequest]
    kill_actor: _containers.RepeatedScalarFieldContainer[int]
    lookup: _containers.RepeatedCompositeFieldContainer[ActorLookup]
    cancel: _containers.RepeatedCompositeFieldContainer[CancelRequest]
    retry: _containers.RepeatedScalarFieldContainer[int]
    give_up: _containers.RepeatedScalarFieldContainer[int]
    leased: _containers.RepeatedCompositeFieldContainer[LeasedTask]
    def __init__(self, hello: _Optional[_Union[DriverHello, _Mapping]] = ..., submit: _Optional[_Iterable[_Union[TaskSpec, _Mapping]]] = ..., put: _Optional[_Iterable[_Union[Value, _Mapping]]] = ..., release: _Optional[_Iterable[int]] = ..., get: _Optional[_Iterable[_Union[GetRequest, _Mapping]]] = ..., kill_actor: _Optional[_Iterable[int]] = ..., lookup: _Optional[_Iterable[_Union[ActorLookup, _Mapping]]] = ..., cancel: _Optional[_Iterable[_Union[CancelRequest, _Mapping]]] = ..., retry: _Optional[_Iterable[int]] = ..., give_up: _Optional[_Iterable[int]] = ..., leased: _Optional[_Iterable[_Union[LeasedTask, _Mapping]]] = ...) -> None: ...

class LeasedTask(_message.Message):
    __slots__ = ("spec", "lease", "submitted", "finished", "result")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    spec: TaskSpec
    lease: int
    submitted: float
    finished: float
    result: TaskResult
    def __init__(self, spec: _Optional[_Union[TaskSpec, _Mapping]] = ..., lease: _Optional[int] = ..., submitted: _Optional[float] = ..., finished: _Optional[float] = ..., result: _Optional[_Union[TaskResult, _Mapping]] = ...) -> None: ...

class HeadToDriver(_message.Message):
    __slots__ = ("welcome", "results", "logs", "replies", "nodes", "lookups", "cancel_replies")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REPLIES_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    logs: _containers.RepeatedCompositeFieldContainer[LogLine]
    replies: _containers.RepeatedCompositeFieldContainer[GetReply]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    lookups: _containers.RepeatedCompositeFieldContainer[ActorLookupReply]
    cancel_replies: _containers.RepeatedCompositeFieldContainer[CancelReply]
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ..., logs: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ..., replies: _Optional[_Iterable[_Union[GetReply, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., lookups: _Optional[_Iterable[_Union[ActorLookupReply, _Mapping]]] = ..., cancel_replies: _Optional[_Iterable[_Union[CancelReply, _Mapping]]] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("name", "address", "total", "pid", "block_id", "store_address", "store_dir")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STORE_DIR_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    total: Resources
    pid: int
    block_id: str
    store_address: str
    store_dir: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., total: _Optional[_Union[Resources, _Mapping]] = ..., pid: _Optional[int] = ..., block_id: _Optional[str] = ..., store_address: _Optional[str] = ..., store_dir: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("running", "queued", "workers", "store", "prefetched")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    PREFETCHED_FIELD_NUMBER: _ClassVar[int]
    running: int
    queued: int
    workers: int
    store: StoreStats
    prefetched: int
    def __init__(self, running: _Optional[int] = ..., queued: _Optional[int] = ..., workers: _Optional[int] = ..., store: _Optional[_Union[StoreStats, _Mapping]] = ..., prefetched: _Optional[int] = ...) -> None: ...

class NodeToHead(_message.Message):
    __slots__ = ("register", "results", "logs", "heartbeat", "actor_events", "submit", "copies", "lost", "cancel_replies", "leaving", "nested", "blocked", "unblocked")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_EVENTS_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REPLIES_FIELD_NUMBER: _ClassVar[int]
    LEAVING_FIELD_NUMBER: _ClassVar[int]
    NESTED_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    UNBLOCKED_FIELD_NUMBER: _ClassVar[int]
    register: Register
    results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    logs: _containers.RepeatedCompositeFieldContainer[LogLine]
    heartbeat: Heartbeat
    actor_events: _containers.RepeatedCompositeFieldContainer[ActorEvent]
    submit: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    copies: _containers.RepeatedScalarFieldContainer[int]
    lost: _containers.RepeatedCompositeFieldContainer[TaskResult]
    cancel_replies: _containers.RepeatedCompositeFieldContainer[CancelReply]
    leaving: bool
    nested: _containers.RepeatedCompositeFieldContainer[NestedFrame]
    blocked: _containers.RepeatedScalarFieldContainer[int]
    unblocked: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ..., logs: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., actor_events: _Optional[_Iterable[_Union[ActorEvent, _Mapping]]] = ..., submit: _Optional[_Iterable[_Union[TaskSpec, _Mapping]]] = ..., copies: _Optional[_Iterable[int]] = ..., lost: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ..., cancel_replies: _Optional[_Iterable[_Union[CancelReply, _Mapping]]] = ..., leaving: _Optional[bool] = ..., nested: _Optional[_Iterable[_Union[NestedFrame, _Mapping]]] = ..., blocked: _Optional[_Iterable[int]] = ..., unblocked: _Optional[_Iterable[int]] = ...) -> None: ...

class HeadToNode(_message.Message):
    __slots__ = ("node_id", "tasks", "cancel", "shutdown", "kill_actor", "results", "delete", "heartbeat_interval", "cancel_queued", "nested")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    KILL_ACTOR_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CANCEL_QUEUED_FIELD_NUMBER: _ClassVar[int]
    NESTED_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    cancel: _containers.RepeatedScalarFieldContainer[int]
    shutdown: bool
    kill_actor: _containers.RepeatedScalarFieldContainer[int]
    results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    delete: _containers.RepeatedScalarFieldContainer[int]
    heartbeat_interval: float
    cancel_queued: _containers.RepeatedCompositeFieldContainer[CancelRequest]
    nested: _containers.RepeatedCompositeFieldContainer[NestedFrame]
    def __init__(self, node_id: _Optional[int] = ..., tasks: _Optional[_Iterable[_Union[TaskSpec, _Mapping]]] = ..., cancel: _Optional[_Iterable[int]] = ..., shutdown: _Optional[bool] = ..., kill_actor: _Optional[_Iterable[int]] = ..., results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ..., delete: _Optional[_Iterable[int]] = ..., heartbeat_interval: _Optional[float] = ..., cancel_queued: _Optional[_Iterable[_Union[CancelRequest, _Mapping]]] = ..., nested: _Optional[_Iterable[_Union[NestedFrame, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("node_limit",)
    NODE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    node_limit: int
    def __init__(self, node_limit: _Optional[int] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("cluster_id", "nodes", "tasks_queued", "tasks_running", "tasks_done", "tasks_failed", "drivers", "objects", "object_bytes", "uptime", "head_pid", "blocks", "actors", "nodes_total", "nodes_alive", "total", "used", "nested_records", "tasks_staged", "tasks_prefetched")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    TASKS_QUEUED_FIELD_NUMBER: _ClassVar[int]
    TASKS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    TASKS_DONE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FAILED_FIELD_NUMBER: _ClassVar[int]
    DRIVERS_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    HEAD_PID_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    ACTORS_FIELD_NUMBER: _ClassVar[int]
    NODES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    NODES_ALIVE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    NESTED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    TASKS_STAGED_FIELD_NUMBER: _ClassVar[int]
    TASKS_PREFETCHED_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    tasks_queued: int
    tasks_running: int
    tasks_done: int
    tasks_failed: int
    drivers: int
    objects: int
    object_bytes: int
    uptime: float
    head_pid: int
    blocks: _containers.RepeatedCompositeFieldContainer[BlockInfo]
    actors: _containers.RepeatedCompositeFieldContainer[ActorInfo]
    nodes_total: int
    nodes_alive: int
    total: Resources
    used: Resources
    nested_records: int
    tasks_staged: int
    tasks_prefetched: int
    def __init__(self, cluster_id: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., tasks_queued: _Optional[int] = ..., tasks_running: _Optional[int] = ..., tasks_done: _Optional[int] = ..., tasks_failed: _Optional[int] = ..., drivers: _Optional[int] = ..., objects: _Optional[int] = ..., object_bytes: _Optional[int] = ..., uptime: _Optional[float] = ..., head_pid: _Optional[int] = ..., blocks: _Optional[_Iterable[_Union[BlockInfo, _Mapping]]] = ..., actors: _Optional[_Iterable[_Union[ActorInfo, _Mapping]]] = ..., nodes_total: _Optional[int] = ..., nodes_alive: _Optional[int] = ..., total: _Optional[_Union[Resources, _Mapping]] = ..., used: _Optional[_Union[Resources, _Mapping]] = ..., nested_records: _Optional[int] = ..., tasks_staged: _Optional[int] = ..., tasks_prefetched: _Optional[int] = ...) -> None: ...

class ShutdownRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShutdownReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AllocRequest(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class SealRequest(_message.Message):
    __slots__ = ("object_id", "path", "size")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    object_id: int
    path: str
    size: int
    def __init__(self, object_id: _Optional[int] = ..., path: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class ObjectsRequest(_message.Message):
    __slots__ = ("allocate", "seal", "abort")
    ALLOCATE_FIELD_NUMBER: _ClassVar[int]
    SEAL_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    allocate: AllocRequest
    seal: SealRequest
    abort: str
    def __init__(self, allocate: _Optional[_Union[AllocRequest, _Mapping]] = ..., seal: _Optional[_Union[SealRequest, _Mapping]] = ..., abort: _Optional[str] = ...) -> None: ...

class ObjectsReply(_message.Message):
    __slots__ = ("path", "full", "invalid")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    path: str
    full: str
    invalid: str
    def __init__(self, path: _Optional[str] = ..., full: _Optional[str] = ..., invalid: _Optional[str] = ...) -> None: ...

class NestedFrame(_message.Message):
    __slots__ = ("channel", "payload", "closed", "ended", "failed")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    channel: int
    payload: bytes
    closed: bool
    ended: int
    failed: bool
    def __init__(self, channel: _Optional[int] = ..., payload: _Optional[bytes] = ..., closed: _Optional[bool] = ..., ended: _Optional[int] = ..., failed: _Optional[bool] = ...) -> None: ...
