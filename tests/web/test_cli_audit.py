"""``absync destinations`` writes go through the same service as the API's: each published write is
audited (actor ``cli:<OS user>``) in the database the API reads its audit trail from. Real broker,
real database (SQLite and PostgreSQL), the real command in a subprocess, the real API server."""

from __future__ import annotations

import json
from pathlib import Path

from projections import queries
from streams.destinations import DestinationTable
from streams.settings import REPO_ROOT
from tests.cli_helpers import absync_in
from tests.web.conftest import Api

EXAMPLE = REPO_ROOT / "examples" / "destinations" / "http.yaml"
DEMO_SECRET = "whsec_YWJzeW5jLWRlbW8tc2lnbmluZy1rZXktZG8tbm90LXVzZSEh"
ID = "acme-http-demo"


def cli(api: Api, *args: str) -> tuple[int, str, str]:
    """The command as OS user ``ops-alice``, on the API's topics and database."""
    env = {
        "ABSYNC_DATABASE_URL": api.engine.url.render_as_string(hide_password=False),
        "LOGNAME": "ops-alice",
    }
    done = absync_in(api.settings, env, "destinations", *args)
    return done.returncode, done.stdout, done.stderr


def trail(api: Api) -> list[tuple[str, str]]:
    return [(r.action, r.actor) for r in queries.audit_trail(api.engine, ID, tenant=None)]


def test_cli_writes_are_audited_where_the_api_reads_the_trail(api: Api, tmp_path: Path) -> None:
    code, out, err = cli(api, "apply", str(EXAMPLE))
    assert (code, out) == (0, f"created {ID} (tenant acme, revision 1)\n"), err
    assert trail(api) == [("create", "cli:ops-alice")]
    created = queries.audit_trail(api.engine, ID, tenant=None)[0]
    assert created.tenant == "acme" and created.changes["name"]["to"].startswith("Demo")
    assert created.changes["secrets"] == {"signing_secrets": {"to": "***"}}

    # Moving it without its secret is refused: nothing published, nothing audited.
    moved = tmp_path / "moved.yaml"
    moved.write_text(
        EXAMPLE.read_text()
        .replace(f"signing_secrets: {DEMO_SECRET}", "")
        .replace("http://127.0.0.1:8765/hook", "https://elsewhere.example/hook")
    )
    code, _, err = cli(api, "apply", str(moved))
    assert code == 1 and f"{moved}: destination {ID}: url changed" in err
    assert trail(api) == [("create", "cli:ops-alice")]

    # A rename without the secret: the secret is kept, and only the name is audited.
    renamed = tmp_path / "renamed.yaml"
    renamed.write_text(
        EXAMPLE.read_text()
        .replace(f"signing_secrets: {DEMO_SECRET}", "")
        .replace("name: Demo", "name: Renamed")
    )
    code, out, err = cli(api, "apply", str(renamed))
    assert (code, out) == (0, f"updated {ID} (tenant acme, revision 2)\n"), err
    code, out, err = cli(api, "apply", str(renamed))  # again: nothing changes, nothing is written
    assert (code, out) == (0, f"unchanged {ID} (tenant acme, revision 2)\n"), err
    update = queries.audit_trail(api.engine, ID, tenant=None)[0]
    assert update.changes == {
        "name": {"from": created.changes["name"]["to"], "to": update.changes["name"]["to"]}
    }
    assert update.changes["name"]["to"].startswith("Renamed")

    assert cli(api, "disable", ID)[0] == 0
    assert cli(api, "disable", ID)[0] == 0  # already disabled: not written again
    with api.client("configure") as admin:  # the API sees the CLI's writes and audits its own
        shown = admin.get(f"/api/v1/destinations/{ID}").json()
        assert (shown["enabled"], shown["revision"], shown["updated_by"]) == (False, 3, "cli:ops-alice")
        assert admin.post(f"/api/v1/destinations/{ID}/enable").status_code == 200
        answered = admin.get(f"/api/v1/destinations/{ID}/audit").json()
    assert [(e["action"], e["actor"]) for e in answered] == [
        ("enable", "admin"),
        ("disable", "cli:ops-alice"),
        ("update", "cli:ops-alice"),
        ("create", "cli:ops-alice"),
    ]
    assert answered[1]["changes"] == {"enabled": {"from": True, "to": False}}

    code, out, err = cli(api, "delete", ID)
    assert (code, out) == (0, f"deleted {ID}\n"), err
    table = DestinationTable(api.settings).start()
    table.wait_ready(30)
    table.close()
    assert table.get(ID) is None
    deleted = queries.audit_trail(api.engine, ID, tenant=None)[0]
    assert (deleted.action, deleted.actor) == ("delete", "cli:ops-alice")
    assert deleted.changes["enabled"] == {"from": True, "to": None}
    assert deleted.changes["secrets"] == {"signing_secrets": {"from": "***"}}
    assert cli(api, "delete", ID)[0] == 1  # gone: refused, not audited again
    assert len(trail(api)) == 5

    everything = json.dumps([r.changes for r in queries.audit_trail(api.engine, ID, tenant=None)])
    assert DEMO_SECRET not in everything and "whsec_" not in everything
