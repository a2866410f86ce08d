-- rowembed 0008: alter_vectorizer takes rerank_model and max_attempts, and
-- changes the options only queries read in place (sql/075-model-change.sql).
DROP FUNCTION IF EXISTS rowembed.alter_vectorizer(
    text, text, int, text, int, int, int, text, text, float8, text, text, boolean);
