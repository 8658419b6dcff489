"""Fuzzing the public SQL API (issue 9): no argument, from any role, may break a call or the
queue.

Every public function of schema hydra (discovered from pg_proc; one without a strategy in
tests/fuzz_strategies.py fails the tests) is called with hostile arguments by a producer, a
worker, an admin and a role with no grant. Every call must either succeed or fail with
SQLSTATE 22023 (bad argument) or 42501 (privilege; a role without EXECUTE must get 42501).
Anything else fails the test: another SQLSTATE (22003, 22008, 54000, XX000, ...), a result
the client cannot load (a timestamp past year 9999), a hang (statement_timeout). A text
argument holding NUL must be refused by psycopg on the client, the session still usable.

After each example (a short sequence of calls) the queue must still serve everything else:
a canary message waits in its own channel of each fuzzed queue; the checker (superuser)
runs hydra.coordinate(), drains the queues -- failing with retry each message that has
attempts left, completing the rest -- and must be served and complete the canary. A message
a fuzzed call left behind that breaks dequeue, settlement or coordination fails the test.

Each example starts from empty tables (every table of schema hydra truncated, its sequences
restarted) and the same seed messages, so a failure replays. Modes (``HYDRAMQ_FUZZ``):
  unset / ``ci`` -- a bounded, derandomized run (same examples every time);
  ``long``       -- random, many more examples (``HYDRAMQ_FUZZ_EXAMPLES`` overrides the count).
A failure prints the statements of the example, as the role that ran each, to replay in psql.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from fuzz_strategies import CANARY_CHANNEL, QUEUES, SPECS, Call, Known, calls
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

Conn = psycopg.Connection[Any]

MODE = os.environ.get("HYDRAMQ_FUZZ", "").strip() or "ci"
if MODE not in ("ci", "long"):
    raise ValueError(f"HYDRAMQ_FUZZ={MODE!r}: expected 'ci' or 'long'")
EXAMPLES = int(os.environ.get("HYDRAMQ_FUZZ_EXAMPLES") or (3000 if MODE == "long" else 100))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=MODE == "ci",
    database=None if MODE == "ci" else settings.default.database,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],  # fmt: skip
)

# Each test fuzzes one group; one call in four picks from every function (a poison message from
# enqueue must meet dequeue, fail and coordinate).
GROUPS = {
    "produce": ("enqueue", "enqueue_many"),
    "consume": ("dequeue", "complete", "complete_many", "fail", "fail_many", "heartbeat",
                "worker_idle", "worker_busy"),  # fmt: skip
    "admin": ("channel_policy_set", "channel_policy_clear", "queue_set", "queue_clear",
              "schedule_set", "schedule_clear", "coordinate", "coordinate_loop"),  # fmt: skip
    "cron": ("cron_next", "cron_validate"),
    "grants": ("grant_producer", "grant_worker", "grant_admin"),
}
JOBS = ("producer", "worker", "admin")
NO_GRANT = "nobody"
ALLOWED = {"22023", "42501"}
STATEMENT_TIMEOUT = "30s"  # a call that runs longer is hung: the test fails, it does not wait
CHECK_ROUNDS = 3  # the checker's coordinate + dequeue rounds after each example
CHECK_BATCH = 500


# Every table of schema hydra emptied (DELETE: much cheaper than TRUNCATE on tiny tables;
# replica mode skips foreign keys and triggers), every sequence restarted.
RESET = """
DO $$
DECLARE
    v_rel regclass;
BEGIN
    SET LOCAL session_replication_role = replica;
    FOR v_rel IN SELECT c.oid FROM pg_class c
                  WHERE c.relnamespace = 'hydra'::regnamespace AND c.relkind IN ('r', 'p')
    LOOP
        EXECUTE format('DELETE FROM %s', v_rel);
    END LOOP;
    PERFORM setval(c.oid, s.seqstart, false)
       FROM pg_class c JOIN pg_sequence s ON s.seqrelid = c.oid
      WHERE c.relnamespace = 'hydra'::regnamespace;
END
$$"""


class Finding(AssertionError):
    """A call or the canary check broke a rule; the message is the reproducer."""


@dataclass
class Step:
    role: str  # job name, NO_GRANT, or "superuser" (seed and checker)
    statement: str

    def __str__(self) -> str:
        return f"{self.statement};" if self.role == "superuser" else (
            f"SET ROLE <{self.role}>; {self.statement}; RESET ROLE;")


@dataclass
class Fuzzer:
    """The roles' sessions, what the database holds, and the transcript of this example."""

    checker: Conn  # superuser: seeds, checks the canary
    sessions: dict[str, Conn]  # role label -> a session that SET ROLE to it
    may_run: dict[tuple[str, str], bool]  # (role label, function) -> holds EXECUTE
    known: Known
    functions: list[str]  # the functions of SPECS the installed extension has
    transcript: list[Step] = field(default_factory=list)

    # -- the transcript and its reproducer ---------------------------------------------------

    def fail(self, problem: str) -> Finding:
        lines = [problem, "", "Reproducer (a database with the extension; <producer>, <worker>, "
                 "<admin> hold hydra.grant_*, <nobody> nothing; lease tokens differ per run):"]
        lines += [f"  {step}" for step in self.transcript]
        return Finding("\n".join(lines))

    def sql(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run a checker statement (superuser); any error is a finding."""
        self.transcript.append(Step("superuser", statement))
        try:
            cur = self.checker.execute(statement, params)
            return cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise self.fail(f"the queue broke: {statement!r} raised {describe(exc)}") from exc

    # -- each example ------------------------------------------------------------------------

    def reset(self) -> None:
        """Empty tables, restarted sequences, the canaries and a few seed messages: every
        example starts from the same state."""
        self.transcript = []
        self.known.clear()
        self.checker.execute(RESET)
        seed = [
            "SELECT message_id FROM hydra.enqueue('{\"seed\": 1}', channel => 'tenant-a',"
            " num_attempts => 3)",
            "SELECT id, lease_token FROM hydra.dequeue(batch => 1)",
            "SELECT message_id FROM hydra.enqueue('{\"seed\": 2}', channel => 'tenant-b')",
            "SELECT message_id FROM hydra.enqueue('{\"seed\": 3}', queue => 'fuzz-q',"
            " channel => 'tenant-a', priority => 5)",
        ]
        for statement in seed:
            self.remember(self.sql(statement), ["message_id"] if "enqueue" in statement
                          else ["id", "lease_token"])  # fmt: skip
        for queue in QUEUES:
            self.enqueue_canary(queue)

    def enqueue_canary(self, queue: str) -> int:
        [(result, mid)] = self.sql(
            "SELECT * FROM hydra.enqueue('{\"canary\": true}',"
            f" queue => '{queue}', channel => '{CANARY_CHANNEL}')"
        )
        if result != "enqueued":
            raise self.fail(f"the canary of queue {queue!r} was not enqueued: {result}")
        return int(mid)

    def remember(self, rows: list[tuple[Any, ...]], columns: list[str]) -> None:
        """Message ids and leases a call returned, for the next calls to use."""
        for row in rows:
            values = dict(zip(columns, row, strict=True))
            mid = values.get("message_id", values.get("id"))
            if isinstance(mid, int):
                self.known.ids.append(mid)
                if values.get("lease_token") is not None:
                    self.known.leases.append((mid, str(values["lease_token"])))

    def run(self, role: str, call: Call) -> None:
        """Make one fuzzed call as ``role``; raise a Finding unless it succeeds or fails with
        an allowed SQLSTATE (42501 when the role may not run it)."""
        query, params = call.statement()
        self.transcript.append(Step(role, str(call)))
        conn = self.sessions[role]
        allowed = self.may_run[(role, call.function)]
        try:
            cur = conn.execute(query, params)
        except psycopg.Error as exc:
            if params is not None and exc.sqlstate is None and "NUL" in str(exc):
                # psycopg refused the NUL before sending anything: the session must still work.
                self.still_usable(conn, role)
                return
            if exc.sqlstate in ALLOWED and (allowed or exc.sqlstate == "42501"):
                return
            raise self.fail(f"{call.function} as {role} raised {describe(exc)}") from exc
        if params is not None:
            raise self.fail(f"{call.function} as {role}: a text argument holding NUL was sent")
        try:
            rows = cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise self.fail(
                f"{call.function} as {role}: the client cannot load its result: {describe(exc)}"
            ) from exc
        if not allowed:
            raise self.fail(f"{call.function} as {role} succeeded without EXECUTE on it")
        if cur.description:
            self.remember(rows, [d.name for d in cur.description])

    def still_usable(self, conn: Conn, role: str) -> None:
        try:
            conn.execute("SELECT 1").fetchone()
        except psycopg.Error as exc:
            raise self.fail(f"the {role} session is unusable after a refused NUL: {exc}") from exc

    def check_canary(self) -> None:
        """coordinate() returns normally and a dequeue + complete of the canary still works in
        every fuzzed queue; every other message dequeued on the way is failed (with retry)
        while it has attempts left, else completed -- each must settle without error."""
        # Fuzzed calls may have dequeued the seeded canaries: the check follows fresh ones.
        canaries = {self.enqueue_canary(queue): queue for queue in QUEUES}
        served: set[str] = set()
        for round_ in range(1, CHECK_ROUNDS + 1):
            self.sql("SELECT count(*) FROM hydra.coordinate()")
            queues = "ARRAY[" + ", ".join(f"'{q}'" for q in QUEUES) + "]"
            rows = self.sql(
                "SELECT id, queue, channel, attempt, num_attempts, lease_token"
                f" FROM hydra.dequeue(queues => {queues}, batch => {CHECK_BATCH})"
            )
            for mid, queue, channel, attempt, num_attempts, lease in rows:
                if channel == CANARY_CHANNEL:
                    [(done,)] = self.sql(f"SELECT hydra.complete({mid}, '{lease}')")
                    if not done:
                        raise self.fail(f"the canary {mid} of queue {queue!r} did not complete")
                    if mid in canaries:
                        served.add(queue)
                elif attempt < num_attempts:
                    self.sql(f"SELECT * FROM hydra.fail({mid}, '{lease}', 'fuzz checker')")
                else:
                    self.sql(f"SELECT hydra.complete({mid}, '{lease}')")
            if served == set(QUEUES) and round_ >= 2:
                return
        missing = sorted(set(QUEUES) - served)
        raise self.fail(
            f"the canary of queue(s) {missing} was not served in {CHECK_ROUNDS} rounds of"
            f" coordinate + dequeue(batch => {CHECK_BATCH})"
        )


def describe(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = f"{exc.sqlstate or '(client side)'}: {diag.message_primary or exc}"
    if diag.context:
        text += f"\n  context: {diag.context.strip()}"
    return text


# --------------------------------------------------------------------------------------------
# Fixtures: the roles, their sessions, and the coverage of the catalog
# --------------------------------------------------------------------------------------------


def public_functions(db: Conn) -> dict[str, tuple[str, list[str], int, bool]]:
    """Every function or procedure of schema hydra whose name does not start with '_': name ->
    (signature as regprocedure prints it, argument names, number of arguments with no
    default, is a procedure)."""
    rows = db.execute(
        "SELECT p.proname, p.oid::regprocedure::text, coalesce(p.proargnames, '{}'),"
        "       p.pronargs - p.pronargdefaults, p.prokind = 'p'"
        "  FROM pg_proc p WHERE p.pronamespace = 'hydra'::regnamespace"
        "   AND p.proname NOT LIKE E'\\\\_%' ORDER BY 1"
    ).fetchall()
    found: dict[str, tuple[str, list[str], int, bool]] = {}
    for name, signature, argnames, required, procedure in rows:
        if name in found:
            pytest.fail(f"hydra.{name} is overloaded: give each overload a strategy")
        found[name] = (signature, list(argnames), required, procedure)
    return found


def coverage_problems(db: Conn) -> list[str]:
    """What a public function of the catalog lacks in SPECS (or SPECS names wrongly)."""
    problems = []
    catalog = public_functions(db)
    for name, (signature, argnames, required, procedure) in catalog.items():
        spec = SPECS.get(name)
        if spec is None:
            problems.append(f"{signature} has no fuzz strategy in tests/fuzz_strategies.py")
            continue
        if spec.signature(name) != signature or [a for a, _, _ in spec.args] != argnames:
            problems.append(f"{signature} {argnames}: the strategy says {spec.signature(name)}"
                            f" {[a for a, _, _ in spec.args]}")  # fmt: skip
        if spec.procedure != procedure:
            problems.append(f"{signature}: the strategy calls it as a "
                            f"{'procedure' if spec.procedure else 'function'}")  # fmt: skip
        if spec.required != required:
            problems.append(f"{signature}: {required} arguments without a default, the"
                            f" strategy says {spec.required}")  # fmt: skip
    grouped = [f for fns in GROUPS.values() for f in fns]
    problems += [f"hydra.{name} is in no fuzz group" for name in SPECS if name not in grouped]
    return problems


@pytest.fixture
def fuzzer(db: Conn, dsn: str, server_version: int) -> Iterator[Fuzzer]:
    problems = coverage_problems(db)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
    suffix = uuid.uuid4().hex[:8]
    names = {label: f"hydra_fuzz_{label}_{suffix}" for label in (*JOBS, NO_GRANT)}
    sessions: dict[str, Conn] = {}
    try:
        for label, role in names.items():
            db.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
            if label in JOBS:
                db.execute(sql.SQL("SELECT hydra.{}(%s::regrole)").format(
                    sql.Identifier(f"grant_{label}")), (role,))  # fmt: skip
        # SPECS may name functions this (older) extension lacks: those are not called.
        present = [fn for fn in SPECS if fn in public_functions(db)]
        may_run = {
            (label, fn): bool(db.execute(
                "SELECT has_schema_privilege(%s, 'hydra', 'USAGE')"
                " AND has_function_privilege(%s, %s::regprocedure, 'EXECUTE')",
                (role, role, SPECS[fn].signature(fn))).fetchone()[0])  # type: ignore[index]
            for label, role in names.items() for fn in present
        }  # fmt: skip
        for label, role in names.items():
            conn = psycopg.connect(dsn, autocommit=True)
            sessions[label] = conn
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        db.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        known = Known(roles=list(names.values()), server_version=server_version)
        yield Fuzzer(db, sessions, may_run, known, present)
    finally:
        for conn in sessions.values():
            conn.close()
        for role in names.values():
            db.execute("RESET statement_timeout")
            exists = db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if exists:
                db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_every_public_sql_function_has_a_fuzz_strategy(db: Conn) -> None:
    assert coverage_problems(db) == []


@st.composite
def role_and_function(draw: st.DrawFn, fuzzer: Fuzzer, group: str) -> tuple[str, str]:
    # Three calls in four from the group, the others from any function.
    inside = [f for f in GROUPS[group] if f in fuzzer.functions]
    pool = inside if inside and draw(st.integers(0, 3)) else fuzzer.functions
    function = draw(st.sampled_from(pool))
    # Mostly a role that may run the function, sometimes any (42501 expected).
    entitled = [r for r in fuzzer.sessions if fuzzer.may_run[(r, function)]]
    roles = entitled * 4 + list(fuzzer.sessions) if entitled else list(fuzzer.sessions)
    return draw(st.sampled_from(roles)), function


@pytest.mark.parametrize("group", list(GROUPS))
def test_no_call_from_any_role_breaks_a_call_or_the_queue(fuzzer: Fuzzer, group: str) -> None:
    @FUZZ_SETTINGS
    @given(data=st.data())
    def example(data: st.DataObject) -> None:
        fuzzer.reset()
        for _ in range(data.draw(st.integers(1, 10), label="calls")):
            role, function = data.draw(role_and_function(fuzzer, group))
            fuzzer.run(role, data.draw(calls(function, fuzzer.known), label=role))
        fuzzer.check_canary()

    example()
