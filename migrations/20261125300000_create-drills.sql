-- `rollbackd drill`: one row per rehearsal. While a drill runs (from
-- started_ms until ended_ms, or deadline_ms if the drill process died), the
-- daemon withholds its notifications unless `notify` is 1, and `report`
-- leaves the drill's samples out of availability. Incidents opened during a
-- drill carry its id.
CREATE TABLE drills (
    id           INTEGER PRIMARY KEY,
    started_ms   INTEGER NOT NULL,
    deadline_ms  INTEGER NOT NULL,          -- started_ms + timeout + restore budget
    ended_ms     INTEGER,
    inject       TEXT    NOT NULL,          -- the fault argv, as JSON
    expect       TEXT    NOT NULL,          -- rollback | alert | nothing
    notify       INTEGER NOT NULL DEFAULT 0,
    observed     TEXT,                      -- rollback | rollback_failed | alert | nothing
    matched      INTEGER
);
CREATE INDEX drills_started ON drills (started_ms);
ALTER TABLE incidents ADD COLUMN drill_id INTEGER REFERENCES drills (id);
