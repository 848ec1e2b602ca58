# SPDX-FileCopyrightText: 2026 invenio-wtflow authors.
# SPDX-License-Identifier: MIT

"""Collect the scenarios' results into ``results/<name>.md`` and ``.json``."""

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.engine import make_url

from .common import CONCURRENCY, DB_URI, PAIRS, ROOT, machine, worker_url

ORDER = (
    "B1",
    "B2",
    "B3",
    "B3-polled",
    "B3-floor",
    "B4",
    "B5",
    "B6",
    "B6-loop",
    "B7",
    "B8",
    "B8-respawn",
    "SQL",
)


def git():
    """Commit of the package measured, and whether the package had changes."""

    def out(*args):
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()

    changed = [line[3:] for line in out("status", "--porcelain").splitlines()]
    return {
        "commit": out("rev-parse", "--short", "HEAD"),
        "commit_at_start": os.environ.get("WTFLOW_BENCH_GIT_START"),
        "dirty": any(path.startswith("invenio_wtflow/") for path in changed),
        "scripts_dirty": any(
            path.startswith("benchmarks/")
            and not path.startswith("benchmarks/results/")
            for path in changed
        ),
    }


def package(info):
    """Which commit was measured (two when it moved during the run), and what was not committed."""
    text = f"package at `{info['commit']}`"
    start = info.get("commit_at_start")
    if start and start != info["commit"]:
        text = f"package moved from `{start}` to `{info['commit']}` during the run"
    text += " (with local changes)" if info["dirty"] else ""
    if info.get("scripts_dirty"):
        text += ", benchmark scripts with local changes"
    return text


def b3_pairs(result):
    """B3's own number of pairs, as its result gives them, if B3 ran."""
    if result is None:
        return ""
    return f" (B3: {len(result['ratios'])}, their order reversed every other pair)"


def fmt(value, unit):
    """A figure with its unit, to 3 significant digits."""
    if value is None:
        return "—"
    return f"{value:.3g} {unit}"


def cpu_parts(cpu, side):
    """``worker / postgres / caller = total`` CPU seconds (medians) of a side."""
    med = {k: v["median"] for k, v in cpu[side].items()}
    return (
        f"{med['worker']:.3g} / {med['postgres']:.3g} / "
        f"{med['caller']:.3g} = {med['total']:.3g}"
    )


def main_row(result):
    """One row of the main table."""
    unit = result.get("unit", "")
    table = result.get("table", {})
    engine, baseline = result.get("engine", {}), result.get("baseline", {})
    ratios = ", ".join(f"{r:.2f}" for r in result.get("ratios", []))
    ratio = table.get("ratio") or (
        f"**{result['ratio_median']:.2f}** ({ratios})"
        if "ratio_median" in result
        else ""
    )
    met = {True: "yes", False: "**no**"}.get(result.get("met"), "—")
    return (
        f"| {result['id']} | {result['scenario']} | "
        f"{fmt(engine.get('min'), unit)} / {fmt(engine.get('median'), unit)} | "
        f"{fmt(baseline.get('min'), unit)} / {fmt(baseline.get('median'), unit)} | "
        f"{ratio} | {result.get('target', '')} | {met} |"
    )


def sql_section(result):
    """Tables of statements per task and of the profile."""
    lines = [
        "",
        "### SQL per task (engine side)",
        "",
        result["how"] + ".",
        "",
        "| shape | tasks | worker statements | worker commits | worker rollbacks "
        "| messages published | caller statements (create+start) | caller commits |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for shape in result["shapes"]:
        w, c = shape["worker_per_task"], shape["caller_per_task"]
        lines.append(
            f"| {shape['shape']} | {shape['tasks']} | {w['statements']:.2f} | "
            f"{w['commits']:.2f} | {w['rollbacks']:.2f} | {w['published']:.3f} | "
            f"{c['statements']:.2f} | {c['commits']:.3f} |"
        )
    last = result["shapes"][-1]
    lines += [
        "",
        f"Worker statements per task by kind ({last['shape']}):",
        "",
        "| kind | per task |",
        "| --- | --- |",
    ]
    kinds = last["worker_per_task"]["kinds"]
    for kind, count in sorted(kinds.items(), key=lambda kv: -kv[1]):
        if count >= 0.01:
            lines.append(f"| `{kind}` | {count:.2f} |")
    lines.append("| (other kinds) | < 0.01 each |")
    floor = result.get("core_floor")
    if floor:
        lines += [
            "",
            f"Floor: the same transitions written by hand in Core SQL (claim and "
            f"succeed of {floor['tasks']} tasks, one connection, no Celery): "
            f"{floor['statements_per_task']:.0f} statements and "
            f"{floor['commits_per_task']:.0f} commits per task, "
            f"{floor['ms_per_task']:.2f} ms and {floor['caller_cpu_ms_per_task']:.2f} "
            "ms of Python CPU per task.",
        ]
    profile = result.get("profile")
    if profile:
        lines += [
            "",
            f"### Hot path profile (cProfile in the worker, {profile['tasks']} "
            "engine tasks, all shapes above)",
            "",
            "| part | ms per task (cumulative) |",
            "| --- | --- |",
        ]
        for label, ms in profile["ms_per_task"].items():
            lines.append(f"| {label} | {ms:.2f} |")
    return lines


def main(parts, output):
    """Write ``output``.md and ``output``.json from the ``parts`` directory."""
    parts, output = Path(parts), Path(output)
    results = {}
    for path in parts.glob("*.json"):
        result = json.loads(path.read_text())
        results[result["id"]] = result
    ordered = [results[k] for k in ORDER if k in results]
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": dict(machine(), platform=platform.platform()),
        "git": git(),
        "pairs": PAIRS,
        "concurrency": CONCURRENCY,
        "drivers": {
            "caller": make_url(DB_URI).drivername,
            "worker": make_url(worker_url()).drivername,
        },
        "results": ordered,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(info, indent=2, default=str))
    m = info["machine"]
    lines = [
        f"# invenio-wtflow benchmarks, {info['date']}",
        "",
        f"Machine: {m.get('cpus')} CPUs ({m.get('cpu', '?')}), "
        f"{m.get('memory_gib', '?')} GiB, Python {m.get('python')}; "
        + package(info["git"])
        + f"; {PAIRS} A/B pairs{b3_pairs(results.get('B3'))}; "
        f"{CONCURRENCY} prefork worker processes; "
        f"database drivers: `{info['drivers']['caller']}` (caller), "
        f"`{info['drivers']['worker']}` (worker).",
        "",
        "Engine = invenio-wtflow, baseline = plain Celery (or as stated). "
        "Columns: min / median; ratio = engine / baseline, median of the pairs "
        "(each pair's ratio in brackets).",
        "",
        "| id | scenario | engine | baseline | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in ordered:
        if result["id"] != "SQL":
            lines.append(main_row(result))
    with_cpu = [r for r in ordered if r.get("cpu")]
    if with_cpu:
        lines += [
            "",
            "CPU seconds per run (median; worker processes + PostgreSQL backends "
            "of the benchmark database + the calling process), and the ratio "
            "engine / baseline of the totals, median of the pairs. CPU time "
            "varies much less than elapsed time when other work shares the "
            "machine.",
            "",
            "| id | engine: worker / postgres / caller = total | baseline: worker / "
            "postgres / caller = total | CPU ratio |",
            "| --- | --- | --- | --- |",
        ]
        for result in with_cpu:
            cpu = result["cpu"]
            ratios = ", ".join(f"{r:.2f}" for r in cpu["ratios"])
            lines.append(
                f"| {result['id']} | {cpu_parts(cpu, 'engine')} | "
                f"{cpu_parts(cpu, 'baseline')} | "
                f"**{cpu['ratio_median']:.2f}** ({ratios}) |"
            )
    notes = []
    for result in ordered:
        for note in result.get("notes", []):
            notes.append(f"- {result['id']}: {note}")
        if result.get("experiments"):
            notes.append(f"- {result['id']}: experiments {result['experiments']}")
        load = result.get("loadavg") or {}
        if load.get("end"):
            notes.append(
                f"- {result['id']}: load average (1 min) {load['start'][0]:.2f} "
                f"before, {load['end'][0]:.2f} after"
            )
    if notes:
        lines += ["", "Notes:", ""] + notes
    if "SQL" in results:
        lines += sql_section(results["SQL"])
    profile = parts / "SQL-profile.txt"
    if profile.exists():
        target = output.parent / f"{output.name}-profile.txt"
        target.write_text(profile.read_text())
        lines += ["", f"Full profile: `{target.name}`."]
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m benchmarks.report PARTS_DIR OUTPUT_WITHOUT_SUFFIX")
    main(*sys.argv[1:])
