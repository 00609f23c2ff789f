"""The PostgreSQL schema as versioned migrations, applied at start-up under a lock.

Each migration runs once, in its own transaction, and records its number in
``schema_version``. :func:`migrate` holds a session advisory lock while it reads the
version and applies what is missing, so several processes starting at once on a fresh
database wait for the first and then find nothing left to do.

The tables mirror the SQLite store's (``store/schema.py``), with two differences:

- ``log_head`` is the event log's one-row counter: an append locks it (``FOR UPDATE``)
  until its transaction commits, so appends are serialized and each commit's ``seq``
  values are above every seq committed before it. A reader that has seen ``seq = N``
  can never later find a new event below ``N`` (a ``BIGSERIAL`` alone would allow
  that: writer B may commit seq 8 before writer A commits seq 7).
- ``deliveries.claimed_by`` names the instance that started the attempt in flight, for
  recovery of a dead instance's ``sending`` rows once several share the database.

Migration 2 adds ``instances`` (heartbeats) and ``leases`` (holder and fencing epoch);
migration 3 ``operator_actions`` (what operators did by hand, SPEC §7.4); migration 4
``delivery_results`` (the answers chained actions read, SPEC §7.5); migration 5
``rate_turns`` (the turns of rate limits, SPEC §7.2: seconds since the epoch, as the
planner computes them); migration 6 ``rule_groups``, ``group_members`` and
``group_flushes`` (grouped rules' digests, SPEC §7.2); migration 8 the index
``rate_turns_holder`` (a turn reads its holder's rows by index, not the whole queue).
"""

from __future__ import annotations

from typing import Any

SCHEMA_LOCK = 0x62696C6C6E6F7469
"""The advisory lock key held while migrating (``billnoti`` as a big-endian int64)."""

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE snapshots (
        source TEXT NOT NULL,
        entity TEXT NOT NULL,
        id TEXT NOT NULL,
        record TEXT NOT NULL,
        marks TEXT NOT NULL DEFAULT '[]',
        due_at TIMESTAMPTZ,
        version INTEGER NOT NULL DEFAULT 1,
        dirty BOOLEAN NOT NULL DEFAULT TRUE,
        updated_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (source, entity, id)
    );
    CREATE INDEX snapshots_due ON snapshots (source, entity, due_at)
        WHERE due_at IS NOT NULL;
    CREATE INDEX snapshots_dirty ON snapshots (source) WHERE dirty;
    CREATE TABLE cursors (
        source TEXT NOT NULL,
        resource TEXT NOT NULL,
        value TEXT NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (source, resource)
    );
    CREATE TABLE log_head (
        one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
        seq BIGINT NOT NULL
    );
    INSERT INTO log_head (seq) VALUES (0);
    CREATE TABLE events (
        seq BIGINT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        source TEXT NOT NULL,
        subject TEXT NOT NULL,
        time TEXT NOT NULL,
        recorded_at TIMESTAMPTZ NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX events_recorded ON events (recorded_at);
    CREATE TABLE positions (
        consumer TEXT PRIMARY KEY,
        seq BIGINT NOT NULL
    );
    CREATE TABLE deliveries (
        id TEXT PRIMARY KEY,
        rule TEXT NOT NULL,
        action_index INTEGER NOT NULL,
        action_type TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event_seq BIGINT NOT NULL,
        exactly_once BOOLEAN NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TIMESTAMPTZ,
        last_error TEXT,
        last_status_code INTEGER,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        rendered TEXT,
        note TEXT,
        claimed_by TEXT
    );
    CREATE INDEX deliveries_due ON deliveries (next_attempt_at, event_seq)
        WHERE status IN ('pending', 'retry_scheduled');
    CREATE INDEX deliveries_active ON deliveries (created_at)
        WHERE status IN ('pending', 'retry_scheduled', 'sending');
    CREATE INDEX deliveries_created ON deliveries (created_at, event_seq);
    CREATE INDEX deliveries_changed ON deliveries (status, updated_at);
    CREATE TABLE attempts (
        delivery_id TEXT NOT NULL,
        number INTEGER NOT NULL,
        started_at TIMESTAMPTZ NOT NULL,
        finished_at TIMESTAMPTZ,
        outcome TEXT,
        status_code INTEGER,
        error TEXT,
        PRIMARY KEY (delivery_id, number)
    );
    CREATE TABLE endpoints (
        name TEXT PRIMARY KEY,
        disabled_at TIMESTAMPTZ NOT NULL,
        reason TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE instances (
        name TEXT PRIMARY KEY,
        started_at TIMESTAMPTZ NOT NULL,
        heartbeat_at TIMESTAMPTZ NOT NULL,
        info JSONB NOT NULL DEFAULT '{}'
    );
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX deliveries_sending ON deliveries (claimed_by) WHERE status = 'sending';
    """,
    """
    CREATE TABLE operator_actions (
        id BIGSERIAL PRIMARY KEY,
        at TIMESTAMPTZ NOT NULL,
        who TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        result TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX operator_actions_subject ON operator_actions (subject, at);
    """,
    """
    CREATE TABLE delivery_results (
        delivery_id TEXT PRIMARY KEY,
        result TEXT NOT NULL,
        recorded_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX deliveries_chained ON deliveries (created_at)
        WHERE status IN ('waiting', 'skipped');
    """,
    """
    CREATE TABLE rate_turns (
        id BIGSERIAL PRIMARY KEY,
        key TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        holder TEXT
    );
    CREATE INDEX rate_turns_key ON rate_turns (key, at);
    """,
    """
    CREATE TABLE rule_groups (
        rule TEXT NOT NULL,
        key TEXT NOT NULL,
        opened_at TIMESTAMPTZ NOT NULL,
        flush_at TIMESTAMPTZ NOT NULL,
        flushes INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (rule, key)
    );
    CREATE INDEX rule_groups_due ON rule_groups (flush_at);
    CREATE TABLE group_members (
        rule TEXT NOT NULL,
        event_id TEXT NOT NULL,
        key TEXT NOT NULL,
        event_seq BIGINT NOT NULL,
        flush_id TEXT,
        PRIMARY KEY (rule, event_id)
    );
    CREATE INDEX group_members_open ON group_members (rule, key, event_seq)
        WHERE flush_id IS NULL;
    CREATE TABLE group_flushes (
        id TEXT PRIMARY KEY,
        rule TEXT NOT NULL,
        key TEXT NOT NULL,
        digest TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL
    );
    """,
    """
    CREATE TABLE console_sessions (
        key TEXT PRIMARY KEY,
        who TEXT NOT NULL,
        mark TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        seen_at TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL,
        flash TEXT NOT NULL DEFAULT ''
    );
    """,
    """
    CREATE INDEX rate_turns_holder ON rate_turns (key, holder);
    """,
)
"""Migration N (from 1) is ``MIGRATIONS[N - 1]``; append, never edit a released one."""

SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(conn: Any) -> tuple[int, int]:
    """Bring the schema on ``conn`` (an asyncpg connection) up to :data:`SCHEMA_VERSION`.

    Returns:
        (version found, version now).

    Raises:
        ValueError: the database's schema is newer than this code knows.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", SCHEMA_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        found = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
        if found > SCHEMA_VERSION:
            raise ValueError(
                f"its schema is version {found}, newer than this billnotify's {SCHEMA_VERSION}"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            async with conn.transaction():
                await conn.execute(MIGRATIONS[version - 1])
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
        return found, SCHEMA_VERSION
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", SCHEMA_LOCK)
