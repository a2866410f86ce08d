-- Model facts for create_vectorizer's defaults, read from rowembed.model_family
-- (written by `rowembed migrate` from rowembed/families.py, their one source).

-- The family of a model: the first, by rank, whose pattern matches its name.
CREATE OR REPLACE FUNCTION rowembed._family_of(model text) RETURNS rowembed.model_family
LANGUAGE sql STABLE AS $$
    SELECT f FROM rowembed.model_family AS f WHERE model ~* f.pattern ORDER BY f.rank LIMIT 1
$$;

-- The output size of a known model (by the last part of its name), else NULL.
CREATE OR REPLACE FUNCTION rowembed.model_dimensions(model text) RETURNS int
LANGUAGE sql STABLE AS $$
    SELECT ((rowembed._family_of(model)).dimensions ->> regexp_replace(model, '^.*/', ''))::int
$$;

-- The prefix a model's queries take (bge v1.5 English: never on passages).
CREATE OR REPLACE FUNCTION rowembed.default_query_instruction(model text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce((rowembed._family_of(model)).query_instruction, '')
$$;

-- The prefix a model's passages (the rows) take (e5: 'passage: ').
CREATE OR REPLACE FUNCTION rowembed.default_passage_instruction(model text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce((rowembed._family_of(model)).passage_instruction, '')
$$;

-- A starting threshold only: calibrate on your own data (README, "Thresholds").
CREATE OR REPLACE FUNCTION rowembed.default_min_similarity(model text) RETURNS float8
LANGUAGE sql STABLE AS $$
    SELECT (rowembed._family_of(model)).min_similarity
$$;
