"""Turn ``ctx.results`` into the printed table, the target verdicts and the JSON document."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from common import fmt_rate, fmt_ratio

# Targets from the issue: ratio of hydramq to the baseline named, measured in the same run.
# Informational: the bench reports PASS/MISS and never fails on a miss.
TARGETS: list[tuple[str, str, str, float]] = [
    ("drain", "S1", "ratio_to_lease", 0.80),
    ("drain", "S2", "ratio_to_lease", 0.75),
    ("drain", "S3", "ratio_to_lease", 0.25),
    ("enqueue", "single", "ratio_to_plain", 0.60),
    ("enqueue", "batch", "ratio_to_plain", 0.55),
]


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for section, key, field, target in TARGETS:
        value = results.get(section, {}).get(key, {}).get(field)
        rows.append({"metric": f"{section} {key} {field}", "target": target,
                     "value": None if value is None else round(value, 3),
                     "verdict": "n/a" if value is None else ("PASS" if value >= target
                                                            else "MISS")})
    # Phases may judge their own targets: a "targets" list of rows like the ones above, with
    # "op" ">=" or "<=" (driver_phases.py, ablation.py).
    for entry in results.values():
        if isinstance(entry, dict) and isinstance(entry.get("targets"), list):
            rows.extend(entry["targets"])
    return rows


def _target_for(section: str, key: str) -> float | None:
    return next((t for s, k, _, t in TARGETS if s == section and k == key), None)


def _verdict(value: float | None, target: float | None) -> str:
    if target is None:
        return ""
    if value is None:
        return f">= {target:.2f}  n/a"
    return f">= {target:.2f}  {'PASS' if value >= target else 'MISS'}"


def _rate(medians: dict[str, float | None], system: str, incomplete: list[str]) -> str:
    return fmt_rate(medians.get(system)) + ("*" if system in incomplete else "")


def render(results: dict[str, Any]) -> str:
    lines: list[str] = []
    incomplete = False
    drain = results.get("drain")
    if drain:
        lines.append("Drain throughput (msgs/s, median of rounds; 2 procs x 10 conns, batch 100, "
                     "fsync on)")
        hdr = (f"{'shape':<28}{'hydramq':>10}{'leasing':>10}{'delete':>10}"
               f"{'vs lease':>10}{'vs delete':>10}   target")
        lines += [hdr, "-" * len(hdr)]
        for key, entry in drain.items():
            p = entry["params"]
            desc = f"{key} {p['channels']:,}ch x {p['per_channel']:,}"
            if p.get("max_concurrency"):
                desc += " cap1"
            m = entry.get("median_msgs_per_s", {})
            r = entry.get("ratio_to_lease")
            bad = entry.get("incomplete", [])
            incomplete |= bool(bad)
            lines.append(f"{desc:<28}{_rate(m, 'hydramq', bad):>10}"
                         f"{_rate(m, 'lease', bad):>10}{_rate(m, 'delete', bad):>10}"
                         f"{fmt_ratio(r):>10}{fmt_ratio(entry.get('ratio_to_delete')):>10}"
                         f"   {_verdict(r, _target_for('drain', key))}")
        lines.append("")
    enq = results.get("enqueue")
    if enq:
        lines.append("Enqueue throughput (msgs/s, median of rounds; 2 procs x 4 conns, "
                     "time-boxed)")
        hdr = f"{'kind':<28}{'hydramq':>10}{'INSERT':>10}{'ratio':>10}   target"
        lines += [hdr, "-" * len(hdr)]
        for key, entry in enq.items():
            m = entry.get("median_msgs_per_s", {})
            r = entry.get("ratio_to_plain")
            bad = entry.get("incomplete", [])
            incomplete |= bool(bad)
            lines.append(f"{key + ' (' + entry['params']['description'] + ')':<28.28}"
                         f"{_rate(m, 'hydramq', bad):>10}{_rate(m, 'plain', bad):>10}"
                         f"{fmt_ratio(r):>10}   {_verdict(r, _target_for('enqueue', key))}")
        lines.append("")
    if incomplete:
        lines += ["* no run of this system finished (timeout or errors; see the JSON): the rate "
                  "shown is over the part done", ""]
    fair = results.get("fairness")
    if fair and "skipped" not in fair:
        lines.append("Fairness (1 noisy channel x {noisy_messages:,}, then {quiet_channels} "
                     "quiet x {quiet_each}; 1 consumer, batch 1)".format(**fair["params"]))
        lines.append(f"  last quiet message served at position {fair['last_quiet_position']} "
                     f"(expected {fair['expected_last_quiet_position']}, FIFO would give "
                     f"{fair['fifo_last_quiet_position']:,}); exact round robin: "
                     f"{'yes' if fair['exact_round_robin'] else 'NO'}")
        if fair.get("first_mismatch"):
            mm = fair["first_mismatch"]
            lines.append(f"  first deviation at position {mm['position']}: expected "
                         f"{mm['expected']}, got {mm['got']}")
        lines.append("")
    # Phases added later only need to provide a "summary": list of {"label":..., ...} rows.
    for name, entry in results.items():
        if isinstance(entry, dict) and isinstance(entry.get("summary"), list):
            lines.append(name)
            for row in entry["summary"]:
                lines.append("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
            lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# environment description for the JSON document
# --------------------------------------------------------------------------------------------
SERVER_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes", "wal_level",
                   "shared_buffers", "max_connections", "max_wal_size", "checkpoint_timeout",
                   "wal_buffers", "commit_delay", "work_mem", "autovacuum")


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_total_kb"] = int(line.split()[1])
                break
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def git_info(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    info: dict[str, Any] = {}
    try:
        info = {"commit": git("rev-parse", "HEAD") or None,
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--",
                                  "extension", "sql", "bench"))}
    except (OSError, subprocess.SubprocessError):
        pass
    # The exact install script measured (the tree may hold uncommitted work).
    info["sql_scripts"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
                           for p in sorted((repo / "sql").glob("hydramq--*.sql"))}
    return info


def server_info(conn: psycopg.Connection) -> dict[str, Any]:
    row = conn.execute("SELECT version(), current_setting('server_version_num')::int").fetchone()
    assert row is not None
    settings = dict(conn.execute("SELECT name, current_setting(name) FROM pg_settings "
                                 "WHERE name = ANY(%s)", (list(SERVER_SETTINGS),)).fetchall())
    ext = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'hydramq'"
                       ).fetchone()
    return {"version": row[0], "version_num": row[1], "settings": settings,
            "hydramq_version": ext[0] if ext else None}


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
