"""The SQLite schema, applied idempotently at start-up, and the upgrades of older files.

:data:`SCHEMA` is the whole current schema: a new state is made with it, and running it
on an older state adds the tables and indexes that state lacks (``IF NOT EXISTS``). What
it cannot add to an existing table (a column) is an upgrade in :data:`UPGRADES`, run
once, in the transaction that opens the older state and marks it with the new version.
"""

SCHEMA_VERSION = 7

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    source TEXT NOT NULL,
    entity TEXT NOT NULL,
    id TEXT NOT NULL,
    record TEXT NOT NULL,
    marks TEXT NOT NULL DEFAULT '[]',
    due_at REAL,
    version INTEGER NOT NULL DEFAULT 1,
    dirty INTEGER NOT NULL DEFAULT 1,
    updated_at REAL NOT NULL,
    PRIMARY KEY (source, entity, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS snapshots_due ON snapshots (source, entity, due_at)
    WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS snapshots_dirty ON snapshots (dirty) WHERE dirty = 1;
CREATE TABLE IF NOT EXISTS cursors (
    source TEXT NOT NULL,
    resource TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (source, resource)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    source TEXT NOT NULL,
    subject TEXT NOT NULL,
    time TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_recorded ON events (recorded_at);
CREATE TABLE IF NOT EXISTS positions (
    consumer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    action_index INTEGER NOT NULL,
    action_type TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_seq INTEGER NOT NULL,
    exactly_once INTEGER NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_error TEXT,
    last_status_code INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    rendered TEXT,
    note TEXT,
    claimed_by TEXT
);
DROP INDEX IF EXISTS deliveries_due;
DROP INDEX IF EXISTS deliveries_event;
CREATE INDEX IF NOT EXISTS deliveries_active ON deliveries (next_attempt_at, event_seq)
    WHERE status IN ('pending', 'retry_scheduled', 'sending');
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT,
    status_code INTEGER,
    error TEXT,
    PRIMARY KEY (delivery_id, number)
);
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY,
    disabled_at REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS operator_actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS operator_actions_subject ON operator_actions (subject, at);
CREATE TABLE IF NOT EXISTS delivery_results (
    delivery_id TEXT PRIMARY KEY,
    result TEXT NOT NULL,
    recorded_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_chained ON deliveries (created_at)
    WHERE status IN ('waiting', 'skipped');
CREATE TABLE IF NOT EXISTS rule_groups (
    rule TEXT NOT NULL,
    key TEXT NOT NULL,
    opened_at REAL NOT NULL,
    flush_at REAL NOT NULL,
    flushes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (rule, key)
);
CREATE INDEX IF NOT EXISTS rule_groups_due ON rule_groups (flush_at);
CREATE TABLE IF NOT EXISTS group_members (
    rule TEXT NOT NULL,
    event_id TEXT NOT NULL,
    key TEXT NOT NULL,
    event_seq INTEGER NOT NULL,
    flush_id TEXT,
    PRIMARY KEY (rule, event_id)
);
CREATE INDEX IF NOT EXISTS group_members_open ON group_members (rule, key, event_seq)
    WHERE flush_id IS NULL;
CREATE TABLE IF NOT EXISTS group_flushes (
    id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    key TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    name TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    info TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rate_turns (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    at REAL NOT NULL,
    holder TEXT
);
CREATE INDEX IF NOT EXISTS rate_turns_key ON rate_turns (key, at);
CREATE INDEX IF NOT EXISTS rate_turns_holder ON rate_turns (key, holder);
CREATE TABLE IF NOT EXISTS console_sessions (
    key TEXT PRIMARY KEY,
    who TEXT NOT NULL,
    mark TEXT NOT NULL,
    created_at REAL NOT NULL,
    seen_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    flash TEXT NOT NULL DEFAULT ''
);
"""

UPGRADES: dict[int, str] = {
    2: "ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;",
    3: "",  # delivery_results and the deliveries_chained index come with SCHEMA
    4: "",  # rate_turns (rate limits' turns) comes with SCHEMA
    5: "",  # rule_groups, group_members and group_flushes come with SCHEMA
    6: "",  # console_sessions comes with SCHEMA
    7: "",  # rate_turns_holder (a turn finds its holder's rows by index) comes with SCHEMA
}
"""Version -> what brings a state of the version before it there (beyond :data:`SCHEMA`)."""
