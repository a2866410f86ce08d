-- Threshold calibration from the score distribution of the user's own data.

-- Threshold calibration. bge similarities cluster in about [0.6, 1], so a fixed
-- threshold means little: compare, on your own data, the similarity of each
-- query's nearest rows with that of random rows. Queries are vectors (embed them
-- with the query instruction: `rowembed calibrate` does); without them, a sample of
-- the table's own rows stands in (each leaving itself out). Rows: 'top1', 'topk'
-- (the k nearest) and 'random' (unrelated pairs); p99 of 'random' is a
-- reasonable floor for min_similarity.
CREATE OR REPLACE FUNCTION rowembed.similarity_profile(
    name text,
    queries @extschema:vector@.vector[] DEFAULT NULL,
    sample int DEFAULT 100,
    k int DEFAULT 10)
RETURNS TABLE (measure text, n bigint, p10 float8, p50 float8, p90 float8, p99 float8)
LANGUAGE plpgsql AS $body$
DECLARE
    v rowembed.vectorizer;
    dest text;
    own_rows boolean := queries IS NULL;
    q @extschema:vector@.vector;
    sims float8[];
    top1 float8[] := '{}';
    topk float8[] := '{}';
    background float8[];
    old text[];
    keys text;
    own_keys jsonb[];
BEGIN
    v := rowembed._vectorizer_named(similarity_profile.name);
    dest := rowembed._qualified(v.destination);
    IF v.chunking <> 'none' THEN
        -- Rows, not chunks: a sampled row asks with the mean of its chunks, and
        -- its neighbours are rows by their best chunk, the row itself left out.
        keys := rowembed._columns(v.pk_columns);
        IF own_rows THEN
            EXECUTE format('SELECT array_agg(r.q), array_agg(r.k) FROM (SELECT @extschema:vector@.avg(%I)::@extschema:vector@.vector AS q,'
                           ' jsonb_build_array(%s) AS k FROM %s GROUP BY %s'
                           ' ORDER BY random() LIMIT $1) AS r', v.embedding_column, keys, dest, keys)
                INTO queries, own_keys USING sample;
        END IF;
        old := rowembed._search_settings(8 * (k + 1), false);
        FOR i IN 1..coalesce(cardinality(queries), 0) LOOP
            EXECUTE format('SELECT array_agg(t.s ORDER BY t.s DESC) FROM (SELECT max(1 - %1$s) AS s'
                           ' FROM (SELECT %3$s, %4$I FROM %2$s ORDER BY %1$s LIMIT 8 * ($2 + 1)) c'
                           ' WHERE $3 IS NULL OR jsonb_build_array(%3$s) <> $3'
                           ' GROUP BY %3$s ORDER BY 1 DESC LIMIT $2) AS t',
                           rowembed._distance_sql(v, quote_ident(v.embedding_column)), dest, keys,
                           v.embedding_column)
                INTO sims USING queries[i], k, own_keys[i];
            top1 := top1 || sims[1];
            topk := topk || sims;
        END LOOP;
    ELSE
        IF own_rows THEN
            EXECUTE format('SELECT array_agg(%I::@extschema:vector@.vector) FROM (SELECT %I FROM %s'
                           ' ORDER BY random() LIMIT $1) r', v.embedding_column, v.embedding_column, dest)
                INTO queries USING sample;
        END IF;
        old := rowembed._search_settings(k + 1, false);
        FOREACH q IN ARRAY coalesce(queries, '{}') LOOP
            EXECUTE format('SELECT array_agg(s ORDER BY s DESC) FROM (SELECT 1 - %1$s AS s'
                           ' FROM %2$s ORDER BY %1$s LIMIT $2) t',
                           rowembed._distance_sql(v, quote_ident(v.embedding_column)), dest)
                INTO sims USING q, k + own_rows::int;
            IF own_rows THEN
                sims := sims[2:];  -- the row itself
            END IF;
            top1 := top1 || sims[1];
            topk := topk || sims;
        END LOOP;
    END IF;
    PERFORM rowembed._restore_search_settings(old);
    EXECUTE format('SELECT array_agg(1 - (r.%1$I::@extschema:vector@.vector OPERATOR(@extschema:vector@.<=>) qv))'
                   ' FROM unnest($1) AS qv,'
                   ' (SELECT %1$I FROM %2$s ORDER BY random() LIMIT $2) AS r',
                   v.embedding_column, dest)
        INTO background USING queries, sample;
    RETURN QUERY
    SELECT m.measure, count(x), percentile_cont(0.1) WITHIN GROUP (ORDER BY x),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY x),
           percentile_cont(0.9) WITHIN GROUP (ORDER BY x),
           percentile_cont(0.99) WITHIN GROUP (ORDER BY x)
    FROM (VALUES (1, 'top1', top1), (2, 'topk', topk), (3, 'random', background))
         AS m(o, measure, xs)
    CROSS JOIN LATERAL unnest(coalesce(m.xs, '{}')) AS x
    GROUP BY m.o, m.measure ORDER BY m.o;
END
$body$;
