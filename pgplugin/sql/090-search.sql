-- Search: rows of a table most similar to a query vector or to another row.

-- The vectorizer of a table (by name when the table has several).
CREATE OR REPLACE FUNCTION rowembed._vectorizer_for(row_type regtype, vectorizer text)
RETURNS rowembed.vectorizer
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    rel regclass;
    found_ rowembed.vectorizer;
    names text;
BEGIN
    SELECT t.typrelid::regclass INTO rel FROM pg_type t WHERE t.oid = row_type AND t.typrelid <> 0;
    IF rel IS NULL THEN
        RAISE EXCEPTION 'rowembed: % is not a table row type', row_type
            USING HINT = 'Pass a row of the table, or NULL::your_table.';
    END IF;
    IF vectorizer IS NOT NULL THEN
        SELECT * INTO found_ FROM rowembed.vectorizer AS z WHERE z.name = vectorizer AND z.source = rel;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'rowembed: table % has no vectorizer named %', rel, vectorizer;
        END IF;
        RETURN found_;
    END IF;
    -- A replacement being built (alter_vectorizer) is only used by name.
    SELECT string_agg(z.name, ', ') INTO names FROM rowembed.vectorizer AS z
     WHERE z.source = rel AND z.replaces IS NULL;
    IF names IS NULL THEN
        RAISE EXCEPTION 'rowembed: table % has no vectorizer', rel
            USING HINT = 'Create one with rowembed.create_vectorizer().';
    END IF;
    SELECT * INTO found_ FROM rowembed.vectorizer AS z WHERE z.source = rel AND z.replaces IS NULL;
    IF (SELECT count(*) FROM rowembed.vectorizer AS z
         WHERE z.source = rel AND z.replaces IS NULL) > 1 THEN
        RAISE EXCEPTION 'rowembed: table % has several vectorizers (%)', rel, names
            USING HINT = 'Pass vectorizer => ''name''.';
    END IF;
    RETURN found_;
END
$body$;

-- The threshold in force: the call's, else the session's rowembed.min_similarity,
-- else the vectorizer's default.
CREATE OR REPLACE FUNCTION rowembed._threshold(v rowembed.vectorizer, min_similarity float8)
RETURNS float8
LANGUAGE sql STABLE AS $$
    SELECT coalesce(min_similarity,
                    nullif(current_setting('rowembed.min_similarity', true), '')::float8,
                    v.min_similarity)
$$;

-- The cosine distance of column `col` to the query vector $1, in the column's type.
CREATE OR REPLACE FUNCTION rowembed._distance_sql(v rowembed.vectorizer, col text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format('(%s OPERATOR(@extschema:vector@.<=>) $1::@extschema:vector@.%s(%s))', col, v.storage, v.dimensions)
$$;

-- Candidates the index returns for k results: k, or with a binary-quantized
-- index k times the session's rowembed.rescore_factor (else 40), re-scored
-- exactly. Refuses a k below 1.
CREATE OR REPLACE FUNCTION rowembed._candidates(v rowembed.vectorizer, k int) RETURNS int
LANGUAGE plpgsql STABLE AS $body$
BEGIN
    IF k IS NULL OR k < 1 THEN
        RAISE EXCEPTION 'rowembed: k must be at least 1';
    END IF;
    RETURN CASE WHEN v.index_method = 'hnsw_binary'
        THEN k * greatest(1, coalesce(
            nullif(current_setting('rowembed.rescore_factor', true), '')::int, 40))
        ELSE k END;
END
$body$;

-- The candidates behind search() and similar(): (similarity, s, chunk, chunk_start,
-- chunk_end, key) of the $6 embeddings nearest the query vector $1 whose source
-- row passes the filter. Parameters: $1 query vector, $4 a row to leave out
-- (similar()), $5 a jsonb filter on the source row (to_jsonb(row) @> filter), $6
-- candidates. The index answers the ORDER BY ... LIMIT, joined to the source so a
-- filter is applied while the index is walked (with pgvector's iterative scan, a
-- selective filter still yields $6 rows); with a binary-quantized index it orders
-- by hamming distance and the similarity is exact. A chunked vectorizer's
-- candidates are chunks, several per row.
CREATE OR REPLACE FUNCTION rowembed._candidates_sql(v rowembed.vectorizer, exclude_row boolean)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format(
        'SELECT 1 - %1$s AS similarity, s, %7$s, (%8$s) AS key FROM %2$s AS e'
        ' JOIN %3$s AS s ON %4$s'
        ' WHERE ($5 IS NULL OR to_jsonb(s) @> $5) %5$s'
        ' ORDER BY %6$s LIMIT $6',
        rowembed._distance_sql(v, format('e.%I', v.embedding_column)),
        rowembed._qualified(v.destination), rowembed._qualified(v.source),
        rowembed._equal(v.pk_columns, 'e', 's'),
        CASE WHEN exclude_row THEN format('AND (%s) IS DISTINCT FROM (%s)',
            rowembed._columns(v.pk_columns, 's'),
            rowembed._columns(v.pk_columns, '($4)'))
        ELSE '' END,
        CASE WHEN v.index_method = 'hnsw_binary' AND v.index_state = 'built'
            THEN format('@extschema:vector@.binary_quantize(e.%1$I)::bit(%2$s) OPERATOR(@extschema:vector@.<~>)'
                        ' @extschema:vector@.binary_quantize($1)::bit(%2$s)',
                        v.embedding_column, v.dimensions)
            ELSE rowembed._distance_sql(v, format('e.%I', v.embedding_column)) END,
        CASE WHEN v.chunking = 'none'
            THEN 'NULL::int AS chunk, NULL::int AS chunk_start, NULL::int AS chunk_end'
            ELSE 'e.chunk, e.chunk_start, e.chunk_end' END,
        'ROW(' || rowembed._columns(v.pk_columns, 's') || ')')
$$;

-- The query behind search() and similar(): the candidates, each row's best chunk
-- (a chunked vectorizer), at or above the threshold $3, the best $2 first, with
-- the chunk's text as the snippet.
CREATE OR REPLACE FUNCTION rowembed._search_sql(v rowembed.vectorizer, exclude_row boolean)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format(
        'SELECT h.similarity, h.s, h.chunk, h.chunk_start, h.chunk_end, %2$s'
        '  FROM (%1$s) AS h'
        ' WHERE h.similarity >= $3'
        ' ORDER BY h.similarity DESC LIMIT $2',
        CASE WHEN v.chunking = 'none' THEN rowembed._candidates_sql(v, exclude_row)
            ELSE format('SELECT DISTINCT ON (c.key) * FROM (%s) AS c'
                        ' ORDER BY c.key, c.similarity DESC',
                        rowembed._candidates_sql(v, exclude_row)) END,
        CASE WHEN v.chunking = 'none' THEN 'NULL::text'
            ELSE format('substr(%s, h.chunk_start + 1, h.chunk_end - h.chunk_start)',
                        rowembed._columns_text_sql(v, '(h.s)')) END)
$$;

-- Candidates for k rows: k, or with a binary-quantized index k times the
-- rowembed.rescore_factor (else 40). A chunked vectorizer's rows hold several
-- chunks: the candidates grow (at most 8 rounds of four times as many) until
-- they hold k rows or all there are. Parameters as _search_sql's.
CREATE OR REPLACE FUNCTION rowembed._candidates_for_rows(
    v rowembed.vectorizer, exclude_row boolean, query @extschema:vector@.vector, k int, item anyelement,
    filter jsonb)
RETURNS int
LANGUAGE plpgsql AS $body$
DECLARE
    wanted int := rowembed._candidates(v, k);
    candidates int := wanted;
    found_rows bigint;
    found_chunks bigint;
    old text[];
BEGIN
    IF v.chunking = 'none' THEN
        RETURN candidates;
    END IF;
    FOR round IN 1..8 LOOP
        old := rowembed._search_settings(candidates, true);
        EXECUTE format('SELECT count(DISTINCT c.key), count(*) FROM (%s) AS c',
                       rowembed._candidates_sql(v, exclude_row))
            INTO found_rows, found_chunks USING query, k, NULL::float8, item, filter, candidates;
        PERFORM rowembed._restore_search_settings(old);
        EXIT WHEN found_rows >= wanted OR found_chunks < candidates;
        candidates := candidates * 4;
    END LOOP;
    RETURN candidates;
END
$body$;

-- pgvector's setting; NULL-safe before the extension's library is loaded in a session.
CREATE OR REPLACE FUNCTION rowembed._ef_search() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('hnsw.ef_search', true), '40')
$$;

-- The HNSW search width for k candidates, for this call only: the session's
-- rowembed.ef_search, else 200 (pgvector's default of 40 costs 1.5 points of
-- recall@10 on real embeddings: bench/storage_recall.py), and at least 2k (an HNSW scan returns at
-- most ef_search rows), at most 1,000 (pgvector's limit); a larger
-- hnsw.ef_search the session set is kept.
CREATE OR REPLACE FUNCTION rowembed._ef_search_for(k int) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT greatest(
        least(greatest(coalesce(nullif(current_setting('rowembed.ef_search', true), '')::int, 200),
                       2 * k),
              1000),
        rowembed._ef_search()::int)::text
$$;

-- pgvector's settings for one search: ef_search raised for large k, and an
-- iterative scan when a filter may discard candidates. Returns the old values.
CREATE OR REPLACE FUNCTION rowembed._search_settings(k int, filtered boolean) RETURNS text[]
LANGUAGE plpgsql AS $body$
DECLARE
    old text[] := ARRAY[rowembed._ef_search(),
                        CASE WHEN filtered THEN current_setting('hnsw.iterative_scan') END];
BEGIN
    PERFORM set_config('hnsw.ef_search', rowembed._ef_search_for(k), true);
    IF filtered THEN
        PERFORM set_config('hnsw.iterative_scan', 'strict_order', true);
    END IF;
    RETURN old;
END
$body$;

CREATE OR REPLACE FUNCTION rowembed._restore_search_settings(old text[]) RETURNS void
LANGUAGE plpgsql AS $body$
BEGIN
    PERFORM set_config('hnsw.ef_search', old[1], true);
    IF old[2] IS NOT NULL THEN
        PERFORM set_config('hnsw.iterative_scan', old[2], true);
    END IF;
END
$body$;

-- Rows of a table most similar to a query vector, best first, at or above the
-- threshold. Usage: SELECT similarity, (item).* FROM rowembed.search(NULL::docs, $1, 10)
CREATE OR REPLACE FUNCTION rowembed.search(
    source anyelement,
    query @extschema:vector@.vector,
    k int DEFAULT 10,
    min_similarity float8 DEFAULT NULL,
    vectorizer text DEFAULT NULL,
    filter jsonb DEFAULT NULL)
RETURNS TABLE (similarity float8, item anyelement, chunk int, chunk_start int, chunk_end int,
               snippet text)
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_for(pg_typeof(source), vectorizer);
    candidates int := rowembed._candidates_for_rows(v, false, query, k, source, filter);
    old text[];
BEGIN
    old := rowembed._search_settings(candidates, filter IS NOT NULL OR v.chunking <> 'none');
    RETURN QUERY EXECUTE rowembed._search_sql(v, false)
        USING query, k, rowembed._threshold(v, min_similarity), NULL::text, filter, candidates;
    PERFORM rowembed._restore_search_settings(old);
END
$body$;

-- Rows most similar to a given row (by its stored embedding), the row itself left out.
-- Usage: SELECT s.similarity, (s.similar_item).* FROM docs d, rowembed.similar(d, 5) s
--        WHERE d.id = 42
CREATE OR REPLACE FUNCTION rowembed.similar(
    item anyelement,
    k int DEFAULT 10,
    min_similarity float8 DEFAULT NULL,
    vectorizer text DEFAULT NULL,
    filter jsonb DEFAULT NULL)
RETURNS TABLE (similarity float8, similar_item anyelement, chunk int, chunk_start int,
               chunk_end int, snippet text)
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_for(pg_typeof(item), vectorizer);
    candidates int;
    old text[];
    query @extschema:vector@.vector;
BEGIN
    -- A chunked row is compared by the mean of its chunks.
    EXECUTE format('SELECT @extschema:vector@.avg(%I)::@extschema:vector@.vector FROM %s WHERE (%s) = (%s)',
        v.embedding_column, rowembed._qualified(v.destination), rowembed._columns(v.pk_columns),
        rowembed._columns(v.pk_columns, '($1)'))
        INTO query USING item;
    IF query IS NULL THEN
        RETURN;  -- the row has no embedding (yet, or its text is empty)
    END IF;
    -- Leaving the row out is a filter.
    candidates := rowembed._candidates_for_rows(v, true, query, k, item, filter);
    old := rowembed._search_settings(candidates, true);
    RETURN QUERY EXECUTE rowembed._search_sql(v, true)
        USING query, k, rowembed._threshold(v, min_similarity), item, filter, candidates;
    PERFORM rowembed._restore_search_settings(old);
END
$body$;

-- The plan search() runs, to check that the HNSW index answers it.
CREATE OR REPLACE FUNCTION rowembed.explain_search(
    source anyelement,
    query @extschema:vector@.vector,
    k int DEFAULT 10,
    vectorizer text DEFAULT NULL,
    filter jsonb DEFAULT NULL)
RETURNS SETOF text
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_for(pg_typeof(source), vectorizer);
    candidates int := rowembed._candidates_for_rows(v, false, query, k, source, filter);
    old text[] := rowembed._search_settings(candidates, filter IS NOT NULL OR v.chunking <> 'none');
BEGIN
    RETURN QUERY EXECUTE 'EXPLAIN (COSTS OFF) ' || rowembed._search_sql(v, false)
        USING query, k, rowembed._threshold(v, NULL), NULL::text, filter, candidates;
    PERFORM rowembed._restore_search_settings(old);
END
$body$;

-- The text a vectorizer embeds for a row of its table (what a reranker reads).
CREATE OR REPLACE FUNCTION rowembed.embedded_text(item anyelement, vectorizer text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_for(pg_typeof(item), vectorizer);
    embedded text;
BEGIN
    EXECUTE format('SELECT %s FROM (SELECT ($1).*) AS s', rowembed._text_sql(v, 's'))
        INTO embedded USING item;
    RETURN embedded;
END
$body$;
