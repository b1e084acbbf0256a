-- berth state, version 2: maintenance mode per app.
ALTER TABLE apps ADD COLUMN maintenance TEXT;
