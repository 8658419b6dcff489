"""A throwaway PgBouncer in front of the test server, in transaction pooling mode.

``PgBouncer(server_dsn)`` writes a configuration into a fresh directory and runs Debian's
``pgbouncer`` (``/usr/sbin/pgbouncer``; ``.ci/run`` installs it) in the foreground on a free
port of 127.0.0.1: every database name is passed through to the server ``server_dsn`` names
(``* = host=... port=...``), clients authenticate by ``trust`` as that DSN's user (who must
still be in the auth file, with the password PgBouncer then gives the server, if any). Like
the test servers (hydramq.server), it runs as the ``postgres`` OS user when we are root, since
PgBouncer refuses to run as root.

``default_pool_size`` is small on purpose: with fewer server connections than clients,
consecutive transactions of one client land on different server backends, which is what
breaks session state (prepared statements, LISTEN, SET, ``pg_backend_pid()``).

The process is bounded: it runs under ``timeout`` (``LIFETIME`` seconds), so a test run killed
before :meth:`PgBouncer.stop` cannot leave it behind for long; ``stop()`` (also at exit) sends
SIGTERM (immediate shutdown) and waits for it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from hydramq.server import _child_env, _free_port, _server_os_user

BINARY = Path(shutil.which("pgbouncer") or "/usr/sbin/pgbouncer")
LIFETIME = 600  # seconds: the longest a test may use one PgBouncer


def unavailable() -> str | None:
    """Why no PgBouncer can run here, or None."""
    if not BINARY.is_file():
        return f"the pgbouncer binary is not installed ({BINARY}; Debian package pgbouncer)"
    return None


def version() -> str:
    out = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "PgBouncer ?"


class PgBouncer:
    """A running PgBouncer forwarding every database to the server of ``server_dsn``."""

    def __init__(
        self,
        server_dsn: str,
        *,
        pool_mode: str = "transaction",
        default_pool_size: int = 4,
        max_client_conn: int = 200,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hydramq-pgbouncer-"))
        self.log_path = self.dir / "pgbouncer.log"
        self.proc: subprocess.Popen[bytes] | None = None
        os_user = _server_os_user()
        server = conninfo_to_dict(server_dsn)
        self.user = str(server.get("user") or "postgres")
        self.password = str(server.get("password") or "")
        host, port = server.get("host") or "127.0.0.1", server.get("port") or 5432
        quote = '"'
        (self.dir / "userlist.txt").write_text(
            f'"{self.user}" "{self.password.replace(quote, quote * 2)}"\n'
        )
        if os_user is not None:
            os.chown(self.dir, os_user.uid, os_user.gid)
            for f in self.dir.iterdir():
                os.chown(f, os_user.uid, os_user.gid)
        atexit.register(self.stop)
        for _attempt in range(5):  # a port picked as free can be taken before PgBouncer binds
            self.port = _free_port()
            ini = self.dir / "pgbouncer.ini"
            ini.write_text(
                "[databases]\n"
                f"* = host={host} port={port}\n"
                "[pgbouncer]\n"
                "listen_addr = 127.0.0.1\n"
                f"listen_port = {self.port}\n"
                "unix_socket_dir =\n"
                "auth_type = trust\n"
                f"auth_file = {self.dir / 'userlist.txt'}\n"
                f"admin_users = {self.user}\n"
                f"pool_mode = {pool_mode}\n"
                f"max_client_conn = {max_client_conn}\n"
                f"default_pool_size = {default_pool_size}\n"
                "server_reset_query = DISCARD ALL\n"
                "ignore_startup_parameters = extra_float_digits,options\n"
                f"logfile = {self.log_path}\n"
                "log_connections = 0\n"
                "log_disconnections = 0\n"
            )
            self.proc = subprocess.Popen(
                ["timeout", "--kill-after=5", str(LIFETIME), str(BINARY), str(ini)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env=_child_env(), cwd=self.dir,
                user=None if os_user is None else os_user.uid,
                group=None if os_user is None else os_user.gid,
                extra_groups=None if os_user is None else [],
            )  # fmt: skip
            if self._wait_ready(15.0):
                return
            self._terminate()
        raise RuntimeError(f"PgBouncer did not start; its log:\n{self.log}")

    def dsn(self, dbname: str) -> str:
        """A libpq URL for ``dbname`` through this PgBouncer."""
        return make_conninfo(
            "", host="127.0.0.1", port=self.port, user=self.user, dbname=dbname,
            password=self.password or None,
        )  # fmt: skip

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return True
            time.sleep(0.05)
        return False

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # timeout(1) passes SIGTERM on: PgBouncer's immediate shutdown
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on PgBouncer's admin console (CLIENTS, SERVERS, POOLS...), as dicts."""
        assert what.isalpha()
        with psycopg.connect(self.dsn("pgbouncer"), autocommit=True) as conn:
            cur = conn.execute(f"SHOW {what}")
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def server_pids(self) -> set[int]:
        """Backend pids of the server connections PgBouncer holds (its pools)."""
        return {int(r["remote_pid"]) for r in self.show("SERVERS") if r["remote_pid"]}

    def stop(self) -> None:
        """Stop PgBouncer and remove its directory (idempotent)."""
        self._terminate()
        shutil.rmtree(self.dir, ignore_errors=True)
