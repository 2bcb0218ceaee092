"""The projection's exceptions.

::

    ProjectionError         root: anything the projection cannot do
    └── BadCursorError      a list cursor that this server did not issue (or that was altered)
"""

from __future__ import annotations


class ProjectionError(Exception):
    """Root of the projection's failures."""


class BadCursorError(ProjectionError):
    """The cursor of a list query cannot be decoded."""
