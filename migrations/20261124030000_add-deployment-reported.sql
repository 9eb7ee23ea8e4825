-- When a deployment's post-deploy report was sent (after [rollback] bake),
-- so it is sent once, across restarts and processes.
ALTER TABLE deployments ADD COLUMN reported_ms INTEGER;
