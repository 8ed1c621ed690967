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
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I.%I USING gin ((_jsonb->%L) jsonb_path_ops)',
                       left(table_name, 40) || '_' || pair[2] || '_putplace_gin', schema_name, table_name, pair[2]);
        made := made + 1;
        EXECUTE format('ANALYZE %I.%I', schema_name, table_name);
    END LOOP;
    RAISE NOTICE 'PutPlace GIN indexes in schema %: % in place', schema_name, made;
END
$$;
