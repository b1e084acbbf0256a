-- berth state, version 12: a session may open one app host (a route with auth = "berth")
-- instead of the console; NULL is a console session.
ALTER TABLE sessions ADD COLUMN host TEXT;
