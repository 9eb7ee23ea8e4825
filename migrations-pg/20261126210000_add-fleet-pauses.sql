-- Holds on automatic rollbacks (`rollbackd pause`), shared: a pause made
-- on one host holds every daemon of the service (a follower that takes the
-- lead during maintenance must not switch). Each pause belongs to the host
-- that made it; `rollbackd resume` there ends it.
CREATE TABLE pauses (
    host TEXT NOT NULL,
    service TEXT NOT NULL,
    id BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    until_ms BIGINT NOT NULL,
    reason TEXT NOT NULL,
    resumed_ms BIGINT,
    PRIMARY KEY (service, host, id)
);
