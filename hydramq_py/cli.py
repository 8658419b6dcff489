"""The ``hydramq`` command line: install, sql, worker, coordinator, enqueue, status, demo, bench.

Exit codes (stable, for scripts): 0 success; 1 failure (database unreachable, SQL error, a
message dropped, a daemon stopped by a second signal); 2 usage error (bad arguments, invalid
JSON, no DSN). The DSN comes from ``--dsn`` or ``$DATABASE_URL``. Logs go to stderr through
the standard ``logging`` module (``-v`` for debug, ``-q`` for warnings only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg

from .client import Client
from .coordinator import Coordinator
from .events import Event, EventDispatcher
from .models import ChannelStatus
from .runtime import EXIT_FORCED
from .worker import Worker

log = logging.getLogger("hydramq.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input: reported on stderr, exit code 2."""


class Failure(Exception):
    """The command could not do its job: reported on stderr, exit code 1."""


# -- helpers -------------------------------------------------------------------------------


def resolve_dsn(args: argparse.Namespace) -> str:
    dsn: str | None = args.dsn or os.environ.get("DATABASE_URL")
    if not dsn:
        raise UsageError("no database: pass --dsn or set DATABASE_URL")
    return dsn


def load_object(spec: str, what: str) -> Any:
    """Import ``module:attribute`` (``module.sub:obj.attr`` works too). The current directory
    is importable, as with ``python -m``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{what}: expected module:function, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"{what}: cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise UsageError(f"{what}: {module_name!r} has no attribute {attr!r}") from exc
    if not callable(obj):
        raise UsageError(f"{what}: {spec!r} is not callable")
    return obj


def _dispatcher(args: argparse.Namespace) -> EventDispatcher:
    events = EventDispatcher()
    for spec in args.on_event or ():
        events.subscribe(load_object(spec, "--on-event"))
    if args.log_events:
        event_log = logging.getLogger("hydramq.events")

        def log_event(ev: Event) -> None:
            event_log.info(
                "%s message=%s queue=%s channel=%s %s",
                ev.name,
                ev.message_id,
                ev.queue,
                ev.channel,
                json.dumps(dict(ev.detail), default=str),
            )

        events.subscribe(log_event)
    return events


def _connect(dsn: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(dsn, autocommit=True)
    except psycopg.Error as exc:
        raise Failure(f"cannot connect to the database: {exc}") from exc


def _exit_hard(code: int) -> int:
    """After a forced stop, leave without joining handler threads that may still run."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# -- install / sql -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtensionScripts:
    """The extension's control data and scripts, as shipped in sql/."""

    default_version: str
    comment: str
    installs: dict[str, str]  # version -> script text
    updates: dict[tuple[str, str], str]  # (from, to) -> script text
    control: Path
    files: list[Path]


def load_scripts() -> ExtensionScripts:
    """Read hydramq.control and sql/hydramq--*.sql (see ``hydramq.server.extension_files``)."""
    from .server import ExtensionFilesMissing, extension_files

    try:
        files = extension_files()
    except ExtensionFilesMissing as exc:
        raise Failure(str(exc)) from exc
    control = files[0]
    settings: dict[str, str] = {}
    for line in control.read_text().splitlines():
        m = re.match(r"\s*(\w+)\s*=\s*'?(.*?)'?\s*$", line)
        if m and not line.lstrip().startswith("#"):
            settings[m.group(1)] = m.group(2)
    installs: dict[str, str] = {}
    updates: dict[tuple[str, str], str] = {}
    for path in files[1:]:
        name = path.name[len("hydramq--") : -len(".sql")]
        parts = name.split("--")
        if len(parts) == 1:
            installs[parts[0]] = path.read_text()
        elif len(parts) == 2:
            updates[(parts[0], parts[1])] = path.read_text()
    return ExtensionScripts(
        default_version=settings.get("default_version", ""),
        comment=settings.get("comment", "hydramq"),
        installs=installs,
        updates=updates,
        control=control,
        files=files,
    )


def strip_psql_guard(script: str) -> str:
    """Drop the ``\\echo ... \\quit`` guard line (pg_tle runs scripts as plain SQL)."""
    return "\n".join(line for line in script.splitlines() if not line.startswith("\\echo"))


#: pg_tle's ``schema`` argument (pg_tle 1.5.0 and later): the control file's ``schema =
#: pg_catalog``. CREATE EXTENSION then runs the scripts with ``search_path = pg_catalog`` (as
#: for the file-based install) and labels the extension with it instead of the installer's
#: current schema. (The scripts also pin their search_path themselves: see the Makefile.)
PG_TLE_SCHEMA = "pg_catalog"


def _dollar_quote(text: str, avoid: str = "") -> str:
    n = 0
    while True:
        tag = f"$hydramq{n or ''}$"
        if tag not in text and tag not in avoid:
            return f"{tag}{text}{tag}"
        n += 1


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_REGISTER_TAG = "$hydramq_register$"


def render_pg_tle(scripts: ExtensionScripts) -> str:
    """The pg_tle registration of the control file's version and of every update path, as one
    ``DO`` block: each piece is registered only when missing, so a re-run changes nothing and a
    database that registered an older version gets the new one and the paths to it. It stops
    first, with one clear message, where pg_tle is not installed in the database, where the
    role is not a member of ``pgtle_admin``, and where a file-based hydramq (a control file in
    the server's share directory, which pg_tle refuses to shadow) exists."""
    version = scripts.default_version
    if version not in scripts.installs:
        raise Failure(f"no install script hydramq--{version}.sql for the control file's version")
    texts = [strip_psql_guard(scripts.installs[version])]
    texts += [strip_psql_guard(text) for _, text in sorted(scripts.updates.items())]
    for text in texts:
        if _REGISTER_TAG in text:
            raise Failure(f"a script contains {_REGISTER_TAG}; cannot quote it")
    install = _dollar_quote(texts[0], _REGISTER_TAG)
    v, comment = _sql_literal(version), _sql_literal(scripts.comment)
    body = [
        "DECLARE",
        "    v_known text[];",
        f"    v_install text := {install};",
        "BEGIN",
        "    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_tle') THEN",
        "        RAISE EXCEPTION USING ERRCODE = '55000', MESSAGE = pg_catalog.format(",
        "            'pg_tle is not installed in database %s (its administrator runs '",
        "            'CREATE EXTENSION pg_tle there; the server needs '",
        "            'shared_preload_libraries = pg_tle)',",
        "            current_database());",
        "    END IF;",
        "    IF NOT pg_catalog.pg_has_role('pgtle_admin', 'MEMBER') THEN",
        "        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = pg_catalog.format(",
        "            'role %s is not a member of pgtle_admin (GRANT pgtle_admin TO %s)',",
        "            current_user, current_user);",
        "    END IF;",
        "    IF EXISTS (SELECT FROM pg_catalog.pg_available_extensions",
        "                WHERE name = 'hydramq') THEN",
        "        RAISE EXCEPTION USING ERRCODE = '55000', MESSAGE =",
        "            'the server has a file-based hydramq (hydramq.control in its share '",
        "            'directory), which pg_tle cannot shadow: install without --pg-tle '",
        "            '(CREATE EXTENSION hydramq)';",
        "    END IF;",
        "    SELECT pg_catalog.array_agg(e.version) INTO v_known",
        "      FROM pgtle.available_extension_versions() e WHERE e.name = 'hydramq';",
        "    IF v_known IS NULL THEN",
        "        IF pg_catalog.to_regprocedure(",
        "               'pgtle.install_extension(text,text,text,text,text[],text)') IS NULL THEN",
        "            -- pg_tle before 1.5.0 takes no schema: the extension is labelled with the",
        "            -- current schema (the scripts pin their search_path all the same).",
        f"            PERFORM pgtle.install_extension('hydramq', {v}, {comment}, v_install);",
        "        ELSE",
        f"            PERFORM pgtle.install_extension('hydramq', {v}, {comment}, v_install,",
        f"                                            NULL, {_sql_literal(PG_TLE_SCHEMA)});",
        "        END IF;",
        f"    ELSIF NOT {v} = ANY (v_known) THEN",
        f"        PERFORM pgtle.install_extension_version_sql('hydramq', {v}, v_install);",
        "    END IF;",
    ]
    for (src, dst), text in sorted(scripts.updates.items()):
        path = _sql_literal(f"{src}--{dst}.sql")
        body += [
            # pg_tle keeps each script as a function pgtle."<name>--<from>--<to>.sql"().
            "    IF NOT EXISTS (SELECT FROM pg_catalog.pg_proc",
            "                    WHERE pronamespace = 'pgtle'::pg_catalog.regnamespace",
            f"                      AND proname = 'hydramq--' || {path}) THEN",
            f"        PERFORM pgtle.install_update_path('hydramq', {_sql_literal(src)}, "
            f"{_sql_literal(dst)},",
            f"            {_dollar_quote(strip_psql_guard(text), _REGISTER_TAG)});",
            "    END IF;",
        ]
    body += [
        "    IF (SELECT e.default_version FROM pgtle.available_extensions() e",
        f"         WHERE e.name = 'hydramq') IS DISTINCT FROM {v} THEN",
        f"        PERFORM pgtle.set_default_version('hydramq', {v});",
        "    END IF;",
        "END",
    ]
    return "\n".join([
        f"-- hydramq {version} for pg_tle. Registrations are per database: run this in each",
        "-- database that uses hydramq, as a member of pgtle_admin (psql -f). Running it again",
        "-- changes nothing; a database that registered an older version gets this one and the",
        "-- update path to it. Then, as the role that is to own the extension:",
        "--   CREATE EXTENSION hydramq;        -- first install",
        "--   ALTER EXTENSION hydramq UPDATE;  -- where an older version is installed",
        f"DO {_REGISTER_TAG}",
        *body,
        f"{_REGISTER_TAG};",
        "",
    ])


def register_with_pg_tle(conn: psycopg.Connection[Any], scripts: ExtensionScripts) -> None:
    """Run :func:`render_pg_tle`'s registration on ``conn``; a refusal becomes a Failure
    carrying the server's one-line message."""
    try:
        conn.execute(render_pg_tle(scripts).encode())
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc).splitlines()[0]
        raise Failure(f"registering hydramq with pg_tle failed: {message}") from exc


def _server_sharedir(conn: psycopg.Connection[Any]) -> Path | None:
    """The server's SHAREDIR when visible (superuser) and on this machine."""
    try:
        row = conn.execute(
            "SELECT setting FROM pg_catalog.pg_config WHERE name = 'SHAREDIR'"
        ).fetchone()
    except psycopg.Error:
        return None
    if not row or not row[0]:
        return None
    path = Path(row[0])
    return path if (path / "extension").is_dir() else None


def _pg_config_sharedir(server_major: int) -> Path | None:
    exe = shutil.which("pg_config")
    if exe is None:
        return None
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
        share = subprocess.run([exe, "--sharedir"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"(\d+)", version.stdout)
    if not m or int(m.group(1)) != server_major:
        return None
    path = Path(share.stdout.strip())
    return path if (path / "extension").is_dir() else None


def cmd_install(args: argparse.Namespace) -> int:
    dsn = resolve_dsn(args)
    if args.register_only and not args.pg_tle:
        raise UsageError("--register-only goes with --pg-tle")
    with _connect(dsn) as conn:
        if args.pg_tle:
            scripts = load_scripts()
            register_with_pg_tle(conn, scripts)
            log.info("hydramq %s is registered with pg_tle", scripts.default_version)
            if args.register_only:
                print(f"hydramq {scripts.default_version} registered with pg_tle")
                return EXIT_OK
        elif not args.no_copy:
            _copy_files(conn, args.sharedir)
        installed = conn.execute(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'hydramq'"
        ).fetchone()
        try:
            if installed is None:
                conn.execute("CREATE EXTENSION hydramq")
            else:
                conn.execute("ALTER EXTENSION hydramq UPDATE")
        except psycopg.Error as exc:
            message = exc.diag.message_primary or str(exc).splitlines()[0]
            raise Failure(f"installing the extension failed: {message}") from exc
        row = conn.execute(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'hydramq'"
        ).fetchone()
    version = row[0] if row else "?"
    if installed is None:
        print(f"hydramq {version} installed")
    elif installed[0] != version:
        print(f"hydramq updated from {installed[0]} to {version}")
    else:
        print(f"hydramq {version} already installed")
    return EXIT_OK


def _copy_files(conn: psycopg.Connection[Any], sharedir: str | None) -> None:
    from .server import ExtensionFilesMissing, extension_files

    try:
        files = extension_files()
    except ExtensionFilesMissing as exc:
        if sharedir:
            raise Failure(str(exc)) from exc
        log.info(
            "no extension files in this installation (%s); assuming they are on the server already",
            exc,
        )
        return
    if sharedir:
        target: Path | None = Path(sharedir)
    else:
        target = _server_sharedir(conn) or _pg_config_sharedir(conn.info.server_version // 10000)
        if target is None:
            log.info(
                "the server's share directory is not on this machine; not copying files "
                "(use --sharedir, or `make install` on the server)"
            )
            return
    assert target is not None
    dest = target / "extension" if (target / "extension").is_dir() else target
    try:
        for f in files:
            shutil.copy2(f, dest / f.name)
    except OSError as exc:
        raise Failure(f"cannot copy the extension files into {dest}: {exc}") from exc
    log.info("copied %d extension files into %s", len(files), dest)


def cmd_sql(args: argparse.Namespace) -> int:
    scripts = load_scripts()
    if args.pg_tle:
        sys.stdout.write(render_pg_tle(scripts))
        return EXIT_OK
    version = args.version or scripts.default_version
    if version not in scripts.installs:
        raise UsageError(
            f"--version: no install script for {version!r} "
            f"(have {', '.join(sorted(scripts.installs))})"
        )
    sys.stdout.write(scripts.installs[version])
    return EXIT_OK


# -- daemons -------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    dsn = resolve_dsn(args)
    handler = load_object(args.target, "worker")
    if args.slots < 1 or (args.batch is not None and args.batch < 1) or args.processes < 1:
        raise UsageError("--slots, --batch and --processes must be at least 1")
    if args.processes > 1:
        return supervise_workers(args)
    worker = Worker(
        handler,
        dsn,
        queues=args.queue or ["default"],
        slots=args.slots,
        batch=args.batch,
        listen=not args.no_listen,
        poll_max=args.poll_max,
        events=_dispatcher(args),
        name=args.name or f"hydramq-worker-{os.getpid()}",
        parent_pid=args.parent_pid,
        pgbouncer=args.pgbouncer,
        listen_dsn=args.listen_dsn,
    )
    code = asyncio.run(worker.run())
    if code != EXIT_OK:
        return _exit_hard(code)
    return code


class _ForkedWorker:
    """One worker process of ``--processes``, forked from the supervisor once everything is
    imported: it starts in milliseconds instead of importing psycopg and the handler again.
    The supervisor has no connection, thread or event loop yet, so forking is safe."""

    def __init__(self, args: argparse.Namespace, index: int) -> None:
        child = argparse.Namespace(**{
            **vars(args),
            "processes": 1,
            "parent_pid": os.getpid(),
            "name": f"{args.name or 'hydramq-worker'}-{index}",
        })
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which leaves with os._exit
            code = EXIT_FAILURE
            try:
                # A session of its own: a terminal's Ctrl-C reaches only the supervisor.
                os.setsid()
                for s in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(s, signal.SIG_DFL)
                code = cmd_worker(child)
            except BaseException:
                log.exception("worker process %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def supervise_workers(args: argparse.Namespace) -> int:
    """Run ``--processes`` worker processes; forward SIGTERM/SIGINT to them (a second signal
    stops them at once) and restart one that dies while we are not stopping."""
    signals: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    children: dict[int, _ForkedWorker] = {}
    codes: dict[int, int] = {}
    forwarded = 0

    def spawn(i: int) -> None:
        children[i] = _ForkedWorker(args, i)
        log.info("started worker process %d (pid %d)", i, children[i].pid)

    try:
        for i in range(args.processes):
            spawn(i)
        restart_at: dict[int, float] = {}
        while True:
            while forwarded < len(signals):
                forwarded += 1
                log.info(
                    "forwarding %s to %d worker process(es)%s",
                    signal.Signals(signals[forwarded - 1]).name,
                    len(children),
                    " (second signal: stop now)" if forwarded > 1 else "",
                )
                for child in children.values():
                    if child.poll() is None:
                        child.send_signal(signal.SIGTERM)
            for i, child in list(children.items()):
                rc = child.poll()
                if rc is None:
                    continue
                if signals:
                    codes[i] = rc
                    del children[i]
                elif i not in restart_at:
                    log.error(
                        "worker process %d (pid %d) exited with %d; restarting in 1s",
                        i,
                        child.pid,
                        rc,
                    )
                    restart_at[i] = time.monotonic() + 1.0
            for i, at in list(restart_at.items()):
                if signals:
                    del restart_at[i]
                    children.pop(i, None)
                elif time.monotonic() >= at:
                    del restart_at[i]
                    spawn(i)
            if signals and not children:
                break
            time.sleep(0.1)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for child in children.values():
            if child.poll() is None:
                child.kill()
    worst = max(codes.values(), default=0)
    return EXIT_OK if worst == 0 else (EXIT_FORCED if worst > 0 else EXIT_FAILURE)


def cmd_coordinator(args: argparse.Namespace) -> int:
    dsn = resolve_dsn(args)
    if args.batch < 1 or args.interval < 0:
        raise UsageError("--batch must be at least 1 and --interval not negative")
    coordinator = Coordinator(
        dsn,
        batch=args.batch,
        interval=args.interval,
        events=_dispatcher(args),
        pgbouncer=args.pgbouncer,
    )
    code = asyncio.run(coordinator.run())
    if code != EXIT_OK:
        return _exit_hard(code)
    return code


# -- enqueue / status ----------------------------------------------------------------------


def cmd_enqueue(args: argparse.Namespace) -> int:
    dsn = resolve_dsn(args)
    text = sys.stdin.read() if args.payload == "-" else args.payload
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"PAYLOAD is not valid JSON: {exc}") from exc
    options: dict[str, Any] = {
        "queue": args.queue,
        "channel": args.channel,
        "priority": args.priority,
        "name": args.name,
        "num_attempts": args.attempts,
        "lock_secs": args.lock_secs,
        "lock_secs_factor": args.lock_factor,
        "delay_secs": args.delay,
        "depends_on": args.depends_on,
        "cascade_failure": False if args.no_cascade else None,
        "max_processing_secs": args.max_processing_secs,
    }
    with _connect(dsn) as conn:
        try:
            results = (
                Client(conn).enqueue_many([{"payload": payload}] * args.count, **options)
                if args.count > 1
                else [Client(conn).enqueue(payload, **options)]
            )
        except psycopg.DataError as exc:
            raise UsageError(str(exc).strip()) from exc
        except psycopg.Error as exc:
            raise Failure(f"enqueue failed: {str(exc).strip()}") from exc
    dropped = 0
    for r in results:
        if args.json:
            print(json.dumps({"result": r.result, "message_id": r.message_id}))
        else:
            print(f"{r.result} {r.message_id if r.message_id is not None else ''}".rstrip())
        dropped += r.dropped
    if dropped:
        log.error("%d message(s) dropped: the channel is at its max_size", dropped)
        return EXIT_FAILURE
    return EXIT_OK


STATES = ("ready", "parked", "processing", "locked", "pending", "failed")


def cmd_status(args: argparse.Namespace) -> int:
    dsn = resolve_dsn(args)
    with _connect(dsn) as conn:
        client = Client(conn)
        try:
            version = conn.execute(
                "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'hydramq'"
            ).fetchone()
            if version is None:
                raise Failure(
                    "the hydramq extension is not installed in this database "
                    "(run `hydramq install`)"
                )
            status = client.queue_status(args.queue)
            policies = client.channel_policies(args.queue)
        except psycopg.Error as exc:
            raise Failure(f"status failed: {str(exc).strip()}") from exc
        try:
            schedules = client.schedule_list(args.queue)
        except psycopg.Error:
            schedules = []
            log.debug("no schedules view", exc_info=True)
    pol = {(p.queue, p.channel): p for p in policies}
    rows = {(s.queue, s.channel): s for s in status}
    for key in pol:
        rows.setdefault(key, ChannelStatus(*key))
    if args.json:
        print(
            json.dumps(
                {
                    "version": version[0],
                    "channels": [
                        {
                            "queue": s.queue,
                            "channel": s.channel,
                            **{st: s.count(st) for st in STATES},
                        }
                        for s in rows.values()
                    ],
                    "policies": [dataclasses.asdict(p) for p in policies],
                    "schedules": [dataclasses.asdict(s) for s in schedules],
                },
                default=str,
                indent=2,
            )
        )
        return EXIT_OK
    print(f"hydramq {version[0]}")
    ordered = sorted(rows.values(), key=lambda s: (s.queue, -s.total, s.channel or ""))
    shown = ordered[: args.limit] if args.limit else ordered
    table: list[list[str]] = [["queue", "channel", *STATES, "policy"]]
    for s in shown:
        p = pol.get((s.queue, s.channel))
        policy = ""
        if p is not None:
            parts = []
            if p.max_concurrency is not None:
                parts.append(f"max_concurrency={p.max_concurrency} (in use {p.in_flight})")
            if p.max_size is not None:
                parts.append(f"max_size={p.max_size}")
            policy = ", ".join(parts)
        table.append(
            [s.queue, s.channel or "(default)", *(str(s.count(st)) for st in STATES), policy]
        )
    if len(table) == 1:
        print("no messages")
    else:
        _print_table(table)
    if len(ordered) > len(shown):
        print(f"... and {len(ordered) - len(shown)} more channel(s) (--limit 0 shows all)")
    if schedules:
        print()
        sched = [["schedule", "queue", "channel", "cron", "tz", "next fire", "last fire", "error"]]
        for sc in schedules:
            sched.append(
                [
                    sc.name,
                    sc.queue,
                    sc.channel or "(default)",
                    sc.cron,
                    sc.tz,
                    _fmt_time(sc.next_fire_at),
                    _fmt_time(sc.last_fire_at),
                    sc.last_error or "",
                ]
            )
        _print_table(sched)
    return EXIT_OK


def _fmt_time(value: Any) -> str:
    if value is None:
        return "-"
    if value.year >= 9999:  # 'infinity': a stopped schedule
        return "never"
    return str(value.strftime("%Y-%m-%d %H:%M:%S %Z")).strip()


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    numeric = [all(r[i].isdigit() for r in rows[1:]) for i in range(len(rows[0]))]
    for n, r in enumerate(rows):
        cells = [
            c.rjust(w) if numeric[i] and n else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


# -- demo / bench --------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if not args.verbose:  # the live view is the output; keep routine logs out of it
        logging.getLogger("hydramq").setLevel(logging.WARNING)

    return run_demo(
        dsn=args.dsn or os.environ.get("DATABASE_URL"),
        live=not args.no_live,
        server_kind=args.server,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    script = Path(__file__).resolve().parent.parent / "bench" / "bench.py"
    if not script.is_file():
        print(
            "hydramq bench runs bench/bench.py from a source checkout of hydramq; this "
            "installation has none. Clone the repository and run `make bench`.",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    argv = [sys.executable, str(script), *args.bench_args]
    if args.dsn and "--dsn" not in args.bench_args:
        argv += ["--dsn", args.dsn]
    return subprocess.call(argv)


# -- parser --------------------------------------------------------------------------------


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _add_pgbouncer_option(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--pgbouncer",
        action="store_true",
        default=_env_flag("HYDRAMQ_PGBOUNCER"),
        help="--dsn goes through PgBouncer in transaction pooling mode: no server-side "
        "prepared statements, no LISTEN on it (default: $HYDRAMQ_PGBOUNCER=1)",
    )

DESCRIPTION = """\
hydramq: a fair, multi-tenant message queue inside PostgreSQL.

The queue lives in the database (extension hydramq, schema hydra); this tool installs it,
runs the worker and coordinator daemons, and inspects queues. The database comes from
--dsn or $DATABASE_URL (a libpq URL or key=value string).

exit codes: 0 ok, 1 failure, 2 usage error.
"""

EPILOG = """\
examples:
  hydramq install                                  # CREATE EXTENSION (files copied if local)
  hydramq enqueue '{"to": "a@b.c"}' --channel tenant-42
  hydramq worker myapp.tasks:handle --queue emails --slots 20 --processes 2
  hydramq coordinator
  hydramq status
  hydramq demo                                     # a one-minute tour on a throwaway server
"""


def _common_options(top: bool) -> argparse.ArgumentParser:
    """--dsn/-v/-q, accepted before and after the command. Sub-commands use SUPPRESS defaults
    so that they do not overwrite values given before the command name."""
    common = argparse.ArgumentParser(add_help=False)
    none: Any = None if top else argparse.SUPPRESS
    zero: Any = 0 if top else argparse.SUPPRESS
    common.add_argument("--dsn", default=none, help="database (default: $DATABASE_URL)")
    common.add_argument("-v", "--verbose", action="count", default=zero, help="more logging")
    common.add_argument("-q", "--quiet", action="count", default=zero, help="less logging")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options(top=False)

    p = argparse.ArgumentParser(
        prog="hydramq",
        description=DESCRIPTION,
        epilog=EPILOG,
        parents=[_common_options(True)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description="\n\n".join(textwrap.fill(p, 88) for p in description.split("\n\n")),
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    s = add(
        "install",
        "install the extension in a database",
        "Copy the extension files into the server's share directory when it is on this "
        "machine (the server's SHAREDIR, or pg_config of the same major version, or "
        "--sharedir), then CREATE EXTENSION hydramq (or ALTER EXTENSION hydramq UPDATE "
        "when an older version is installed). With --pg-tle the scripts are registered "
        "through pg_tle instead (managed servers such as RDS/Aurora; needs pg_tle and "
        "the pgtle_admin role).",
    )
    s.add_argument("--sharedir", help="copy the files into DIR/extension (or DIR)")
    s.add_argument("--no-copy", action="store_true", help="do not copy any file")
    s.add_argument("--pg-tle", action="store_true", help="install through pg_tle")
    s.add_argument(
        "--register-only",
        action="store_true",
        help="with --pg-tle: register the scripts, leave CREATE EXTENSION to the role that "
        "is to own the extension",
    )
    s.set_defaults(func=cmd_install)

    s = add(
        "sql",
        "print the extension's install script",
        "Print the install script (sql/hydramq--VERSION.sql) on stdout; with --pg-tle, "
        "print the pg_tle registration script to run with psql on a managed server.",
    )
    s.add_argument("--version", help="script version (default: the control file's)")
    s.add_argument("--pg-tle", action="store_true", help="render for pg_tle")
    s.set_defaults(func=cmd_sql)

    s = add(
        "worker",
        "run a worker: dequeue, call your handler, complete/fail",
        "Run TARGET (module:function, sync or async, taking a hydramq.Message) for every "
        "message of the given queues. A handler that raises fails its message (retried "
        "while attempts remain); raising hydramq.FailWithoutRetry fails it for good.\n\n"
        "SIGTERM/SIGINT: stop dequeuing, finish in-flight messages, exit 0. A second "
        "signal exits at once (code 1); its in-flight messages are re-delivered after "
        "their lease expires. Lost database connections are retried, never fatal.",
    )
    s.add_argument("target", metavar="TARGET", help="handler as module:function")
    s.add_argument(
        "--queue", action="append", help="queue to consume (repeatable; default: default)"
    )
    s.add_argument(
        "--slots", type=int, default=10, help="messages processed at once per process (default 10)"
    )
    s.add_argument(
        "--batch", type=int, default=None, help="max messages per dequeue (default: slots)"
    )
    s.add_argument(
        "--processes",
        type=int,
        default=1,
        help="worker processes (default 1; one per core is typical)",
    )
    s.add_argument(
        "--no-listen",
        action="store_true",
        help="poll only, no LISTEN",
    )
    _add_pgbouncer_option(s)
    s.add_argument(
        "--listen-dsn",
        default=os.environ.get("HYDRAMQ_LISTEN_DSN") or None,
        metavar="DSN",
        help="LISTEN for wake-ups on this connection (direct to the server, not through "
        "PgBouncer) instead of --dsn; with --pgbouncer, without it the worker polls "
        "(default: $HYDRAMQ_LISTEN_DSN)",
    )
    s.add_argument(
        "--poll-max",
        type=float,
        default=1.0,
        help="longest idle poll interval, seconds (default 1)",
    )
    s.add_argument(
        "--on-event",
        action="append",
        metavar="MODULE:FUNCTION",
        help="event subscriber, called after commit (repeatable)",
    )
    s.add_argument("--log-events", action="store_true", help="log every event")
    s.add_argument("--name", help="worker name (logs, application_name)")
    s.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_worker)

    s = add(
        "coordinator",
        "run the coordinator (delays, retries, leases, DAGs, schedules)",
        "Call hydra.coordinate(BATCH) in a loop: again at once after a full batch, else "
        "every INTERVAL seconds. Any number of coordinators may run. Same signals as the "
        "worker. Without it (or pg_cron calling hydra.coordinate()), delayed, retried, "
        "scheduled and dependent messages never become ready.",
    )
    s.add_argument("--batch", type=int, default=1000, help="work items per call (default 1000)")
    s.add_argument(
        "--interval", type=float, default=0.5, help="seconds between calls when idle (default 0.5)"
    )
    _add_pgbouncer_option(s)
    s.add_argument(
        "--on-event",
        action="append",
        metavar="MODULE:FUNCTION",
        help="event subscriber, called after commit (repeatable)",
    )
    s.add_argument("--log-events", action="store_true", help="log every event")
    s.set_defaults(func=cmd_coordinator)

    s = add(
        "enqueue",
        "enqueue a message",
        "Enqueue PAYLOAD (JSON text; - reads stdin). Prints 'RESULT ID' per message "
        "(enqueued, deduplicated or dropped). Exit 1 when a message was dropped (channel "
        "at max_size), 2 on invalid input.",
    )
    s.add_argument("payload", metavar="PAYLOAD", help="JSON payload, or - for stdin")
    s.add_argument("--queue", default=None, help="queue (default: default)")
    s.add_argument("--channel", default=None, help="channel, e.g. a tenant id")
    s.add_argument("--priority", type=int, default=None, help="higher runs first")
    s.add_argument("--name", default=None, help="de-duplication name")
    s.add_argument("--attempts", type=int, default=None, help="num_attempts (default 1)")
    s.add_argument("--lock-secs", type=float, default=None, help="back-off after a failure")
    s.add_argument("--lock-factor", type=float, default=None, help="back-off growth factor")
    s.add_argument("--delay", type=float, default=None, help="seconds before it is ready")
    s.add_argument(
        "--depends-on", type=int, nargs="+", default=None, metavar="ID", help="parent message ids"
    )
    s.add_argument("--no-cascade", action="store_true", help="run even if a parent failed")
    s.add_argument("--max-processing-secs", type=float, default=None, help="lease length")
    s.add_argument("--count", type=int, default=1, help="enqueue N copies (one call)")
    s.add_argument("--json", action="store_true", help="print JSON lines")
    s.set_defaults(func=cmd_enqueue)

    s = add(
        "status",
        "show queues, channels, policies and schedules",
        "Message counts per queue and channel by state (ready, parked = ready but its "
        "channel is at max_concurrency, processing, locked = backing off after a failure, "
        "pending = delayed or waiting for parents, failed = kept dead letters), channel "
        "policies, and schedules with their next fire time.",
    )
    s.add_argument("--queue", default=None, help="only this queue")
    s.add_argument(
        "--limit",
        type=int,
        default=50,
        help="channels to show, busiest first (default 50; 0 = all)",
    )
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_status)

    s = add(
        "demo",
        "watch a multi-tenant workload being processed (under a minute)",
        "Start a throwaway PostgreSQL (embedded, unless --dsn/$DATABASE_URL is given), "
        "enqueue a few thousand messages over many tenants (one noisy), with a "
        "concurrency-capped tenant, a dependency DAG, a schedule and retries, then run "
        "real worker and coordinator processes and show per-tenant progress live.",
    )
    s.add_argument("--no-live", action="store_true", help="plain progress lines, no redraw")
    s.add_argument(
        "--server",
        choices=("embedded", "debian"),
        default="embedded",
        help="throwaway server kind when no DSN is given (default embedded)",
    )
    s.set_defaults(func=cmd_demo)

    s = add(
        "bench",
        "run the benchmarks (source checkout only)",
        "Run bench/bench.py from a source checkout; arguments after -- are passed on, "
        "e.g. hydramq bench -- --quick.",
    )
    s.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for bench.py")
    s.set_defaults(func=cmd_bench)
    return p


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.INFO - 10 * args.verbose + 10 * args.quiet
    logging.basicConfig(
        level=max(logging.DEBUG, min(level, logging.CRITICAL)),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.verbose < 2:
        logging.getLogger("psycopg").setLevel(max(logging.WARNING, level))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if getattr(args, "bench_args", None) and args.bench_args[:1] == ["--"]:
        args.bench_args = args.bench_args[1:]
    _setup_logging(args)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UsageError as exc:
        print(f"hydramq {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Failure as exc:
        print(f"hydramq {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
