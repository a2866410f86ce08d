-- rowembed 0012: a model that fails as a whole (missing, the wrong size) is one
-- problem of its vectorizer, not an error on every row: the batch that met it
-- logs why, and status() shows the latest batch's.

ALTER TABLE rowembed.batch_stats ADD COLUMN problem text;
