"""A snapshot of everything the hydramq extension defines in a database's catalog.

Two databases with equal snapshots have the same extension objects: functions (bodies,
settings, security, volatility, grants, comments), types, tables and views (columns in order,
defaults, collations, storage options), sequences, indexes, constraints, triggers, grants,
comments, extension membership and the tables registered for pg_dump. Object identifiers and
the order objects were created in are left out: an upgraded database and a fresh install differ
in those and nothing else may differ.

``catalog_snapshot(conn)`` returns ``{section: sorted list of rows}``; ``catalog_diff(a, b)``
lists, per section, the rows only one side has (empty when equal).
"""

from __future__ import annotations

from typing import Any

import psycopg

Snapshot = dict[str, list[tuple[Any, ...]]]

# Grants as sorted "grantee:privilege" text, so that the order of GRANTs does not count.
_ACL = """
    (SELECT coalesce(string_agg(
                CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                || ':' || a.privilege_type || CASE WHEN a.is_grantable THEN '*' ELSE '' END,
                ',' ORDER BY 1), '')
       FROM aclexplode({acl}) a)
"""

_SECTIONS: dict[str, str] = {
    "schema": f"""
        SELECT n.nspname, n.nspowner::regrole::text, {_ACL.format(acl="n.nspacl")},
               obj_description(n.oid, 'pg_namespace')
          FROM pg_namespace n WHERE n.nspname = 'hydra'
    """,
    "functions": f"""
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid),
               {_ACL.format(acl="p.proacl")}, obj_description(p.oid, 'pg_proc'),
               p.proowner::regrole::text
          FROM pg_proc p WHERE p.pronamespace = 'hydra'::regnamespace
    """,
    # Composite types' attributes are in "columns" (their pg_class rows have relkind 'c').
    "types": """
        SELECT t.typname, t.typtype, t.typowner::regrole::text,
               obj_description(t.oid, 'pg_type'),
               (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                  FROM pg_enum e WHERE e.enumtypid = t.oid)
          FROM pg_type t
         WHERE t.typnamespace = 'hydra'::regnamespace AND t.typcategory <> 'A'
    """,
    "relations": f"""
        SELECT c.relname, c.relkind, c.relpersistence, c.reloptions::text,
               c.relowner::regrole::text, {_ACL.format(acl="c.relacl")},
               obj_description(c.oid, 'pg_class'), c.relrowsecurity,
               CASE c.relkind WHEN 'v' THEN pg_get_viewdef(c.oid) END,
               CASE c.relkind WHEN 'i' THEN pg_get_indexdef(c.oid) END
          FROM pg_class c WHERE c.relnamespace = 'hydra'::regnamespace
    """,
    # Columns by their position among the live ones (an upgrade's dropped columns leave holes).
    "columns": f"""
        SELECT c.relname,
               row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
               a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), co.collname, a.attidentity, a.attgenerated,
               col_description(c.oid, a.attnum), {_ACL.format(acl="a.attacl")}
          FROM pg_class c
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
          LEFT JOIN pg_collation co ON co.oid = a.attcollation
                                   AND a.attcollation <> 100  -- the default collation
         WHERE c.relnamespace = 'hydra'::regnamespace
    """,
    "sequences": """
        SELECT c.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmax,
               s.seqmin, s.seqcache, s.seqcycle
          FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
         WHERE c.relnamespace = 'hydra'::regnamespace
    """,
    "constraints": """
        SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid),
               obj_description(k.oid, 'pg_constraint')
          FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
         WHERE c.relnamespace = 'hydra'::regnamespace
    """,
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid)
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = 'hydra'::regnamespace AND NOT t.tgisinternal
    """,
    "policies": """
        SELECT c.relname, p.polname, p.polcmd, pg_get_expr(p.polqual, p.polrelid),
               pg_get_expr(p.polwithcheck, p.polrelid)
          FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
         WHERE c.relnamespace = 'hydra'::regnamespace
    """,
    # Every object the extension owns, described by name (pg_describe_object, not its oid).
    "members": """
        SELECT pg_describe_object(d.classid, d.objid, d.objsubid)
          FROM pg_depend d
          JOIN pg_extension e ON e.oid = d.refobjid AND d.refclassid = 'pg_extension'::regclass
         WHERE e.extname = 'hydramq' AND d.deptype = 'e'
    """,
    "config_dump": """
        SELECT cfg.rel::regclass::text, coalesce(e.extcondition[cfg.n], '')
          FROM pg_extension e,
               unnest(e.extconfig) WITH ORDINALITY AS cfg(rel, n)
         WHERE e.extname = 'hydramq'
    """,
    "extension": """
        SELECT e.extname, e.extversion, e.extnamespace::regnamespace::text, e.extrelocatable
          FROM pg_extension e WHERE e.extname = 'hydramq'
    """,
}


def catalog_snapshot(conn: psycopg.Connection[Any]) -> Snapshot:
    """Every hydramq object of ``conn``'s database, one sorted list of rows per section."""
    return {
        section: sorted(conn.execute(query).fetchall(), key=repr)  # type: ignore[arg-type]
        for section, query in _SECTIONS.items()
    }


def catalog_diff(left: Snapshot, right: Snapshot) -> dict[str, dict[str, list[Any]]]:
    """Per section, the rows only ``left`` has and the rows only ``right`` has."""
    diff: dict[str, dict[str, list[Any]]] = {}
    for section in left.keys() | right.keys():
        a, b = left.get(section, []), right.get(section, [])
        only_left = [row for row in a if row not in b]
        only_right = [row for row in b if row not in a]
        if only_left or only_right:
            diff[section] = {"only_left": only_left, "only_right": only_right}
    return diff
