-- The capture triggers write a change log that is folded into the queue
-- (sql/030-queue.sql); the dispatcher's change marks are gone with them.
DROP FUNCTION IF EXISTS rowembed.change_marks();
