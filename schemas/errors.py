"""Errors of the schemas package.

::

    SchemaError                 root of every error raised here
    ├── DecodeError             bytes that are not a record we can read
    │   └── SchemaNotFoundError the bytes name a schema (fingerprint or registry id) we do not know
    └── ValidationError         a well-formed record whose content is wrong (end before start...)
"""


class SchemaError(Exception):
    """Root of the schemas package's errors."""


class DecodeError(SchemaError):
    """The bytes are not a record of a known schema."""


class SchemaNotFoundError(DecodeError):
    """The bytes name a schema that is not known here."""


class ValidationError(SchemaError):
    """A decoded record whose content breaks a rule."""
