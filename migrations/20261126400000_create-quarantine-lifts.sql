-- An operator's `rollbackd quarantine lift`: which version, when, by whom
-- (user@host) and why. Kept, never deleted: the journal says why a version
-- that was rolled back may be restored again.
CREATE TABLE quarantine_lifts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    lifted_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    -- How many deployments of the version were quarantined and are no more.
    deployments INTEGER NOT NULL
);
