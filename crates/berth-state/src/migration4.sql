-- berth state, version 4: an app stopped by `berth stop` (its containers stay stopped, its
-- routes answer 503, until `berth start`).
ALTER TABLE apps ADD COLUMN stopped INTEGER NOT NULL DEFAULT 0;
