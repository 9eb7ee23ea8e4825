-- Each daemon's current verdicts on its active color (rule, severity,
-- state, value, detail) as a JSON array in its heartbeat: `fleet --json`
-- shows what a follower decides as well as what the leader does.
ALTER TABLE hosts ADD COLUMN verdicts TEXT NOT NULL DEFAULT '[]';
