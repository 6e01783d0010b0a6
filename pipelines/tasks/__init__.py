"""Task registry: a task is one module `pipelines/tasks/<name>.py` (exposing `TASK`) + one YAML
`configs/tasks/<name>.yaml`. Nothing else lists the tasks: `available_tasks` reads the YAML folder and
`get_task` imports the module by name.

A task YAML holds:
    description: one line
    objective: l2            # optional: the models' training loss, or a preference list [huber, l2]
    options: {...}           # the task's own knobs (e.g. volatility's EWMA lambda)
    training: {...}          # overrides of configs/defaults.yaml blocks (e.g. labels.horizons, walk_forward.purge)
    promotion: {...}         # overrides of configs/promotion.yaml (e.g. min_lift, horizon)
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipelines.tasks.base import Column, Task, TaskError, nested_report

DEFAULT_TASK = "returns"
_NAME = re.compile(r"[a-z][a-z0-9_]*")


class TaskFile(BaseModel):
    """`configs/tasks/<name>.yaml`, parsed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str = ""
    objective: str | list[str] | None = None  # one, or several in preference order (families pick)
    options: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, dict[str, Any]] = Field(default_factory=dict)
    promotion: dict[str, Any] = Field(default_factory=dict)


def available_tasks(configs_dir: Path) -> list[str]:
    """Task names with a YAML in `configs/tasks/`."""
    return sorted(p.stem for p in (Path(configs_dir) / "tasks").glob("*.yaml"))


def read_task_file(configs_dir: Path, name: str) -> TaskFile:
    """Parse `configs/tasks/<name>.yaml`; an unknown name names the known ones."""
    from pipelines.config import _parse, _read_yaml

    if not _NAME.fullmatch(name or ""):
        raise TaskError(f"task name {name!r} is not valid; expected lower-case letters, digits and _")
    path = Path(configs_dir) / "tasks" / f"{name}.yaml"
    if not path.exists():
        raise TaskError(
            f"unknown task {name!r}; known tasks: {available_tasks(configs_dir)} "
            f"(a task is pipelines/tasks/<name>.py + configs/tasks/<name>.yaml)"
        )
    return _parse(TaskFile, _read_yaml(path), path)


def task_class(name: str) -> type[Task]:
    """The `TASK` class of `pipelines/tasks/<name>.py`."""
    try:
        module = importlib.import_module(f"pipelines.tasks.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"pipelines.tasks.{name}":
            raise TaskError(f"task {name!r} has a config but no module pipelines/tasks/{name}.py") from None
        raise
    cls = getattr(module, "TASK", None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TaskError(
            f"pipelines/tasks/{name}.py must define TASK = <a subclass of pipelines.tasks.base.Task>"
        )
    return cls


def get_task(
    name: str,
    horizons: tuple[int, ...] | list[int],
    options: dict[str, Any] | None = None,
    objective: str | list[str] | None = None,
) -> Task:
    """A task instance at `horizons` (normally `TrainingConfig.labels.horizons`)."""
    opts = dict(options or {})
    if objective:
        opts["objective"] = objective
    return task_class(name)(tuple(horizons), opts)


def task_of_model(model: str) -> str:
    """The task of a registered model name `<task>-<SYMBOL>-<interval>` (e.g. "volatility-FILUSDT-1m")."""
    task = str(model).split("-", 1)[0]
    if not _NAME.fullmatch(task) or "-" not in str(model):
        raise TaskError(f"model name {model!r} is not <task>-<SYMBOL>-<interval> (e.g. returns-FILUSDT-1m)")
    return task


def load_task(configs_dir: Path, name: str, horizons: tuple[int, ...] | list[int]) -> Task:
    """The task as configured in `configs/tasks/<name>.yaml`, at `horizons`."""
    tf = read_task_file(configs_dir, name)
    return get_task(name, horizons, tf.options, tf.objective)


__all__ = [
    "DEFAULT_TASK",
    "Column",
    "Task",
    "TaskError",
    "TaskFile",
    "available_tasks",
    "get_task",
    "load_task",
    "nested_report",
    "read_task_file",
    "task_class",
    "task_of_model",
]
