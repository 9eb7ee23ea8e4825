-- The shared record of a fleet (SPEC section 7). Every row names the host
-- that wrote it and the service it watches. Each host's local SQLite file
-- stays its own journal; this database is what the hosts share. Forward-only;
-- sqlx runs these under PostgreSQL's advisory lock, so two hosts starting
-- at once do not race.

-- One row per daemon (host, service): its heartbeat.
CREATE TABLE hosts (
    host TEXT NOT NULL,
    service TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    seen_ms BIGINT NOT NULL,
    -- The fastest probe interval: a host silent for 3 of them is shown silent.
    interval_ms BIGINT NOT NULL,
    active_color TEXT,
    active_version TEXT,
    worst_state TEXT,
    worst_rule TEXT,
    open_incidents INTEGER NOT NULL DEFAULT 0,
    last_sample_ms BIGINT,
    leader BOOLEAN NOT NULL DEFAULT FALSE,
    backlog BIGINT NOT NULL DEFAULT 0,
    dropped BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (service, host)
);

CREATE TABLE samples (
    host TEXT NOT NULL,
    service TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    probe TEXT NOT NULL,
    color TEXT,
    ok BOOLEAN NOT NULL,
    latency_ms DOUBLE PRECISION,
    status TEXT NOT NULL,
    detail TEXT NOT NULL,
    requests DOUBLE PRECISION,
    errors DOUBLE PRECISION
);
CREATE INDEX samples_by_service_time ON samples (service, at_ms);

-- Incidents as each host's journal numbers them.
CREATE TABLE incidents (
    host TEXT NOT NULL,
    service TEXT NOT NULL,
    id BIGINT NOT NULL,
    opened_ms BIGINT NOT NULL,
    closed_ms BIGINT,
    trigger_kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    rule TEXT,
    reason TEXT NOT NULL,
    from_color TEXT,
    to_color TEXT,
    from_version TEXT,
    to_version TEXT,
    state TEXT NOT NULL,
    outcome TEXT,
    in_flight BOOLEAN NOT NULL,
    PRIMARY KEY (service, host, id)
);

CREATE TABLE deployments (
    host TEXT NOT NULL,
    service TEXT NOT NULL,
    id BIGINT NOT NULL,
    color TEXT NOT NULL,
    version TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (service, host, id)
);

-- A version rolled back anywhere is quarantined for its service everywhere
-- until an operator lifts it (the lift is kept, not deleted).
CREATE TABLE quarantine (
    seq BIGSERIAL PRIMARY KEY,
    service TEXT NOT NULL,
    version TEXT NOT NULL,
    host TEXT NOT NULL,
    incident BIGINT,
    at_ms BIGINT NOT NULL,
    lifted_ms BIGINT,
    lifted_by TEXT,
    lift_reason TEXT
);
CREATE UNIQUE INDEX quarantine_one_standing
    ON quarantine (service, version) WHERE lifted_ms IS NULL;
