-- The rest of each host's journal, so that with `[daemon] database` every
-- read command answers from here (SPEC section 7: "the same schema's
-- meaning lives there"): the matrix's verdicts (`status`, `report`), the
-- drills (`report` leaves their samples out of availability), each
-- deployment's quarantine mark, and each sample's deployment. Rows keep the
-- id their host's journal gave them, so shipping one twice writes it once.
CREATE TABLE verdicts (
    host TEXT NOT NULL,
    service TEXT NOT NULL,
    id BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    color TEXT NOT NULL,
    state TEXT NOT NULL,
    n BIGINT NOT NULL,
    value DOUBLE PRECISION,
    threshold DOUBLE PRECISION NOT NULL,
    window_ms BIGINT NOT NULL,
    baseline DOUBLE PRECISION,
    detail TEXT NOT NULL,
    PRIMARY KEY (service, host, id)
);
CREATE INDEX verdicts_by_time ON verdicts (service, host, at_ms);

CREATE TABLE drills (
    host TEXT NOT NULL,
    service TEXT NOT NULL,
    id BIGINT NOT NULL,
    started_ms BIGINT NOT NULL,
    deadline_ms BIGINT NOT NULL,
    ended_ms BIGINT,
    expect TEXT NOT NULL,
    notify BOOLEAN NOT NULL,
    PRIMARY KEY (service, host, id)
);

ALTER TABLE deployments ADD COLUMN quarantined BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE samples ADD COLUMN deployment BIGINT;
CREATE INDEX samples_by_host_time ON samples (service, host, at_ms);
-- Which process runs an in-flight rollback (`incidents --json` shows it).
ALTER TABLE incidents ADD COLUMN holder TEXT;
