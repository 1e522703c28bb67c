"""How the service reaches a tenant: as the tenant's own role, never with the server's
password; a tenant made before tenant roles, as the server's user."""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict

from db.tenant_catalog import TenantLocation, admin_conninfo, tenant_conninfo

MASTER = "postgresql://admin:adminpw@db.example:5433/master"


def test_a_tenant_with_a_role_is_reached_as_that_role_with_its_password() -> None:
    location = TenantLocation(1, "s", None, "master_t_s", "master_t_s", "rolepw")
    params = conninfo_to_dict(tenant_conninfo(MASTER, location))
    assert params == {
        "host": "db.example", "port": "5433", "dbname": "master_t_s",
        "user": "master_t_s", "password": "rolepw",
    }  # fmt: skip


def test_a_tenant_on_its_own_server_keeps_that_server_and_drops_its_password() -> None:
    location = TenantLocation(1, "s", "postgresql://root:rootpw@far:6000", "d", "d", "rolepw")
    params = conninfo_to_dict(tenant_conninfo(MASTER, location))
    assert (params["host"], params["port"], params["user"], params["password"]) == (
        "far", "6000", "d", "rolepw",
    )  # fmt: skip
    assert conninfo_to_dict(admin_conninfo(MASTER, location))["user"] == "root"


def test_a_tenant_made_before_roles_is_reached_as_the_servers_user() -> None:
    params = conninfo_to_dict(tenant_conninfo(MASTER, TenantLocation(1, "s", None, "d")))
    assert (params["user"], params["password"], params["dbname"]) == ("admin", "adminpw", "d")


def test_the_role_password_is_not_in_a_locations_repr() -> None:
    assert "rolepw" not in repr(TenantLocation(1, "s", None, "d", "d", "rolepw"))
