"""The checkpoint of a resync: its window and send position, so an interrupted run resumes."""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from streams.settings import Settings

if TYPE_CHECKING:
    from processors.resync import ResyncRequest

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Checkpoint:
    """The replay window and the send position per partition, as JSON under ``data_dir/resync``."""

    destination_id: str
    parameters: dict[str, str | None]
    """What the run replays (:meth:`processors.resync.ResyncRequest.parameters`)."""
    start: dict[int, int]
    end: dict[int, int]
    position: dict[int, int]
    upserts: int = 0
    deletes: int = 0
    sent: int = 0
    skipped: int = 0
    failed: int = 0

    @staticmethod
    def path_for(settings: Settings, destination_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in destination_id)
        return settings.data_dir / "resync" / f"{safe}.json"

    @classmethod
    def load(cls, path: Path, request: ResyncRequest) -> Checkpoint | None:
        """The checkpoint of an interrupted run with the same parameters, else None."""
        try:
            data = json.loads(path.read_text())
            checkpoint = cls(
                destination_id=data["destination_id"],
                parameters={str(k): None if v is None else str(v) for k, v in data["parameters"].items()},
                start={int(p): o for p, o in data["start"].items()},
                end={int(p): o for p, o in data["end"].items()},
                position={int(p): o for p, o in data["position"].items()},
                upserts=int(data["upserts"]),
                deletes=int(data["deletes"]),
                # absent from the checkpoint of an older release: counted from 0
                sent=int(data.get("sent", 0)),
                skipped=int(data.get("skipped", 0)),
                failed=int(data.get("failed", 0)),
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # A checkpoint of an older release (no "parameters") too: the run starts over (idempotent).
            log.warning("unreadable resync checkpoint ignored", path=str(path), error=str(exc))
            return None
        if (checkpoint.destination_id, checkpoint.parameters) != (
            request.destination_id,
            request.parameters(),
        ):
            log.info("resync checkpoint of other parameters ignored", path=str(path))
            return None
        return checkpoint

    def save(self, path: Path) -> None:
        """Atomically (write then rename): an interruption never leaves half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)


def iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
