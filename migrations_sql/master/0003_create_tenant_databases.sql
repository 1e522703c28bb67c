-- Where each organization's data lives: a database name on a PostgreSQL server. server_url
-- NULL means the master's own server (so the catalogue survives the master moving); otherwise
-- a libpq URL without a database name. An organization cannot be deleted while it still has a
-- database (RESTRICT): dropping tenant data is an explicit operation.
CREATE TABLE IF NOT EXISTS tenant_databases (
    organization_id bigint      NOT NULL,
    server_url      text,
    database_name   varchar(63) NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenant_databases_pkey PRIMARY KEY (organization_id),
    CONSTRAINT tenant_databases_organization_id_organizations_id_fk FOREIGN KEY (organization_id)
        REFERENCES organizations (id) ON DELETE RESTRICT,
    CONSTRAINT tenant_databases_server_database_key
        UNIQUE NULLS NOT DISTINCT (server_url, database_name),
    CONSTRAINT tenant_databases_database_name_check
        CHECK (database_name ~ '^[a-z_][a-z0-9_]*$')
);
