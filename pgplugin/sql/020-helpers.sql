-- Helpers for building statements: quoted column lists, join conditions,
-- qualified names, row estimates, and the embedded text of a row.

-- 'p.a, p.b' (prefix may be empty: 'a, b')
CREATE OR REPLACE FUNCTION rowembed._columns(cols name[], prefix text DEFAULT '')
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg(
        CASE WHEN prefix = '' THEN format('%I', c) ELSE format('%s.%I', prefix, c) END,
        ', ' ORDER BY o)
    FROM unnest(cols) WITH ORDINALITY AS u(c, o)
$$;

-- 'l.a = r.a AND l.b = r.b'
CREATE OR REPLACE FUNCTION rowembed._equal(cols name[], l text, r text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg(format('%s.%I = %s.%I', l, c, r, c), ' AND ' ORDER BY o)
    FROM unnest(cols) WITH ORDINALITY AS u(c, o)
$$;

-- '"schema"."table"' for a relation, whatever the caller's search_path
CREATE OR REPLACE FUNCTION rowembed._qualified(rel regclass)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT format('%I.%I', n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = rel
$$;

-- An estimate of a table's rows: the planner's, else a count that stops at cap.
CREATE OR REPLACE FUNCTION rowembed._row_estimate(rel regclass, cap bigint) RETURNS bigint
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    n bigint;
BEGIN
    SELECT c.reltuples::bigint INTO n FROM pg_class c WHERE c.oid = rel;
    IF n < 0 THEN  -- never vacuumed or analyzed
        EXECUTE format('SELECT count(*) FROM (SELECT FROM %s LIMIT $1) AS r', rel) INTO n USING cap;
    END IF;
    RETURN n;
END
$body$;

-- SQL text: the text columns of `alias` joined by the separator, what a chunk's
-- offsets count characters of.
CREATE OR REPLACE FUNCTION rowembed._columns_text_sql(v rowembed.vectorizer, alias text)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format('concat_ws(%L, %s)', v.separator,
                  string_agg(format('%s.%I::text', alias, c), ', ' ORDER BY o))
    FROM unnest(v.text_columns) WITH ORDINALITY AS u(c, o)
$$;

-- The embedded text of a row: the vectorizer's passage instruction, then its text
-- columns (of the row aliased `alias`) joined by its separator; NULL when those
-- are blank (nothing to embed). The worker reads it and the backfill compares its
-- hash: one definition for both.
CREATE OR REPLACE FUNCTION rowembed._text_sql(v rowembed.vectorizer, alias text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format('%s rowembed._nonblank(%s)',
                  CASE WHEN v.passage_instruction <> ''
                       THEN format('%L ||', v.passage_instruction) ELSE '' END,
                  rowembed._columns_text_sql(v, alias))
$$;

CREATE OR REPLACE FUNCTION rowembed._nonblank(t text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN t ~ '[^[:space:]]' THEN t END $$;

-- What an embedding's text_hash holds: the md5 of the embedded text.
CREATE OR REPLACE FUNCTION rowembed._text_hash(t text) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$ SELECT decode(md5(t), 'hex') $$;

-- Vectorizer `vectorizer_id`, or an error when there is none the current role
-- may see (it sees those it owns, works or searches).
CREATE OR REPLACE FUNCTION rowembed._vectorizer_of(vectorizer_id int) RETURNS rowembed.vectorizer
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    v rowembed.vectorizer;
BEGIN
    SELECT * INTO v FROM rowembed.vectorizer AS z WHERE z.id = vectorizer_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rowembed: no vectorizer % that % may use', vectorizer_id, current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN v;
END
$body$;
