-- An event row may stand for several events of one kind (refused creates, counted per minute in
-- the seat store and moved here by the sweep).
ALTER TABLE session_events ADD COLUMN count BIGINT NOT NULL DEFAULT 1;
