-- The process group of a rollback's switch command, written as soon as the
-- command starts: a restart after the daemon died mid-switch waits for that
-- group (or kills it at the timeout) instead of guessing. Older versions
-- wrote it only as prose on the timeline; for their rows this stays NULL
-- and `rollback` reads the prose instead.
ALTER TABLE incidents ADD COLUMN switch_pgid INTEGER;
