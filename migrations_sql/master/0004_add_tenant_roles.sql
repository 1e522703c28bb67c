-- The role each tenant database is reached with: the owner of the database and of everything
-- in it, and the only role (besides superusers) that may connect to it. role_password is what
-- the service logs in with: a random secret, never logged or shown. Both NULL: a tenant made
-- before tenant roles, reached as the server's own user until `studio tenants isolate`
-- converts it.
ALTER TABLE tenant_databases
    ADD COLUMN IF NOT EXISTS role_name varchar(63),
    ADD COLUMN IF NOT EXISTS role_password text;
-- lint: allow constraint-without-not-valid, ban-drop-constraint because the columns are new
-- tenant_databases has one row per studio and the checked columns are the ones just added
-- (NULL everywhere): the check is instant. Each constraint is dropped only to be added again
-- at once, so that the file can run twice.
ALTER TABLE tenant_databases
    DROP CONSTRAINT IF EXISTS tenant_databases_role_name_check,
    ADD CONSTRAINT tenant_databases_role_name_check
        CHECK (role_name ~ '^[a-z_][a-z0-9_]*$'),
    DROP CONSTRAINT IF EXISTS tenant_databases_role_check,
    ADD CONSTRAINT tenant_databases_role_check
        CHECK ((role_name IS NULL) = (role_password IS NULL));
