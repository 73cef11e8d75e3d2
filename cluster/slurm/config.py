"""Autoscaling configuration: the keys HPC users know from Parsl's SlurmProvider.

Read from ``clusterctl up --config cluster.toml`` and/or the same keys as flags
(``--nodes-per-block 2``). Unknown keys and bad values are refused with a message naming
the key.

.. code-block:: toml

    partition = "debug"
    nodes_per_block = 1
    cores_per_node = 4
    walltime = "01:00:00"
    worker_init = "module load python; source ~/venv/bin/activate"
    min_blocks = 0
    max_blocks = 4
    max_idletime = 120
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


class ConfigError(ValueError):
    """A configuration key is unknown or has a bad value; the message names it."""


@dataclass
class ScalingConfig:
    """How blocks (sbatch jobs that join daemons to the head) are shaped and scaled."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    nodes_per_block: int = 1
    cores_per_node: int = 1
    mem_per_node: float = 0.0          # GB; 0 = Slurm's default
    gpus_per_node: int = 0
    walltime: str = "00:30:00"
    scheduler_options: str = ""        # extra lines for the sbatch script ("#SBATCH ...")
    worker_init: str = ""              # shell lines run before the daemons start
    init_blocks: int = 1
    min_blocks: int = 0
    max_blocks: int = 1
    parallelism: float = 1.0
    max_idletime: float = 120.0        # seconds a block may sit idle before it is drained
    interface: str = ""
    strategy_period: float = 1.0       # seconds between scaling decisions
    drain_margin: float = 60.0         # drain a block this long before its walltime ends
    python: str = ""                   # interpreter on the nodes (default: ours)

    def node_resources(self) -> dict[str, float]:
        """The resources one node of a block brings."""
        res: dict[str, float] = {"cpus": float(self.cores_per_node)}
        if self.gpus_per_node:
            res["gpus"] = float(self.gpus_per_node)
        if self.mem_per_node:
            res["memory"] = self.mem_per_node * 1e9
        return res


KEYS = {f.name: f for f in fields(ScalingConfig)}


def parse_walltime(value: str) -> float:
    """Slurm time "[D-]HH:MM:SS", "MM:SS" or minutes -> seconds.

    >>> parse_walltime("01:30:00"), parse_walltime("2-00:00:00"), parse_walltime("45")
    (5400.0, 172800.0, 2700.0)
    """
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ConfigError(f"walltime: {value!r} is not a Slurm time like 01:00:00")
    days, a, b, c = m.groups()
    if b is None:
        seconds = int(a) * 60                       # plain minutes
    elif c is None:
        seconds = int(a) * 60 + int(b)              # MM:SS
    else:
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    return float(seconds + int(days or 0) * 86400)


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(value: str) -> int:
    """``"8G"``, ``"512M"``, ``"1.5T"`` or a plain number of bytes -> bytes.

    >>> parse_bytes("512M")
    536870912
    """
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    try:
        amount = float(text[:-1] if unit else text)
    except ValueError:
        raise ValueError(f"{value!r} is not a size; write e.g. 8G, 512M or 1000000") from None
    if amount <= 0:
        raise ValueError(f"{value!r}: a size must be positive")
    return int(amount * _UNITS[unit])


def _coerce(key: str, value: Any) -> Any:
    kind = KEYS[key].type
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            out: Any = int(value)
        elif kind == "float":
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
        else:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError
            out = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {kind}, got {value!r}") from None
    return out


def validate(cfg: ScalingConfig) -> ScalingConfig:
    """Check ranges and relations; raises ConfigError naming the key."""
    for key in ("nodes_per_block", "cores_per_node", "max_blocks"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be at least 1, got {getattr(cfg, key)}")
    for key in ("gpus_per_node", "init_blocks", "min_blocks", "mem_per_node", "max_idletime",
                "drain_margin"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {getattr(cfg, key)}")
    if cfg.min_blocks > cfg.max_blocks:
        raise ConfigError(f"min_blocks ({cfg.min_blocks}) is larger than max_blocks "
                          f"({cfg.max_blocks})")
    if cfg.init_blocks > cfg.max_blocks:
        raise ConfigError(f"init_blocks ({cfg.init_blocks}) is larger than max_blocks "
                          f"({cfg.max_blocks})")
    if not 0 < cfg.parallelism <= 1:
        raise ConfigError(f"parallelism: must be in (0, 1], got {cfg.parallelism}")
    if cfg.strategy_period <= 0:
        raise ConfigError(f"strategy_period: must be > 0, got {cfg.strategy_period}")
    parse_walltime(cfg.walltime)
    for line in cfg.scheduler_options.splitlines():
        if line.strip() and not line.strip().startswith("#SBATCH"):
            raise ConfigError(f"scheduler_options: every line must start with #SBATCH, "
                              f"got {line.strip()!r}")
    return cfg


def from_mapping(values: Mapping[str, Any], base: ScalingConfig | None = None) -> ScalingConfig:
    """A validated config: `base` (or defaults) updated with `values`."""
    cfg = dataclasses.replace(base) if base is not None else ScalingConfig()
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in KEYS:
            close = [k for k in KEYS if k.split("_")[0] == name.split("_")[0]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown key {key!r}{hint}; known keys: {', '.join(KEYS)}")
        setattr(cfg, name, _coerce(name, value))
    return validate(cfg)


def load(path: str | None, overrides: Mapping[str, Any] | None = None) -> ScalingConfig:
    """Read a TOML file (if given), then apply `overrides` (flags)."""
    values: dict[str, Any] = {}
    if path:
        import tomllib  # only here: every `clusterctl` command imports this module (~2 ms)

        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as err:
            raise ConfigError(f"cannot read {path}: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path} is not valid TOML: {err}") from None
        values.update(data.get("shoal", data) if isinstance(data.get("shoal"), dict) else data)
    values.update(overrides or {})
    return from_mapping(values)


def to_dict(cfg: ScalingConfig) -> dict[str, Any]:
    """Plain dict (for passing to the head as JSON)."""
    return dataclasses.asdict(cfg)
