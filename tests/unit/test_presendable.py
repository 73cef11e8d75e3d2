"""Which tasks a daemon may send to a busy worker ahead of time (staged chain links and
prefetched tasks alike): nothing to set up per start."""

from __future__ import annotations

from cluster.common.protocol import fill, pb
from cluster.node.staged import presendable


def _spec(**resources: float) -> pb.TaskSpec:
    spec = pb.TaskSpec(kind=pb.PYTHON)
    fill(spec.resources, resources)
    return spec


def test_a_plain_python_task_is_presendable_and_custom_resources_do_not_matter():
    assert presendable(_spec(cpus=1.0))
    assert presendable(_spec(cpus=1.0, licence=1.0))


def test_gpus_walltime_output_files_env_and_stored_arguments_are_not():
    assert not presendable(_spec(cpus=1.0, gpus=0.5))
    for field, value in (("walltime", 5.0), ("stdout", "out.txt"), ("args_ref", 7),
                         ("parent_task", 3)):
        spec = _spec(cpus=1.0)
        setattr(spec, field, value)
        assert not presendable(spec), field
    spec = _spec(cpus=1.0)
    spec.env["A"] = "1"
    assert not presendable(spec)
    spec = _spec(cpus=1.0)
    spec.dep_values.add(id=9, size=1 << 20)
    assert not presendable(spec)
    assert not presendable(pb.TaskSpec(kind=pb.BASH))
