-- A license's version grows with every write: the seat store keeps the newest policy it was given.
ALTER TABLE licenses ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
-- A removed feature keeps its row, marked, until the sweep has ended its sessions ('revoked'):
-- a slot with active sessions is never out of the sweep's sight.
ALTER TABLE license_features ADD COLUMN removed_at BIGINT;
