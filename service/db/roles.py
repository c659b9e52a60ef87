"""Who may do what to the ledger: the runtime role's grants, and the checks `verify` makes of
them and of the events table's triggers (read-only: nothing here repairs anything)."""

from __future__ import annotations

import re

import asyncpg

from . import SCHEMA_PATH

# What the runtime role may do. The event log: read and append, nothing else. Every other table
# of the schema (projections, logs; tables added later included): read, insert and update.
EVENTS_GRANTS = "SELECT, INSERT"
OTHER_GRANTS = "SELECT, INSERT, UPDATE"
# Stored idempotency answers are deleted once they are older than their retention, and the
# record of an operator session signed out early once that session would have expired.
DELETABLE = ("idempotency_keys", "operator_sessions_ended")
# The postback log's partitions are made and dropped by these functions (schema.sql), which run
# as the tables' owner and touch nothing else: the runtime role may call them, and has no right
# of its own to create or drop a table.
EXECUTABLE = ("postback_log_prepare(date, date)", "postback_log_expire(integer)")
# What the runtime role must not be able to do to the event log.
FORBIDDEN = ("UPDATE", "DELETE", "TRUNCATE")

# The triggers that protect the log: name -> (function, pg_trigger.tgtype). tgtype bits: 1 row,
# 2 before, 4 insert, 8 delete, 16 update, 32 truncate.
TRIGGERS = {
    "events_append_only": ("events_refuse_change", 1 | 2 | 8 | 16),
    "events_no_truncate": ("events_refuse_change", 2 | 32),
    "events_chain": ("events_chain", 1 | 2 | 4),
}


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def current_role(conn: asyncpg.Connection) -> str:
    role: str = await conn.fetchval("SELECT current_user")
    return role


async def ensure_role(conn: asyncpg.Connection, name: str) -> None:
    """Create the login role `name`, without a password, unless it exists (two processes may
    race to create it). It logs in where the server trusts local connections (the embedded
    server), or with a password an administrator sets."""
    await conn.execute(
        "DO $$ BEGIN\n"
        f"    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {_literal(name)}) THEN\n"
        f"        CREATE ROLE {_ident(name)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;\n"
        "    END IF;\n"
        "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;\n"
        "END $$"
    )


async def grant_runtime(conn: asyncpg.Connection, role: str) -> None:
    """Give `role` what the service needs and take from it (and from PUBLIC) any right to
    change the event log. Call as the tables' owner, after the schema is applied."""
    who = _ident(role)
    await conn.execute(f"REVOKE ALL ON events FROM {who}")
    await conn.execute("REVOKE UPDATE, DELETE, TRUNCATE ON events FROM PUBLIC")
    await conn.execute(f"GRANT {EVENTS_GRANTS} ON events TO {who}")
    tables = await conn.fetch(
        "SELECT c.oid::regclass::text FROM pg_class AS c"
        " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')"
        " AND c.relname <> 'events' AND pg_has_role(c.relowner, 'USAGE')"
        " AND NOT c.relispartition"  # reached through their table, whose grants apply
    )
    for (table,) in tables:
        await conn.execute(f"GRANT {OTHER_GRANTS} ON {table} TO {who}")
    for table in DELETABLE:
        await conn.execute(f"GRANT DELETE ON {_ident(table)} TO {who}")
    for function in EXECUTABLE:
        await conn.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {who}")


async def runtime_problems(conn: asyncpg.Connection, role: str) -> list[str]:
    """One line for each way `role` could change the event log or switch off its triggers."""
    row = await conn.fetchrow(
        "SELECT r.rolsuper, pg_has_role(r.oid, c.relowner, 'MEMBER') AS owns,"
        " array(SELECT p FROM unnest($2::text[]) AS p"
        "       WHERE has_table_privilege(r.oid, c.oid, p)) AS can"
        " FROM pg_roles AS r, pg_class AS c"
        " WHERE r.rolname = $1 AND c.oid = 'events'::regclass",
        role,
        list(FORBIDDEN),
    )
    who = f"runtime role {role!r}"
    if row is None:
        return [f"{who} does not exist"]
    if row["rolsuper"]:
        return [f"{who} is a superuser: it can switch off every protection of the event log"]
    problems = []
    if row["owns"]:
        problems.append(
            f"{who} owns the events table (or is a member of its owner): it can disable its"
            " triggers and rewrite events"
        )
    if row["can"]:
        problems.append(f"{who} has {', '.join(row['can'])} on the events table")
    return problems


def _schema_bodies() -> dict[str, str]:
    sql = SCHEMA_PATH.read_text(encoding="utf-8")
    found = re.finditer(r"CREATE OR REPLACE FUNCTION (\w+)\(.*?\bAS \$\$(.*?)\$\$", sql, re.S)
    return {m.group(1): m.group(2) for m in found}


async def trigger_problems(conn: asyncpg.Connection) -> list[str]:
    """One line for each protecting trigger of the events table that is missing, disabled or
    changed, each trigger on it that schema.sql does not define, and each function of
    schema.sql whose body differs in the database. (Code the owner adds runs in the service's
    sessions, where it could read the chain key's session setting.)"""
    rows = await conn.fetch(
        "SELECT t.tgname, t.tgenabled::text AS tgenabled, t.tgtype, p.proname"
        " FROM pg_trigger AS t JOIN pg_proc AS p ON p.oid = t.tgfoid"
        " WHERE t.tgrelid = 'events'::regclass AND NOT t.tgisinternal"
    )
    found = {r["tgname"]: r for r in rows}
    problems = []
    for name, (function, tgtype) in TRIGGERS.items():
        row = found.get(name)
        if row is None:
            problems.append(f"events trigger {name} is missing")
        elif row["tgenabled"] not in ("O", "A"):  # D: disabled; R: only in replica sessions
            problems.append(f"events trigger {name} is disabled")
        elif row["proname"] != function or row["tgtype"] != tgtype:
            problems.append(f"events trigger {name} is not the one schema.sql defines")
    problems += [
        f"events trigger {name} is not defined by schema.sql" for name in found.keys() - TRIGGERS
    ]
    bodies = _schema_bodies()
    functions = await conn.fetch(
        "SELECT proname, prosrc FROM pg_proc"
        " WHERE pronamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'events'::regclass)"
        " AND proname = ANY($1::text[])",
        list(bodies),
    )
    problems += sorted(
        {
            f"function {f['proname']}() differs from schema.sql"
            for f in functions
            if f["prosrc"] != bodies[f["proname"]]
        }
    )
    return problems
