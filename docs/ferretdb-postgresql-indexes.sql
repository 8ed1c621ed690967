-- Indexes that let FerretDB v1 on PostgreSQL answer PutPlace's reads without scanning a table.
--
-- Why: FerretDB v1 sends an equality filter to PostgreSQL as `_jsonb->'field' @> '"value"'`.
-- The btree indexes it creates itself, on `(_jsonb->'field')`, cannot answer `@>`, so every
-- read scans its whole table and a write costs more as the catalogue grows (docs/benchmarks.md,
-- "Overload"). A GIN index with `jsonb_path_ops` on the same expression answers `@>`.
-- Measured with bench/ferretdb_growth.py: at 40,000 records a content lookup 0.8 ms instead of
-- 13.5 ms, a new file's put 3.0 ms instead of 20 ms -- the same as on an empty catalogue.
--
-- Run it in the PostgreSQL database FerretDB uses, once PutPlace has started once (its
-- collections then exist), naming PutPlace's MongoDB database (the path of
-- PUTPLACE_DATABASE_URL; FerretDB keeps each database as a schema of that name):
--
--   psql "$POSTGRES_URL" -v ON_ERROR_STOP=1 -v db=putplace -f docs/ferretdb-postgresql-indexes.sql
--
-- It can be run again at any time (existing indexes are kept). Not needed on MongoDB, whose
-- indexes answer these reads, nor on FerretDB's SQLite backend (there, only _id is pushed down).
--
-- Two settings keep the indexes in use while the catalogue grows fast (bench/ferretdb_growth.py
-- and docs/benchmarks.md, "FerretDB's reads indexed"):
-- * plan_cache_mode = force_custom_plan for this database. FerretDB sends each lookup as a
--   prepared statement, `_jsonb->$1 @> $2`, with the field name a parameter. Only a plan made
--   for the actual values can match an index on `_jsonb->'field'`; after five executions
--   PostgreSQL may switch a connection to a generic plan, which cannot, and a connection that
--   did so while the tables were small keeps scanning them until autovacuum next analyzes them.
--   The setting reaches new connections only: RESTART FERRETDB once after the first run.
-- * fastupdate = off on the GIN indexes: with it on, new entries wait in a pending list that
--   every lookup reads in full until a vacuum merges it, so lookups slow down under a steady
--   stream of inserts.

SET putplace.schema = :'db';

DO $$
DECLARE
    schema_name text := current_setting('putplace.schema');
    wanted text[][] := ARRAY[
        -- collection, field: the equalities of PutPlace's hot paths
        ARRAY['files', '_id'], ARRAY['files', 'filepath'], ARRAY['files', 'sha256'],
        ARRAY['contents', '_id'],
        ARRAY['file_history', '_id'],
        ARRAY['api_keys', 'key_hash'],
        ARRAY['rate_buckets', 'b'],
        ARRAY['upload_sessions', '_id']
    ];
    pair text[];
    table_name text;
    index_name text;
    made int := 0;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = schema_name) THEN
        RAISE EXCEPTION 'no schema "%": is % the database of PUTPLACE_DATABASE_URL, and has PutPlace started on it once?',
            schema_name, schema_name;
    END IF;
    FOREACH pair SLICE 1 IN ARRAY wanted LOOP
        -- FerretDB's table for a collection: its metadata maps each collection to a table.
        EXECUTE format('SELECT _jsonb->>''table'' FROM %I._ferretdb_database_metadata WHERE _jsonb->>''_id'' = $1',
                       schema_name)
            INTO table_name USING pair[1];
        CONTINUE WHEN table_name IS NULL;
        index_name := left(table_name, 40) || '_' || pair[2] || '_putplace_gin';
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I.%I USING gin ((_jsonb->%L) jsonb_path_ops)'
                       ' WITH (fastupdate = off)', index_name, schema_name, table_name, pair[2]);
        -- (an index made by an earlier version of this script has the pending list on)
        EXECUTE format('ALTER INDEX %I.%I SET (fastupdate = off)', schema_name, index_name);
        PERFORM gin_clean_pending_list(format('%I.%I', schema_name, index_name)::regclass);
        made := made + 1;
        EXECUTE format('ANALYZE %I.%I', schema_name, table_name);
    END LOOP;
    EXECUTE format('ALTER DATABASE %I SET plan_cache_mode = force_custom_plan', current_database());
    RAISE NOTICE 'PutPlace GIN indexes in schema %: % in place; plan_cache_mode set for database % (restart FerretDB once for its open connections)',
        schema_name, made, current_database();
END
$$;
