"""``absync destinations`` on a real broker: secrets stay encrypted and write-only."""

from __future__ import annotations

from pathlib import Path

from streams.destinations import DestinationTable
from streams.secrets import SecretBox
from streams.settings import REPO_ROOT, Settings
from tests.cli_helpers import absync, absync_in

EXAMPLE = REPO_ROOT / "examples" / "destinations" / "http.yaml"
DEMO_SECRET = "whsec_YWJzeW5jLWRlbW8tc2lnbmluZy1rZXktZG8tbm90LXVzZSEh"


def table(settings: Settings) -> DestinationTable:
    t = DestinationTable(settings).start()
    t.wait_ready(30)
    t.close()
    return t


def test_apply_list_disable_delete(settings: Settings, tmp_path: Path) -> None:
    assert DEMO_SECRET in EXAMPLE.read_text()
    first = absync(settings, "destinations", "apply", str(EXAMPLE))
    assert first.returncode == 0, first.stderr
    created = table(settings).get("acme-http-demo")
    assert created is not None and created.revision == 1
    assert DEMO_SECRET.encode() not in created.secrets["signing_secrets"]
    assert (
        SecretBox.from_settings(settings).decrypt(created.secrets["signing_secrets"]).get_secret_value()
        == DEMO_SECRET
    )

    # The same destination without its secret: the stored secret is kept, the revision bumped.
    without_secret = tmp_path / "no-secret.yaml"
    without_secret.write_text(
        EXAMPLE.read_text()
        .replace(f"signing_secrets: {DEMO_SECRET}", "")
        .replace("name: Demo", "name: Renamed")
    )
    second = absync(settings, "destinations", "apply", str(without_secret))
    assert second.returncode == 0, second.stderr
    updated = table(settings).get("acme-http-demo")
    assert updated is not None
    assert (updated.revision, updated.name.startswith("Renamed")) == (2, True)
    assert updated.secrets == created.secrets

    listing = absync(settings, "destinations", "list")
    assert listing.returncode == 0
    assert "acme-http-demo" in listing.stdout and "signing_secrets" in listing.stdout
    assert DEMO_SECRET not in listing.stdout + listing.stderr
    assert "whsec_" not in listing.stdout and "gAAAA" not in listing.stdout  # nor the Fernet token

    assert absync(settings, "destinations", "disable", "acme-http-demo").returncode == 0
    disabled = table(settings).get("acme-http-demo")
    assert disabled is not None and not disabled.enabled and disabled.revision == 3

    assert absync(settings, "destinations", "delete", "acme-http-demo").returncode == 0
    assert table(settings).get("acme-http-demo") is None
    missing = absync(settings, "destinations", "disable", "acme-http-demo")
    assert missing.returncode == 1 and "no destination" in missing.stderr


def test_apply_refuses_to_move_a_destination_without_its_secrets(settings: Settings, tmp_path: Path) -> None:
    assert absync(settings, "destinations", "apply", str(EXAMPLE)).returncode == 0
    created = table(settings).get("acme-http-demo")
    assert created is not None
    moved = tmp_path / "moved.yaml"
    url = created.settings["url"]
    text = (
        EXAMPLE.read_text()
        .replace(f"signing_secrets: {DEMO_SECRET}", "")
        .replace(url, "https://elsewhere.example/hook")
    )
    moved.write_text(text)
    refused = absync(settings, "destinations", "apply", str(moved))
    assert refused.returncode == 1
    assert "url changed" in refused.stderr and "signing_secrets" in refused.stderr
    assert table(settings).get("acme-http-demo") == created  # nothing written

    moved.write_text(EXAMPLE.read_text().replace(url, "https://elsewhere.example/hook"))
    assert absync(settings, "destinations", "apply", str(moved)).returncode == 0
    updated = table(settings).get("acme-http-demo")
    assert (
        updated is not None
        and updated.revision == 2
        and updated.settings["url"] == "https://elsewhere.example/hook"
    )


def test_apply_refuses_the_embedded_key_in_production(settings: Settings) -> None:
    refused = absync_in(settings, {"ABSYNC_ENV": "production"}, "destinations", "apply", str(EXAMPLE))
    assert refused.returncode == 2 and "ABSYNC_SECRET_KEY" in refused.stderr
    assert table(settings).get("acme-http-demo") is None


GOOD = 'id: {id}\ntenant: acme\nname: Good\nkind: http\nsettings: {{url: "http://127.0.0.1:9/hook"}}\n'
HOSTILE = {
    "string-boolean": GOOD.format(id="d-bool") + 'enabled: "false"\n',
    "ftp-url": GOOD.format(id="d-ftp").replace("http://127.0.0.1:9/hook", "ftp://files.example/x"),
    "file-url": GOOD.format(id="d-file").replace("http://127.0.0.1:9/hook", "file:///etc/passwd"),
    "duplicate-id": GOOD.format(id="d-dup") + "---\n" + GOOD.format(id="d-dup"),
    "bad-id": GOOD.format(id='"../etc passwd"'),
    "other-namespace": GOOD.format(id="globex:hook"),
    "billion-laughs": 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ),
    "filter-list-2.6MB": GOOD.format(id="d-big")
    + "filters:\n  employees:\n"
    + "".join(f"    - emp-{i:012d}\n" for i in range(130_000)),
    "6000-filter-values": GOOD.format(id="d-many")
    + f"filters: {{employees: [{', '.join(f'e{i}' for i in range(6000))}]}}\n",
    "deep-nesting": "[" * 5000 + "]" * 5000 + "\n",
    "duplicate-key": GOOD.format(id="d-key") + "name: Evil twin\n",
    "syntax-error": GOOD.format(id="d-syntax") + "filters: {departments: [d-1\n",
    "unknown-field": GOOD.format(id="d-extra") + "enabeld: false\n",
    "number-as-secret": GOOD.format(id="d-num") + "secrets: {password: 12345}\n",
}


def test_apply_refuses_hostile_files_with_one_clear_line(settings: Settings, tmp_path: Path) -> None:
    """Each file is refused whole, with exit code 1 and a one-line reason; nothing is published."""
    for name, text in HOSTILE.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(GOOD.format(id=f"ok-{name}") + "---\n" + text)  # a good document first
        result = absync(settings, "destinations", "apply", str(path))
        assert result.returncode == 1, name
        assert "Traceback" not in result.stderr, f"{name}: {result.stderr[-2000:]}"
        assert result.stderr.startswith(str(path)), name
        assert len(result.stderr.strip().splitlines()) == 1, f"{name}: {result.stderr}"
    (tmp_path / "binary.yaml").write_bytes(b"id: \xff\xfe\n")
    result = absync(settings, "destinations", "apply", str(tmp_path / "binary.yaml"))
    assert result.returncode == 1 and "not UTF-8" in result.stderr
    assert table(settings).all() == []  # not even the good documents before the bad one


def test_apply_takes_a_real_false_and_reports_why_others_fail(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "off.yaml"
    path.write_text(GOOD.format(id="acme:off") + "enabled: false\n")
    assert absync(settings, "destinations", "apply", str(path)).returncode == 0
    created = table(settings).get("acme:off")
    assert created is not None and created.enabled is False
    path.write_text(GOOD.format(id="d-bool") + 'enabled: "false"\n')
    reason = absync(settings, "destinations", "apply", str(path)).stderr
    assert "enabled: Input should be a valid boolean" in reason
    path.write_text(HOSTILE["billion-laughs"])
    assert "anchors (&name) are not allowed" in absync(settings, "destinations", "apply", str(path)).stderr
    path.write_text(HOSTILE["filter-list-2.6MB"])
    assert "larger than 1048576 bytes" in absync(settings, "destinations", "apply", str(path)).stderr


def test_apply_sets_a_rate_limit_and_refuses_one_out_of_bounds(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "limited.yaml"
    path.write_text(GOOD.format(id="acme:limited") + "rate_limit: 2.5\n")
    assert absync(settings, "destinations", "apply", str(path)).returncode == 0
    created = table(settings).get("acme:limited")
    assert created is not None and created.rate_limit == 2.5
    listed = absync(settings, "destinations", "list").stdout
    assert "rate_limit=2.5/s" in listed
    for value, reason in (
        ("0", "rate_limit: must be between 0.1 and 1000 requests per second"),
        ("5000", "rate_limit: must be between 0.1 and 1000 requests per second"),
        ('"5"', "rate_limit: must be a number of requests per second"),
        ("true", "rate_limit: must be a number of requests per second"),
    ):
        path.write_text(GOOD.format(id="acme:bad") + f"rate_limit: {value}\n")
        result = absync(settings, "destinations", "apply", str(path))
        assert result.returncode == 1 and reason in result.stderr, (value, result.stderr)
    path.write_text(GOOD.format(id="acme:limited") + "rate_limit:\n")  # null: no limit again
    assert absync(settings, "destinations", "apply", str(path)).returncode == 0
    lifted = table(settings).get("acme:limited")
    assert lifted is not None and lifted.rate_limit is None
