"""A PostgreSQL 15 server with pg_tle, and hydramq installed through it as on Amazon RDS.

pg_tle 1.5.2 is built into Debian's PostgreSQL 15 from the vendored source archive
(``make pgtle``, run by ``.ci/run``). The server runs a relocated copy of Debian's binaries whose
share directory links every file of the real one except ``hydramq*``: other test runs on this
machine copy hydramq's control file into Debian's share directory, and pg_tle refuses to
register an extension a control file already provides (and CREATE EXTENSION would pick the
file). PostgreSQL finds its share and library directories relative to its binary, so the copy
needs no configuration.

The install is the managed-server one: ``shared_preload_libraries = 'pg_tle'``; the superuser
runs ``CREATE EXTENSION pg_tle`` in the database (RDS's master user can); ``TLE_ADMIN``, a
non-superuser holding ``pgtle_admin``, registers hydramq with the code of ``hydramq install
--pg-tle --register-only``; ``APP_OWNER``, a non-superuser with CREATE on the database, runs
``CREATE EXTENSION hydramq`` and so owns it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from hydramq.cli import load_scripts, register_with_pg_tle
from hydramq.server import DEBIAN_MAJOR, LocalServer, debian_bindir, start_server

PG_TLE_VERSION = "1.5.2"
ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = ROOT.parent / "shared" / "vendor" / f"pg_tle-{PG_TLE_VERSION}.tar.gz"
TLE_ADMIN = "hydramq_tle_admin"  # pgtle_admin, no superuser: registers the extension
APP_OWNER = "hydramq_app"  # CREATE on the database, no superuser: creates the extension
SETTINGS = {"shared_preload_libraries": "pg_tle"}


def unavailable() -> tuple[str, bool] | None:
    """Why no pg_tle server can start here, and whether that is only a skip (the vendored
    archive is absent, so nothing could build pg_tle); None when it can."""
    bindir = debian_bindir()
    if bindir is None:
        return (f"Debian's postgresql-{DEBIAN_MAJOR} is not installed", not ARCHIVE.is_file())
    libdir, sharedir = _debian_dirs(bindir)
    control = sharedir / "extension" / "pg_tle.control"
    installed = (libdir / "pg_tle.so").is_file() and control.is_file()
    if installed and f"default_version = '{PG_TLE_VERSION}'" in control.read_text():
        return None
    if not ARCHIVE.is_file():
        return (
            f"pg_tle {PG_TLE_VERSION} is not installed into PostgreSQL {DEBIAN_MAJOR} and its "
            f"source archive is absent ({ARCHIVE}; this project's machines and CI have it)",
            True,
        )
    return (
        f"pg_tle {PG_TLE_VERSION} is not installed into PostgreSQL {DEBIAN_MAJOR}: "
        f"run `make pgtle` as root (builds it from {ARCHIVE})",
        False,
    )


def _debian_dirs(bindir: Path) -> tuple[Path, Path]:
    """Debian's package library directory and share directory for ``bindir``."""
    return bindir.parent / "lib", Path(f"/usr/share/postgresql/{DEBIAN_MAJOR}")


def relocated_bindir(into: Path) -> Path:
    """Copy Debian's PostgreSQL binaries under ``into`` (same relative layout as /usr), with a
    library directory linked to Debian's and a share directory without hydramq's files."""
    bindir = debian_bindir()
    assert bindir is not None
    libdir, sharedir = _debian_dirs(bindir)
    version_dir = into / "lib" / "postgresql" / str(DEBIAN_MAJOR)
    new_bin = version_dir / "bin"
    shutil.copytree(bindir, new_bin, symlinks=True)
    (version_dir / "lib").symlink_to(libdir, target_is_directory=True)
    new_share = into / "share" / "postgresql" / str(DEBIAN_MAJOR)
    new_share.mkdir(parents=True)
    for entry in sharedir.iterdir():
        if entry.name != "extension":
            (new_share / entry.name).symlink_to(entry)
    (new_share / "extension").mkdir()
    for entry in (sharedir / "extension").iterdir():
        if not entry.name.startswith("hydramq"):
            (new_share / "extension" / entry.name).symlink_to(entry)
    for path in [into, *into.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)  # the server's OS user walks it when we are root
    return new_bin


class PgTleServer:
    """A running pg_tle server (see the module doc) and its relocated binaries."""

    def __init__(self) -> None:
        self._tree = Path(tempfile.mkdtemp(prefix="hydramq-pgtle-"))
        try:
            self.bindir = relocated_bindir(self._tree)
            self.server: LocalServer = start_server(
                "debian", fsync=False, settings=SETTINGS, bindir=self.bindir
            )
        except BaseException:
            shutil.rmtree(self._tree, ignore_errors=True)
            raise
        # Where a file-based hydramq would be installed on this server (tests put one there).
        self.extension_dir = self._tree / "share" / "postgresql" / str(DEBIAN_MAJOR) / "extension"
        with psycopg.connect(self.server.dsn(), autocommit=True) as conn:
            for role in (TLE_ADMIN, APP_OWNER):
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return make_conninfo(self.server.dsn(dbname), user=user)

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self._tree, ignore_errors=True)


def prepare_database(base_dsn: str, dbname: str) -> None:
    """What a managed server's administrator does once per database: pg_tle in it,
    ``pgtle_admin`` for ``TLE_ADMIN``, CREATE on it for ``APP_OWNER``."""
    with psycopg.connect(make_conninfo(base_dsn, dbname=dbname), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_tle")
        conn.execute(sql.SQL("GRANT pgtle_admin TO {}").format(sql.Identifier(TLE_ADMIN)))
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(dbname), sql.Identifier(APP_OWNER)
            )
        )


def register_hydramq(base_dsn: str, dbname: str) -> None:
    """Register hydramq in ``dbname`` as ``TLE_ADMIN``, with the code of ``hydramq install
    --pg-tle --register-only``."""
    admin = make_conninfo(base_dsn, dbname=dbname, user=TLE_ADMIN)
    with psycopg.connect(admin, autocommit=True) as conn:
        register_with_pg_tle(conn, load_scripts())


def install_hydramq(base_dsn: str, dbname: str) -> None:
    """Prepare ``dbname``, register hydramq as ``TLE_ADMIN`` and create it as ``APP_OWNER``."""
    prepare_database(base_dsn, dbname)
    register_hydramq(base_dsn, dbname)
    owner = make_conninfo(base_dsn, dbname=dbname, user=APP_OWNER)
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION hydramq")

