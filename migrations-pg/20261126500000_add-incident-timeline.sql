-- An incident's whole record in the shared database: its evidence, its
-- downtime and its timeline, so `incident show N --all-hosts --host H` on
-- any host shows what H's own `incident show N` shows. Events keep the id
-- their host's journal gave them: shipping one twice writes it once.
ALTER TABLE incidents ADD COLUMN evidence TEXT NOT NULL DEFAULT '{}';
ALTER TABLE incidents ADD COLUMN downtime_ms BIGINT;

CREATE TABLE incident_events (
    host TEXT NOT NULL,
    service TEXT NOT NULL,
    id BIGINT NOT NULL,
    incident_id BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (service, host, id)
);
CREATE INDEX incident_events_by_incident ON incident_events (service, host, incident_id, at_ms);
