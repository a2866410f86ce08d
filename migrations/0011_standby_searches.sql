-- rowembed 0011: a hot standby searches by text too. It reads cached query
-- vectors (the cache is logged now, so it replicates) and asks the primary's
-- workers for the others over a connection of its own: a second row of
-- query_connection, the one a server in recovery uses.

ALTER TABLE rowembed.query_cache SET LOGGED;

ALTER TABLE rowembed.query_connection ADD COLUMN on_standby boolean NOT NULL DEFAULT false;
ALTER TABLE rowembed.query_connection DROP COLUMN only_row;  -- with its key and check
ALTER TABLE rowembed.query_connection ADD PRIMARY KEY (on_standby);

-- It takes which server's connection it sets now.
DROP FUNCTION IF EXISTS rowembed.set_query_connection(text);
