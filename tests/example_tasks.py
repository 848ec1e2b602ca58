# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Workflow tasks and definitions used by the tests (and the test worker)."""

import json
import os
import time

from celery import chain, chord, current_task, group

from invenio_wtflow import Workflow, workflow_task
from invenio_wtflow.engine.dispatch import INPUT_HEADER, UNFLUSHED_HEADER
from invenio_wtflow.tasks import _header


@workflow_task
def add(x, y):
    """Return the sum of two numbers."""
    return x + y


@workflow_task
def mul(x, y):
    """Return the product of two numbers."""
    return x * y


@workflow_task
def tsum(numbers):
    """Return the sum of a list of numbers."""
    return sum(numbers)


@workflow_task
def echo(*args, **kwargs):
    """Return the positional arguments as a list (and kwargs if any)."""
    return [list(args), kwargs] if kwargs else list(args)


@workflow_task(bind=True)
def extract_metadata(self, video_id):
    """Pretend to extract metadata of a video."""
    self.update_status(message="probing", progress=0.5)
    return {"video_id": video_id, "duration": 42}


@workflow_task
def extract_frames(video_id):
    """Pretend to extract frames of a video."""
    return {"video_id": video_id, "frames": 3}


@workflow_task(bind=True)
def transcode(self, extracted, video_id, quality):
    """Pretend to transcode a video, reading an upstream result."""
    metadata = self.results("extract_metadata")
    return {
        "video_id": video_id,
        "quality": quality,
        "seen": len(extracted),
        "duration": metadata["duration"],
    }


@workflow_task
def publish(video_id):
    """Pretend to publish a video."""
    return f"published {video_id}"


@workflow_task(bind=True, max_retries=3, default_retry_delay=0)
def flaky(self, counter_file):
    """Fail the first time (per counter file), then succeed."""
    count = int(open(counter_file).read()) if os.path.exists(counter_file) else 0
    with open(counter_file, "w") as fp:
        fp.write(str(count + 1))
    if count == 0:
        raise self.retry(exc=RuntimeError("first try fails"), countdown=0)
    return count + 1


@workflow_task
def boom(*args):
    """Always fail."""
    raise ValueError("boom")


@workflow_task
def sleepy(seconds):
    """Sleep, then return the number of seconds slept."""
    time.sleep(seconds)
    return seconds


@workflow_task
def record(*upstream, name, marker_dir):
    """Append a mark to a file per name, to count executions across processes."""
    with open(os.path.join(marker_dir, name), "a") as fp:
        fp.write("x")
    return name


class VideoProcessing(Workflow):
    """The seed's example: a fan-out, a join, then publication."""

    definition = chain(
        group(extract_metadata, extract_frames),
        transcode.s(quality="720p"),
        publish,
    )


add_chain = chain(add.s(1, 2), add.s(3), mul.s(10))
"""``(1 + 2 + 3) * 10``."""

fan_out = chord([add.s(i, i) for i in range(5)], tsum.s())
"""``sum(2 * i for i < 5)``."""

flaky_workflow = chain(flaky.si(), add.si(1, 1))
"""A task retried once by Celery, then a follower."""

failing_workflow = chain(add.s(1, 1), boom.s(), group(add.s(1), add.s(2)), tsum.s())
"""The second task fails: everything after it must be cancelled."""

slow_workflow = chain(sleepy.si(), add.si(1, 1))
"""A long first task (``seconds`` from the data), to stop while it runs."""


JOIN_WIDTH = 200
"""Width of the group in :class:`JoinWorkflow`."""


class JoinWorkflow(Workflow):
    """A wide group joined by one task (``marker_dir`` comes from the data)."""

    definition = chain(
        group(record.s(name=f"member-{i}") for i in range(JOIN_WIDTH)),
        record.s(name="join"),
    )


@workflow_task(bind=True)
def whoami(self):
    """Return what the task knows of its workflow run."""
    return {"id": str(self.workflow.id), "data": self.workflow.data}


@workflow_task
def current():
    """Return Celery's current task and its request's id, as the body sees them."""
    return [current_task.name, current_task.request.id]


@workflow_task(bind=True)
def loses_its_claim(self, then="done"):
    """Lose its claim as a database crash before the claim's flush would, then go on.

    The task is ``queued`` again under the same attempt, never started, as
    a claim committed without waiting for its flush leaves it after such a
    crash; then the body returns ``then``, or, with ``then`` set to
    ``"fail"``, ``"heartbeat"`` or ``"spawn"``, fails, returns what a
    heartbeat returns, or spawns a child and returns its id (with its run's
    data changed in the session, not committed).
    """
    from invenio_db import db

    from invenio_wtflow.models import TaskRun, WorkflowRun

    execution = self.execution
    db.session.query(TaskRun).filter_by(id=execution.task_run_id).update(
        {"status": "queued", "started_at": None, "lease_expires_at": None}
    )
    db.session.commit()
    if then == "fail":
        raise RuntimeError("failed after losing its claim")
    if then == "heartbeat":
        return self.heartbeat()
    if then == "spawn":
        db.session.query(WorkflowRun).filter_by(id=execution.workflow_id).update(
            {"data": {"pending": "kept"}}
        )
        return str(self.spawn("add-chain").id)
    return then


CLAIMS_QUEUE = "wtflow-claims"
"""Queue of the integration tests' worker whose claims commit as a test says."""


@workflow_task(bind=True)
def told_unflushed(self):
    """Return whether the message said its queuing commit may not be flushed."""
    return _header(self.request, UNFLUSHED_HEADER)


@workflow_task
def claim_setting():
    """Return the worker's ``WTFLOW_CLAIM_SYNCHRONOUS_COMMIT``."""
    from flask import current_app

    return current_app.config["WTFLOW_CLAIM_SYNCHRONOUS_COMMIT"]


unflushed_chain = chain(
    *(
        signature.set(queue=CLAIMS_QUEUE)
        for signature in (
            told_unflushed.si(),
            told_unflushed.si(),
            loses_its_claim.si("done"),
            loses_its_claim.si("heartbeat"),
            claim_setting.si(),
        )
    )
)
"""Two tasks telling their message's header, two that lose their claim, and
one telling how the worker's claims commit.

All on :data:`CLAIMS_QUEUE`.
"""


@workflow_task(bind=True)
def told_input(self, *upstream):
    """Return the upstream results and what the message said of them."""
    return [*upstream, _header(self.request, INPUT_HEADER)]


told_input_chain = chain(told_input.s(), told_input.s())
"""A task that takes no input, then one that takes the first's result."""


@workflow_task(bind=True, max_retries=5, default_retry_delay=0)
def twice(self, counter_file):
    """Fail two times (per counter file) through Celery retries, then succeed."""
    count = int(open(counter_file).read()) if os.path.exists(counter_file) else 0
    with open(counter_file, "w") as fp:
        fp.write(str(count + 1))
    if count < 2:
        raise self.retry(exc=RuntimeError(f"try {count + 1} fails"), countdown=0)
    return count + 1


@workflow_task(autoretry_for=(RuntimeError,), max_retries=2, default_retry_delay=0)
def always_retrying():
    """Fail every time; Celery's autoretry gives up after two retries."""
    raise RuntimeError("still broken")


@workflow_task
def fact(n):
    """Compute a factorial by calling itself directly (not as a workflow)."""
    return 1 if n <= 1 else n * fact(n - 1)


@workflow_task(queue="video")
def on_video_queue():
    """A task routed to the ``video`` queue by its own option."""
    return "routed"


@workflow_task
def write_mark(name):
    """Write a row in the test table ``marks`` with the task's session."""
    from invenio_db import db

    db.session.execute(db.text("INSERT INTO marks (name) VALUES (:n)"), {"n": name})
    return name


@workflow_task(lease=2)
def lost_once(marker_dir):
    """Hang the first time (a test kills the process), return at once later."""
    marker = os.path.join(marker_dir, "started")
    if not os.path.exists(marker):
        with open(marker, "w") as fp:
            fp.write(str(os.getpid()))
        time.sleep(120)
    return "recovered"


@workflow_task
def slow_record(*upstream, name, marker_dir, seconds=1):
    """Append a mark to a file per name, then sleep (to be redelivered meanwhile)."""
    with open(os.path.join(marker_dir, name), "a") as fp:
        fp.write("x")
    time.sleep(seconds)
    return name


@workflow_task
def gated_record(*upstream, name, marker_dir):
    """Append a mark, then wait until the test creates ``<name>.go``."""
    with open(os.path.join(marker_dir, name), "a") as fp:
        fp.write("x")
    gate = os.path.join(marker_dir, f"{name}.go")
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    return name


#
# The status page's browser test
#
@workflow_task(bind=True)
def probe(self, video_id, **data):
    """Report progress half-way, then return the video's duration."""
    self.update_status(message="reading streams", progress=0.5)
    return 42


@workflow_task
def thumbnails(video_id, **data):
    """Pretend to cut thumbnails; return how many."""
    return 3


@workflow_task(bind=True)
def encode(self, extracted, video_id, marker_dir, **data):
    """Fail until a file ``fixed`` exists in ``marker_dir`` (a test creates it)."""
    self.update_status(message="encoding 720p", progress=0.4)
    if not os.path.exists(os.path.join(marker_dir, "fixed")):
        raise RuntimeError("encoder crashed")
    return f"{video_id}-720p.mp4"


@workflow_task
def release(video_id, **data):
    """Pretend to publish the encoded video."""
    return f"published {video_id}"


class EncodeVideo(Workflow):
    """Probe and cut thumbnails side by side, encode (until fixed), release."""

    definition = chain(group(probe, thumbnails), encode.s(), release)


#
# Child workflows
#
def _mark(marker_dir, name):
    """Append a mark to a file per name (when a marker directory is given)."""
    if marker_dir:
        with open(os.path.join(marker_dir, name), "a") as fp:
            fp.write("x")


@workflow_task
def transcode_one(video_id, quality, marker_dir=None):
    """Pretend to transcode one quality; ``broken`` fails."""
    _mark(marker_dir, f"child-{quality}")
    if quality == "broken":
        raise ValueError(f"cannot transcode {quality}")
    return f"{video_id}@{quality}"


@workflow_task(bind=True)
def transcode_all(self, video_id, qualities, marker_dir=None, gather=False):
    """Spawn one child per quality found at run time and join them."""
    _mark(marker_dir, "parent")
    children = [
        self.spawn(
            "transcode-one",
            data={"video_id": video_id, "quality": q, "marker_dir": marker_dir},
        )
        for q in qualities
    ]
    return self.join(children, return_exceptions=gather)


@workflow_task
def count_results(results):
    """Return how many results the join gave, and the results."""
    return {"count": len(results), "results": results}


class TranscodeAll(Workflow):
    """One transcode child per quality, then a summary of their results."""

    definition = chain(transcode_all, count_results.s())


@workflow_task(bind=True)
def spawn_by_key(self, first, second):
    """Spawn two children under the same key, with the data given."""
    a = self.spawn("transcode-one", data=first, key="only")
    b = self.spawn("transcode-one", data=second, key="only")
    return self.join([a] if a.id == b.id else [a, b])


@workflow_task(bind=True)
def join_foreign(self, other_id):
    """Try to join a run this task did not spawn."""
    return self.join([other_id])


class WithSubworkflow(Workflow):
    """A registered definition used as a node: ``(1 + 2 + 3) * 10 + 1``."""

    definition = chain(add.si(1, 2), Workflow.subworkflow("add-chain"), add.s(1))


@workflow_task
def mark_child(index, marker_dir):
    """A child's only task: mark its index and return it."""
    _mark(marker_dir, f"child-{index}")
    return index


@workflow_task(bind=True)
def spawn_wide(self, width, marker_dir, at_once=False):
    """Spawn ``width`` children (one by one, or ``at_once``) and join them all."""
    _mark(marker_dir, "parent")
    items = [{"index": i, "marker_dir": marker_dir} for i in range(width)]
    if at_once:
        return self.join(self.spawn_many("mark-child", items))
    return self.join([self.spawn("mark-child", data=item) for item in items])


class SpawnWide(Workflow):
    """A task joining many children, then one task after the join."""

    definition = chain(spawn_wide, record.s(name="after"))


@workflow_task(bind=True, max_retries=2, default_retry_delay=0)
def spawn_then_retry(self, qualities, marker_dir):
    """Spawn children, wait for them to finish, then ask Celery for a retry once.

    The retried execution spawns the same children again: it must get the
    finished ones back, not run them again.
    """
    from invenio_db import db
    from sqlalchemy import select

    from invenio_wtflow.models import WorkflowRun

    children = [
        self.spawn(
            "transcode-one",
            data={"video_id": 1, "quality": q, "marker_dir": marker_dir},
        )
        for q in qualities
    ]
    counter = os.path.join(marker_dir, "parent")
    count = int(open(counter).read()) if os.path.exists(counter) else 0
    with open(counter, "w") as fp:
        fp.write(str(count + 1))
    if count == 0:
        ids = [c.id for c in children]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            statuses = db.session.execute(
                select(WorkflowRun.status).where(WorkflowRun.id.in_(ids))
            ).scalars()
            if all(s == "success" for s in statuses):
                break
            db.session.rollback()
            time.sleep(0.2)
        raise self.retry(exc=RuntimeError("retry after the children"), countdown=0)
    return self.join(children)


@workflow_task(bind=True)
def spawn_batch(self, definition, items, keys=None):
    """Spawn one child of ``definition`` per data item at once, and join them."""
    return self.join(self.spawn_many(definition, items, keys))


@workflow_task(bind=True)
def spawn_each(self, definition, items):
    """Spawn one child of ``definition`` per data item and join them."""
    return self.join([self.spawn(definition, data=item) for item in items])


#
# Concurrency limits
#
@workflow_task
def nap(seconds=0, video_id=None):
    """Sleep a little (a stand-in for real work); return the video id."""
    time.sleep(seconds)
    return video_id


class OneAtATime(Workflow):
    """At most one run at once."""

    definition = nap
    max_runs = 1


def video_key(data):
    """Concurrency key: one run per video at once."""
    return data["video_id"]


@workflow_task(bind=True, lease=2)
def spawn_and_hang(self, qualities, marker_dir):
    """Spawn half the children, then hang the first time (a test kills it)."""
    half = len(qualities) // 2
    children = []
    for i, quality in enumerate(qualities):
        if i == half and not os.path.exists(os.path.join(marker_dir, "started")):
            with open(os.path.join(marker_dir, "started"), "w") as fp:
                fp.write(str(os.getpid()))
            time.sleep(120)
        children.append(
            self.spawn(
                "transcode-one",
                data={"video_id": 1, "quality": quality, "marker_dir": marker_dir},
            )
        )
    return self.join(children)


@workflow_task(bind=True)
def spawn_detached(self, definition, items):
    """Spawn children without joining them; return their ids."""
    return [str(self.spawn(definition, data=item).id) for item in items]


@workflow_task(bind=True)
def join_hex(self):
    """Join a child by its id spelt as 32 hex digits."""
    child = self.spawn("transcode-one", data={"video_id": 1, "quality": "hex"})
    return self.join([child.id.hex])


half_failing = group(boom.si(), add.si(1, 1))
"""One member fails while the other may still be queued."""


#
# Fault injection: stop and restart at random
#
CHAOS_QUEUE = "wtflow-chaos"
"""Queue of :func:`chaos_record`, consumed only by the chaos test's worker."""


@workflow_task(bind=True, queue=CHAOS_QUEUE)
def chaos_record(self, *upstream, name, marker_dir):
    """Append the attempt's Celery id to a file per name: one line per execution.

    Every attempt of a task run has its own Celery id, so a line seen twice is
    one attempt whose body ran twice.
    """
    with open(os.path.join(marker_dir, name), "a") as fp:
        fp.write(f"{self.request.id}\n")
    return name


#
# Workflows that grow their own graph: populate() and callbacks
#
@workflow_task
def build(arch, seconds=0):
    """Pretend to build for one architecture."""
    time.sleep(seconds)
    return {"arch": arch}


@workflow_task
def report(summary):
    """Pretend to publish a comparison report."""
    return f"published {summary}"


class RegressionAnalysis(Workflow):
    """One build per architecture, then a comparison that decides what follows.

    The ``compare`` callback records its summary in the run's data and
    returns; the next ``populate()`` wires the ``report`` task after it.
    """

    def populate(self, ctx):
        """Declare the builds, the comparison and, once decided, the report.

        With a ``marker_dir`` in the data, logs when each call ran.
        """
        started = time.time()
        for arch in ctx.data["architectures"]:
            ctx.add(build, data={"arch": arch}, key=arch)
        compare = ctx.add_callback("compare", after=ctx.all_tasks())
        if "summary" in ctx.data:
            ctx.add(report, data={"summary": ctx.data["summary"]}, after=compare)
        if "marker_dir" in ctx.data:
            time.sleep(0.01)  # widen the window another pass would overlap
            with open(os.path.join(ctx.data["marker_dir"], "populate"), "a") as fp:
                fp.write(f"{started} {time.time()}\n")

    def compare(self, ctx):
        """Compare the builds (a callback: the orchestrator runs it)."""
        if "marker_dir" in ctx.data:
            _mark(ctx.data["marker_dir"], "compare")
        archs = sorted(t.result["arch"] for t in ctx.tasks("build"))
        ctx.update_data(summary=",".join(archs))
        return {"builds": len(archs)}


class GrowFromCallback(Workflow):
    """Static first step, then a callback that adds tasks and a sub-workflow."""

    definition = add.si(1, 2)

    def populate(self, ctx):
        """Call ``fan`` once the static step has succeeded."""
        ctx.add_callback("fan", after=ctx.all_tasks())

    def fan(self, ctx):
        """Add one task per item, a sub-workflow, and a callback after them."""
        first = ctx.result(ctx.all_tasks()[0])
        nodes = [ctx.add(mul, data={"x": first, "y": n}, key=str(n)) for n in (2, 3)]
        nodes.append(
            ctx.add("transcode-one", data={"video_id": first, "quality": "hd"})
        )
        ctx.add_callback("total", after=nodes)
        return first

    def total(self, ctx):
        """Sum what ``fan`` added (reads results by node)."""
        return sum(t.result for t in ctx.tasks("mul"))


class Unsteady(Workflow):
    """A populate() that is not idempotent: its second call adds a node."""

    calls = 0

    def populate(self, ctx):
        """Add a node keyed by a counter (wrong: the key must not change)."""
        Unsteady.calls += 1
        ctx.add(add, data={"x": 1, "y": 1}, key=f"call-{min(Unsteady.calls, 2)}")


class BadCallback(Workflow):
    """A callback that raises."""

    def populate(self, ctx):
        """Add a task and a failing callback after it, and a task after that."""
        first = ctx.add(add, data={"x": 1, "y": 1}, key="one")
        explode = ctx.add_callback("explode", after=first)
        ctx.add(add, data={"x": 2, "y": 2}, key="after", after=explode)

    def explode(self, ctx):
        """Fail."""
        raise ValueError("no comparison today")


class SlowPopulate(Workflow):
    """One node per item; populate() sleeps while ``gate`` is set (tests)."""

    gate = None

    def populate(self, ctx):
        """Add one ``build`` per item and a ``note`` callback per finished one."""
        if SlowPopulate.gate is not None:
            SlowPopulate.gate()
        for item in ctx.data["items"]:
            ctx.add(build, data={"arch": item}, key=item)
        for task in ctx.tasks("build"):
            if task.status == "success":
                ctx.add_callback("note", key=task.key, after=task)

    def note(self, ctx):
        """Record nothing: its presence is what the test counts."""
        return "noted"


class RegressionInside(Workflow):
    """A dynamic workflow run as a sub-workflow of a static one."""

    definition = Workflow.subworkflow("regression", data={"architectures": ["x86"]})


# Delegated tasks
#
FARM = []
"""Jobs the stand-in transcoding farm received in this process, in order."""

FARM_HOOKS = []
"""Called with each job as the farm receives it (to answer at once, say)."""


def _submit_to_farm(job, farm_dir):
    """Keep a job; with a directory, also write it there (for another process)."""
    FARM.append(job)
    for hook in list(FARM_HOOKS):
        hook(job)
    if farm_dir:
        path = os.path.join(farm_dir, f"job-{job['attempt']}.json")
        with open(path + ".tmp", "w") as fp:
            json.dump(job, fp)
        os.replace(path + ".tmp", path)


@workflow_task(bind=True)
def send_to_farm(self, video_id, timeout=None, farm_dir=None, hold=False):
    """Hand a video to the stand-in farm and wait, without a worker, for it.

    With ``hold``, the body returns only once the file ``release`` exists in
    ``farm_dir``: the farm's answer can arrive while the task still runs.
    """
    ticket = self.delegate(timeout=timeout)
    _submit_to_farm(
        {
            "video_id": video_id,
            "url": ticket.url,
            "token": ticket.token,
            "task_id": ticket.task_id,
            "attempt": ticket.attempt,
            "deadline": ticket.deadline.isoformat(),
        },
        farm_dir,
    )
    if hold:
        release = os.path.join(farm_dir, "release")
        deadline = time.monotonic() + 60
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.05)
    return ticket


@workflow_task
def publish_transcoded(transcoded, video_id):
    """Publish what the farm made of a video."""
    return {"video_id": video_id, "published": transcoded}


farm_workflow = chain(send_to_farm, publish_transcoded.s())
"""Delegate the transcoding of ``video_id`` to the farm, then publish it."""


@workflow_task(bind=True)
def delegate_twice(self):
    """Delegate twice and return the first ticket, whose token no longer works."""
    first = self.delegate(timeout=60)
    second = self.delegate(timeout=60)
    FARM.extend({"token": t.token, "attempt": t.attempt} for t in (first, second))
    return first


@workflow_task(bind=True)
def delegate_then_join(self):
    """Delegate, then wait for a child instead: the token cannot complete it."""
    ticket = self.delegate(timeout=60)
    FARM.append({"token": ticket.token, "url": ticket.url, "task_id": ticket.task_id})
    return self.join(self.spawn("transcode-one", data={"video_id": 1, "quality": "j"}))
