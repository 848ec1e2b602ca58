# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Compile a Celery canvas into the nodes and edges of a workflow run.

Each task of the canvas becomes a :class:`Node`. A node's ``input`` says how the
value Celery would pass as its first positional argument is built from the
stored results of upstream nodes:

* ``None``: nothing is passed (first task, immutable signature, bare task);
* ``{"task": 3}``: the result of the node at position 3 (a chain);
* ``{"list": [...]}``: a list of such values, in order (a group or chord header).

Nested groups are flattened into their parent group and a one-member group in a
chain is unrolled, as Celery does.

A bare task (a task object rather than a signature) receives the workflow's
data as keyword arguments. Celery turns a task object inside a ``group`` into
an argument-less signature, so an argument-less signature that receives no
upstream value (the start of the workflow) counts as bare too; anywhere else
it is a signature, and gets the upstream value as Celery would pass it.
"""

import inspect
import json
from dataclasses import dataclass, field
from functools import lru_cache

from celery import Task
from celery import current_app as current_celery_app
from celery.canvas import Signature, _chain, _chord, group

from ..errors import InvalidDataError, InvalidDefinitionError

ROUTING_OPTIONS = (
    "queue",
    "routing_key",
    "exchange",
    "priority",
    "time_limit",
    "soft_time_limit",
    "expires",
)
"""Signature options that are kept and used when an attempt is published."""

BARE_OPTION = "wtflow_bare"
"""Option marking a signature made from a bare task (see ``WorkflowTask``)."""


@dataclass
class Node:
    """One task of a compiled workflow."""

    position: int
    name: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    bare: bool = False
    input: dict = None
    depends_on: list = field(default_factory=list)
    kind: str = None
    key: str = None

    @property
    def signature(self):
        """The JSON document stored in :attr:`~invenio_wtflow.models.TaskRun.signature`."""
        return {
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "bare": self.bare,
            "input": self.input,
        }


@dataclass
class Graph:
    """The nodes of a compiled definition and the reference to its result."""

    nodes: list
    output: dict


def ensure_json(value, what):
    """Return ``value`` as it will be stored: after a JSON round trip.

    Like Celery's JSON serializer, tuples become lists and keys become
    strings; anything else that JSON cannot represent is an error.

    :param value: the value to check.
    :param what: what the value is, for the error message.
    :raises InvalidDataError: when the value cannot be stored as JSON.
    """
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"{what} must be JSON-serialisable: {exc}") from exc


def ensure_object(data, what):
    """Return ``data`` as a JSON object (``{}`` for ``None``), or refuse it.

    :param data: the value to check.
    :param what: what the value is, for the error message.
    :raises InvalidDataError: when it is not a JSON-serialisable dict.
    """
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidDataError(
            f"{what} must be a JSON object (dict), not {type(data).__name__}."
        )
    return ensure_json(data, what)


class _Compiler:
    """Walk a canvas depth first, left to right, numbering its tasks."""

    def __init__(self):
        self.nodes = []

    def compile(self, sig, incoming, deps, in_chain=False):
        """Compile ``sig`` and return ``(output reference, terminal positions)``."""
        if isinstance(sig, Task):
            _check_workflow_task(sig.name)
            return self._task(sig.name, (), {}, {}, True, None, deps)
        if isinstance(sig, _chord):
            header, terminals = self._group(list(sig.tasks), incoming, deps)
            return self.compile(sig.body, header, terminals)
        if isinstance(sig, group):
            members = list(sig.tasks)
            if in_chain and len(members) == 1:
                return self.compile(members[0], incoming, deps, in_chain=True)
            return self._group(members, incoming, deps)
        if isinstance(sig, _chain):
            ref = incoming
            for member in sig.tasks:
                ref, deps = self.compile(member, ref, deps, in_chain=True)
            return ref, deps
        if isinstance(sig, Signature):
            if sig.subtask_type or str(sig.task).startswith("celery."):
                raise InvalidDefinitionError(
                    f"Canvas primitive {sig.subtask_type or sig.task!r} is not supported in a "
                    "workflow definition (use chain, group and chord)."
                )
            _check_workflow_task(sig.task)
            options = dict(sig.options)
            bare = bool(options.pop(BARE_OPTION, False)) or (
                incoming is None and not sig.args and not sig.kwargs
            )
            kept = {k: options[k] for k in ROUTING_OPTIONS if k in options}
            immutable = bare or sig.immutable
            return self._task(
                sig.task,
                sig.args,
                sig.kwargs,
                kept,
                bare,
                None if immutable else incoming,
                deps,
            )
        raise InvalidDefinitionError(
            f"{sig!r} is not a Celery signature, canvas or task."
        )

    def _group(self, members, incoming, deps):
        items, terminals = [], []
        for member in members:
            ref, ends = self.compile(member, incoming, deps)
            if isinstance(member, group) and "list" in ref:
                items.extend(ref["list"])
            else:
                items.append(ref)
            terminals.extend(ends)
        return {"list": items}, (terminals if members else deps)

    def _task(self, name, args, kwargs, options, bare, incoming, deps):
        position = len(self.nodes)
        where = f"Arguments of task {name!r} (node {position})"
        node = Node(
            position=position,
            name=name,
            args=ensure_json(list(args), where),
            kwargs=ensure_json(dict(kwargs), where),
            options=ensure_json(options, where),
            bare=bare,
            input=incoming,
            depends_on=sorted(set(deps)),
        )
        self.nodes.append(node)
        return {"task": position}, [position]


def _check_workflow_task(name):
    """Refuse tasks that are known here but not declared with ``@workflow_task``.

    Such a task would never report to the engine and its row would stay
    ``queued``. A name unknown to this process (registered only in workers)
    is accepted.
    """
    from ..tasks import WorkflowTask

    task = current_celery_app.tasks.get(name)
    if task is not None and not isinstance(task, WorkflowTask):
        raise InvalidDefinitionError(
            f"Task {name!r} is not a workflow task: declare it with @workflow_task."
        )


def compile_canvas(canvas):
    """Compile a canvas (or a bare task) into a :class:`Graph`.

    :param canvas: a Celery signature, chain, group or chord, or a task.
    :raises InvalidDefinitionError: when the canvas holds something else.
    """
    compiler = _Compiler()
    output, _ = compiler.compile(canvas, None, [])
    if not compiler.nodes:
        raise InvalidDefinitionError(f"Definition {canvas!r} has no task.")
    return Graph(nodes=compiler.nodes, output=output)


def input_positions(ref):
    """Return the positions of the nodes a reference reads, in order."""
    if ref is None:
        return []
    if "task" in ref:
        return [ref["task"]]
    return [pos for item in ref["list"] for pos in input_positions(item)]


def resolve(ref, results):
    """Build the value of a reference from stored results by position.

    :param ref: an input or output reference (see the module docstring).
    :param results: mapping of node position to its stored result.
    """
    if "task" in ref:
        return results[ref["task"]]
    return [resolve(item, results) for item in ref["list"]]


def _signature(func):
    """``inspect.signature(func)``, computed once per task function.

    It costs more than the rest of an attempt's arguments, at every call.
    """
    try:
        return _kept_signature(func)
    except TypeError:  # an unhashable callable (or a builtin: raised again)
        return inspect.signature(func)


_kept_signature = lru_cache(maxsize=1024)(inspect.signature)


def call_arguments(func, signature, incoming, data):
    """Return the ``(args, kwargs)`` a node's attempt is called with.

    Celery semantics come first: the upstream value (if any) is prepended to
    the partial arguments. Workflow data then fills keyword parameters: a bare
    task gets all the data its function accepts; a signature gets data only for
    required parameters it would otherwise miss, so a canvas that works in
    plain Celery is called exactly as plain Celery calls it.

    :param func: the task's ``run`` callable.
    :param signature: the stored signature document of the node.
    :param incoming: the resolved upstream value, or ``None`` for no input.
    :param data: the workflow data.
    """
    args = list(signature["args"])
    if signature["input"] is not None:
        args.insert(0, incoming)
    kwargs = dict(signature["kwargs"])
    try:
        described = _signature(func)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return args, kwargs
    params = described.parameters
    if signature["bare"] and any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return args, {**data, **kwargs}
    try:
        bound = described.bind_partial(*args, **kwargs).arguments
    except TypeError:
        return args, kwargs  # let the call raise the real error
    for name, param in params.items():
        if name in bound:
            continue
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            continue
        # Read the data last: it may be loaded on first use.
        if (signature["bare"] or param.default is param.empty) and name in data:
            kwargs[name] = data[name]
    return args, kwargs
