-- Which process holds an in-flight rollback ("pid/starttime"), so a rollback
-- whose process died (kill -9 of the daemon, a CLI killed mid-rollback) can
-- be told from one still running, and taken over exactly once.
ALTER TABLE incidents ADD COLUMN holder TEXT;
