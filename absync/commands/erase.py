"""``absync erase --employee EMAIL [--tenant T]``: removes one employee's personal data from the view
and from absync's compacted topics, so that no rebuild can bring it back (see :mod:`absync.erasure`
and docs/privacy.md). Prints the subject id the audit trail names, never the email.

Exit code 0 when done, 1 when the view or Kafka refused it (run it again: it is idempotent), 2 for
an argument that is not an email address.
"""

from __future__ import annotations

import argparse
import getpass
import sys

import sqlalchemy as sa

from absync.erasure import ErasureRequestError, erase_employee
from processors.erasure import ErasureError
from projections.db import engine_for, migrate
from streams.destinations import DestinationTable
from streams.settings import get_settings


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("erase", help="erase one employee's personal data (view and topics)")
    parser.add_argument("--employee", required=True, metavar="EMAIL", help="the employee's email address")
    parser.add_argument("--tenant", help="only this tenant's data of the employee (default: every tenant)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    engine = engine_for(settings)
    table = DestinationTable(settings).start()
    try:
        table.wait_ready(30)
        migrate(engine)
        erasure = erase_employee(
            settings, engine, table, args.employee, actor=f"cli:{getpass.getuser()}", tenant=args.tenant
        )
    except ErasureRequestError as exc:
        sys.stderr.write(f"absync erase: {exc}\n")
        return 2
    except ErasureError as exc:
        sys.stderr.write(f"absync erase: not complete, run it again: {exc}\n")
        return 1
    except sa.exc.SQLAlchemyError as exc:
        # The type only: a database error text may quote the statement's parameters (the email).
        sys.stderr.write(f"absync erase: the view refused it ({type(exc).__name__}), run it again\n")
        return 1
    finally:
        table.close()
        engine.dispose()
    sys.stdout.write(
        f"erased subject {erasure.subject}: {erasure.absences} absence(s), {erasure.deliveries} "
        f"delivery(ies) in the view, {erasure.tombstones} tombstone(s) written\n"
    )
    return 0
