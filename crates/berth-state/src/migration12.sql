-- berth state, version 12: a session may open one app host (a route with auth = "berth")
-- instead of the console (NULL is a console session), and records whether its login took a
-- second factor.
ALTER TABLE sessions ADD COLUMN host TEXT;
ALTER TABLE sessions ADD COLUMN second_factor INTEGER NOT NULL DEFAULT 0;
