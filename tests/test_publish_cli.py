"""``absync publish`` on a real broker: the examples publish fully (and fan out without a dead letter);
a bad line is reported with its number and every other line is published."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from schemas.codec import codec_for
from schemas.errors import ValidationError
from schemas.models import AbsenceEvent
from streams.publisher import AbsencePublisher, PublishError
from streams.settings import REPO_ROOT, Settings
from streams.topics import Topics
from tests.cli_helpers import absync
from tests.streams_helpers import at_least, read_committed, read_to_end, running_fanout

EXAMPLES = REPO_ROOT / "examples" / "absences.jsonl"


def published(settings: Settings) -> list[tuple[bytes | None, AbsenceEvent]]:
    codec = codec_for("AbsenceEvent")
    records = read_to_end(settings, Topics(settings).absences)
    return [(m.key(), AbsenceEvent.from_avro(codec.decode(m.value()))) for m in records]


def test_the_examples_publish_fully_and_fan_out_cleanly(settings: Settings) -> None:
    lines = [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]
    result = absync(settings, "publish", str(EXAMPLES))
    assert result.returncode == 0, result.stderr
    assert f"published {len(lines)} event(s)" in result.stdout
    assert "0 bad line(s)" in result.stdout

    records = published(settings)
    assert sorted(e.event_id for _, e in records) == sorted(line["event_id"] for line in lines)
    assert all(key == f"{e.tenant}|{e.absence.id}".encode() for key, e in records)
    assert {e.event_id: e for _, e in records} == {
        line["event_id"]: AbsenceEvent.from_json(line) for line in lines
    }

    apply = absync(settings, "destinations", "apply", str(REPO_ROOT / "examples/destinations/http.yaml"))
    assert apply.returncode == 0, apply.stderr
    topics = Topics(settings)
    with running_fanout(settings):
        # Every example is a change the "all changes" demo destination receives: one delivery each.
        deliveries = read_committed(settings, topics.deliveries, at_least(len(lines)))
    assert len(deliveries) == len(lines)
    assert read_to_end(settings, topics.invalid) == []


def test_a_bad_line_is_reported_and_the_others_published(settings: Settings, tmp_path: Path) -> None:
    lines = EXAMPLES.read_text().splitlines()[:6]
    no_email = json.loads(lines[4])
    no_email["employee"]["email"] = "not-an-address"  # no email is fine; a malformed one is not
    wrong_date = json.loads(lines[5])
    wrong_date["absence"]["start_date"] = "2026-13-01"
    bad_file = tmp_path / "mixed.jsonl"
    latin1 = lines[0].replace("Camille", "Cécile").encode("latin-1")  # not UTF-8
    bad_file.write_bytes(
        b"\n".join(
            [
                lines[0].encode(),
                lines[1].encode(),
                b"{not json",
                lines[2].encode(),
                json.dumps(no_email).encode(),
                b"",
                lines[3].encode(),
                json.dumps(wrong_date).encode(),
                latin1,
            ]
        )
        + b"\n"
    )
    result = absync(settings, "publish", str(bad_file))

    assert result.returncode == 1
    assert f"{bad_file}:3: not JSON" in result.stderr
    assert f"{bad_file}:5: employee emp-103 has no valid email" in result.stderr
    assert f"{bad_file}:8: absence.start_date must be a date" in result.stderr
    assert f"{bad_file}:9: not UTF-8" in result.stderr
    assert "published 4 event(s)" in result.stdout and "4 bad line(s)" in result.stdout
    good = [json.loads(lines[i])["event_id"] for i in (0, 1, 2, 3)]
    assert sorted(e.event_id for _, e in published(settings)) == sorted(good)


def test_the_publisher_raises_what_it_cannot_deliver(settings: Settings) -> None:
    """A broken event is refused at once; an event Kafka never acknowledges raises from flush()."""
    event = AbsenceEvent.from_json(json.loads(EXAMPLES.read_text().splitlines()[0]))
    with AbsencePublisher(settings) as publisher, pytest.raises(ValidationError, match="no valid email"):
        publisher.publish(replace(event, employee=replace(event.employee, email="nobody")))

    nowhere = settings.model_copy(update={"bootstrap_servers": "127.0.0.1:9"})  # nothing listens on port 9
    publisher = AbsencePublisher(nowhere, flush_timeout=1.0)
    publisher.publish(event)
    with pytest.raises(PublishError, match="not acknowledged"):
        publisher.flush()
    publisher.close()
