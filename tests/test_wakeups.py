"""Wake-ups: enqueue sends NOTIFY only while a worker is registered idle, and the first enqueue
that does claims the registration, so an idle worker costs one notification per idle period."""

from __future__ import annotations

from typing import Any

import psycopg

Conn = psycopg.Connection[Any]


def notifications(listener: Conn) -> list[str]:
    """Payloads of the hydra_enqueue notifications delivered so far."""
    listener.execute("SELECT 1")  # a round trip delivers pending notifications
    return [n.payload for n in listener.notifies(timeout=0.2) if n.channel == "hydra_enqueue"]


def enqueue(conn: Conn, queue: str = "q") -> None:
    conn.execute("SELECT hydra.enqueue('{}'::jsonb, queue => %s)", (queue,))


def test_no_idle_worker_means_no_notification(db: Conn, connect: Any) -> None:
    listener = connect()
    listener.execute("LISTEN hydra_enqueue")
    enqueue(db)
    assert notifications(listener) == []


def test_an_idle_worker_is_notified_once_per_registration(db: Conn, connect: Any) -> None:
    listener = connect()
    listener.execute("LISTEN hydra_enqueue")
    listener.execute("SELECT hydra.worker_idle(ARRAY['q'])")
    pid = str(listener.info.backend_pid)  # the payload: whose registration was claimed
    for _ in range(5):
        enqueue(db)
    assert notifications(listener) == [pid]
    assert db.execute("SELECT count(*) FROM hydra.waiting_worker").fetchone() == (0,)

    listener.execute("SELECT hydra.worker_idle(ARRAY['q'])")  # idle again
    enqueue(db)
    enqueue(db)
    assert notifications(listener) == [pid]


def test_other_queues_do_not_claim_the_registration(db: Conn, connect: Any) -> None:
    listener = connect()
    listener.execute("LISTEN hydra_enqueue")
    listener.execute("SELECT hydra.worker_idle(ARRAY['q'])")
    enqueue(db, "elsewhere")
    assert notifications(listener) == []
    enqueue(db, "q")
    assert notifications(listener) == [str(listener.info.backend_pid)]


def test_a_claim_held_by_an_open_transaction_does_not_silence_other_producers(
    db: Conn, connect: Any
) -> None:
    listener, slow = connect(), connect(autocommit=False)
    listener.execute("LISTEN hydra_enqueue")
    listener.execute("SELECT hydra.worker_idle(ARRAY['q'])")
    enqueue(slow)  # claims the registration; its NOTIFY waits for a commit that may not come
    enqueue(db)  # must notify anyway, and must not wait for the open transaction
    assert notifications(listener) == [""]  # no claim of its own: every idle worker re-checks
    slow.rollback()  # the claim is undone: the worker is still registered
    assert db.execute("SELECT count(*) FROM hydra.waiting_worker").fetchone() == (1,)


def test_a_worker_busy_again_unregisters_without_waiting_for_a_claim(
    db: Conn, connect: Any
) -> None:
    worker, slow = connect(), connect(autocommit=False)
    worker.execute("SET lock_timeout = '2s'")
    worker.execute("SELECT hydra.worker_idle(ARRAY['q', 'r'])")
    enqueue(slow, "q")  # holds its claim on the 'q' registration
    worker.execute("SELECT hydra.worker_busy()")  # must not wait for the producer
    worker.execute("SELECT hydra.worker_idle(ARRAY['q'])")  # nor to register again
    slow.commit()
    rows = db.execute("SELECT queue FROM hydra.waiting_worker ORDER BY queue").fetchall()
    assert rows == [("q",)]
