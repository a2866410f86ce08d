-- Full text and hybrid search. A vectorizer's text columns get a GIN index on
-- the source table itself (an expression index over <home>.rowembed_vz_N_document(),
-- the to_tsvector of the same text the model embeds), so the full text leg is
-- always current and needs no worker; hybrid_search() fuses it with the vector
-- search by reciprocal rank fusion.

-- The name of a vectorizer's full text index (on its source).
CREATE OR REPLACE FUNCTION rowembed._document_name(v rowembed.vectorizer) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT format('_vz_%s_document', v.id) $$;

-- SQL text: the tsvector of a row of the source (`alias`), as the index has it.
CREATE OR REPLACE FUNCTION rowembed._document_sql(v rowembed.vectorizer, alias text)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format('%s(%s)', rowembed._capture_function(v, 'document'),
                  rowembed._columns(v.text_columns, alias))
$$;

-- Indexes a vectorizer's text for full text search in `config` (a text search
-- configuration: 'english', 'simple', 'german', ...), for hybrid_search(). Its
-- text columns must be of text types (an index expression must not depend on
-- settings, as other types' casts to text do). Only the source's owner can; the
-- index is built at once (CREATE INDEX: writes to the source wait meanwhile).
-- Again with another config, the index is rebuilt.
CREATE OR REPLACE FUNCTION rowembed.enable_text_search(name text, config regconfig DEFAULT 'english')
RETURNS void
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_named(name);
    fn text;
    params text;
    positions text;
    not_text text;
BEGIN
    IF NOT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = v.source),
                       'USAGE') THEN
        RAISE EXCEPTION 'rowembed: only the owner of % can index its text', v.source;
    END IF;
    SELECT string_agg(format('%I (%s)', a.attname, format_type(a.atttypid, a.atttypmod)), ', ')
      INTO not_text
      FROM pg_attribute a
     WHERE a.attrelid = v.source AND a.attname = ANY (v.text_columns)
       AND a.atttypid NOT IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype);
    IF not_text IS NOT NULL THEN
        RAISE EXCEPTION 'rowembed: full text search needs text columns; % of % are not', not_text, v.source;
    END IF;
    fn := rowembed._capture_function(v, 'document');
    SELECT string_agg('text', ', '), string_agg(format('$%s', o), ', ' ORDER BY o)
      INTO params, positions
      FROM unnest(v.text_columns) WITH ORDINALITY AS u(c, o);
    PERFORM rowembed.disable_text_search(name);
    EXECUTE format(
        'CREATE FUNCTION %s(%s) RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL SAFE AS %L',
        fn, params,
        format('SELECT pg_catalog.to_tsvector(%L::regconfig, pg_catalog.concat_ws(%L, %s))',
               config::text, v.separator, positions));
    EXECUTE format('CREATE INDEX %I ON %s USING gin (%s)', rowembed._document_name(v), v.source,
                   rowembed._document_sql(v, ''));
    PERFORM rowembed._catalog_set(v.id, jsonb_build_object('text_search', config::oid));
END
$body$;

-- Drops a vectorizer's full text index (with its document function, on which
-- the index depends).
CREATE OR REPLACE FUNCTION rowembed.disable_text_search(name text) RETURNS void
LANGUAGE plpgsql SET client_min_messages = warning AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_named(name);
BEGIN
    EXECUTE format('DROP FUNCTION IF EXISTS %s CASCADE', rowembed._capture_function(v, 'document'));
    IF v.text_search IS NOT NULL THEN
        PERFORM rowembed._catalog_set(v.id, '{"text_search": null}');
    END IF;
END
$body$;

-- Rows of a table by a query text, two ways fused: the vector search (as
-- search_text: threshold, filter) and full text search (rows matching the query
-- as websearch_to_tsquery reads it in the vectorizer's config: all its words,
-- "quoted phrases", or, -exclusions; ranked by ts_rank_cd; the same filter),
-- each `candidates` deep, by reciprocal rank fusion: a row's score is
-- vector_weight / (rrf_k + its vector rank) + text_weight / (rrf_k + its text
-- rank), a leg it is missing from adding nothing. Both legs are index-backed
-- (HNSW, GIN). A chunked vectorizer's rows come with the vector leg's best chunk.
-- Needs enable_text_search().
CREATE OR REPLACE FUNCTION rowembed.hybrid_search(
    source anyelement,
    query text,
    k int DEFAULT 10,
    vectorizer text DEFAULT NULL,
    filter jsonb DEFAULT NULL,
    min_similarity float8 DEFAULT NULL,
    candidates int DEFAULT 100,
    rrf_k float8 DEFAULT 60,
    vector_weight float8 DEFAULT 1,
    text_weight float8 DEFAULT 1,
    timeout_seconds float8 DEFAULT NULL)
RETURNS TABLE (score float8, item anyelement, similarity float8, text_rank float8, chunk int,
               chunk_start int, chunk_end int, snippet text)
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer := rowembed._vectorizer_for(pg_typeof(source), vectorizer);
    query_vector @extschema:vector@.vector;
BEGIN
    IF v.text_search IS NULL THEN
        RAISE EXCEPTION 'rowembed: vectorizer % has no full text index', v.name
            USING HINT = format('SELECT rowembed.enable_text_search(%L);', v.name);
    END IF;
    IF k IS NULL OR k < 1 THEN
        RAISE EXCEPTION 'rowembed: k must be at least 1';
    END IF;
    PERFORM rowembed._bounded_candidates(candidates, false);
    query_vector := rowembed.embed_query(v.name, query, timeout_seconds);
    RETURN QUERY EXECUTE format($q$
        WITH by_vector AS (
            SELECT s.*, row_number() OVER (ORDER BY s.similarity DESC) AS r
              FROM rowembed.search($1, $2, $3, $4, $5, $6) AS s
        ), words AS (
            SELECT websearch_to_tsquery(%2$L::regconfig, $7) AS q
        ), by_text AS (
            SELECT t AS item, ts_rank_cd(%3$s, words.q) AS rank,
                   row_number() OVER (ORDER BY ts_rank_cd(%3$s, words.q) DESC) AS r
              FROM %1$s AS t, words
             WHERE %3$s @@ words.q AND ($6 IS NULL OR to_jsonb(t) @> $6)
             ORDER BY rank DESC
             LIMIT $3
        )
        SELECT coalesce($8 / ($10 + bv.r), 0) + coalesce($9 / ($10 + bt.r), 0),
               coalesce(bv.item, bt.item), bv.similarity, bt.rank::float8, bv.chunk,
               bv.chunk_start, bv.chunk_end, bv.snippet
          FROM by_vector AS bv FULL JOIN by_text AS bt ON %4$s
         ORDER BY 1 DESC, 3 DESC NULLS LAST
         LIMIT $11
        $q$,
        rowembed._qualified(v.source), v.text_search::text, rowembed._document_sql(v, 't'),
        (SELECT string_agg(format('(bv.item).%1$I = (bt.item).%1$I', c), ' AND ')
           FROM unnest(v.pk_columns) AS c))
        USING source, query_vector, greatest(k, candidates), min_similarity, v.name, filter,
              query, vector_weight, text_weight, rrf_k, k;
END
$body$;
