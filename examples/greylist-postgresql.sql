-- Tables for Mailmunge::Test::Greylist in one PostgreSQL database shared by
-- every MX host (README.md, "Several MX hosts").  Run once, as the role the
-- workers connect as, e.g.:
--   createuser mailmunge && createdb -O mailmunge greylist
--   psql -U mailmunge -d greylist -f greylist-postgresql.sql
-- last_seen holds Unix seconds from the host that wrote the row.
CREATE TABLE IF NOT EXISTS greylist (
    hash      TEXT PRIMARY KEY NOT NULL,
    last_seen BIGINT
);
CREATE TABLE IF NOT EXISTS ips_known_to_retry (
    ip        TEXT PRIMARY KEY NOT NULL,
    last_seen BIGINT
);
