-- The address the service reaches a tenant database through when a pooler (PgBouncer in
-- transaction mode) stands in front of its server: a libpq URL without a database name or
-- user (the tenant's role logs in, as on server_url). NULL: the service connects to
-- server_url directly. The migration runner and the operator commands always use server_url:
-- DDL, advisory locks and no-transaction files need a session of their own.
ALTER TABLE tenant_databases ADD COLUMN IF NOT EXISTS pooled_url text;
