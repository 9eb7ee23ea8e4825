-- rollbackd's first schema: deployments, samples, verdicts, incidents with
-- their timeline, pauses, and the per-minute rollups that outlive raw samples.
-- Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE deployments (
    id          INTEGER PRIMARY KEY,
    color       TEXT    NOT NULL CHECK (color IN ('blue', 'green')),
    version     TEXT    NOT NULL,
    at_ms       INTEGER NOT NULL,
    source      TEXT    NOT NULL,          -- cli | active-file | rollback | demo
    quarantined INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX deployments_at ON deployments (at_ms);

CREATE TABLE samples (
    id            INTEGER PRIMARY KEY,
    at_ms         INTEGER NOT NULL,
    probe         TEXT    NOT NULL,
    color         TEXT,                    -- NULL: a shared probe
    deployment_id INTEGER,
    ok            INTEGER NOT NULL,
    latency_ms    REAL,
    status        TEXT    NOT NULL,        -- ok | failed | timeout | no_data
    detail        TEXT    NOT NULL DEFAULT '',
    requests      REAL,
    errors        REAL
);
CREATE INDEX samples_probe_color_at ON samples (probe, color, at_ms);
CREATE INDEX samples_at ON samples (at_ms);

CREATE TABLE rollups (
    probe       TEXT    NOT NULL,
    color       TEXT    NOT NULL DEFAULT '',
    minute_ms   INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    failures    INTEGER NOT NULL,
    latency_avg REAL,
    latency_p95 REAL,
    latency_max REAL,
    PRIMARY KEY (probe, color, minute_ms)
);

CREATE TABLE verdicts (
    id         INTEGER PRIMARY KEY,
    at_ms      INTEGER NOT NULL,
    rule       TEXT    NOT NULL,
    severity   TEXT    NOT NULL,
    color      TEXT    NOT NULL,
    state      TEXT    NOT NULL,           -- fired | clear | inconclusive
    n          INTEGER NOT NULL,
    value      REAL,
    threshold  REAL    NOT NULL,
    window_ms  INTEGER NOT NULL,
    baseline   REAL,
    detail     TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX verdicts_rule_color_at ON verdicts (rule, color, at_ms);

CREATE TABLE incidents (
    id            INTEGER PRIMARY KEY,
    opened_ms     INTEGER NOT NULL,
    closed_ms     INTEGER,
    trigger_kind  TEXT    NOT NULL,        -- automatic | manual
    severity      TEXT    NOT NULL,
    rule          TEXT,
    reason        TEXT    NOT NULL,
    evidence      TEXT    NOT NULL DEFAULT '{}',
    from_color    TEXT,
    to_color      TEXT,
    from_version  TEXT,
    to_version    TEXT,
    state         TEXT    NOT NULL,        -- requested | target_verified | switching | switched | verified | refused | failed | escalated
    outcome       TEXT,
    downtime_ms   INTEGER,
    -- 1 while a rollback is in flight, NULL otherwise: the unique index below
    -- makes "two rollbacks at once" impossible across processes.
    in_flight     INTEGER
);
CREATE UNIQUE INDEX incidents_one_in_flight ON incidents (in_flight) WHERE in_flight IS NOT NULL;

CREATE TABLE incident_events (
    id          INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    at_ms       INTEGER NOT NULL,
    state       TEXT    NOT NULL,
    message     TEXT    NOT NULL
);
CREATE INDEX incident_events_incident ON incident_events (incident_id, at_ms);

CREATE TABLE pauses (
    id         INTEGER PRIMARY KEY,
    at_ms      INTEGER NOT NULL,
    until_ms   INTEGER NOT NULL,
    reason     TEXT    NOT NULL,
    resumed_ms INTEGER
);
