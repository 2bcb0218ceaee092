"""Errors of the schemas package.

::

    SchemaError                 root of every error raised here
    ├── DecodeError             bytes that are not a record we can read
    │   └── SchemaNotFoundError the bytes name a schema (fingerprint or registry id) we do not know
    │       └── SchemaUnavailableError   ... not *yet*: retrying later may succeed
    │           ├── RegistryUnavailableError  the registry did not answer (down, timeout, 5xx, 401/403)
    │           └── UnknownSchemaIdError      the registry answered that it has no such id
    └── ValidationError         a well-formed record whose content is wrong (end before start...)
"""


class SchemaError(Exception):
    """Root of the schemas package's errors."""


class DecodeError(SchemaError):
    """The bytes are not a record of a known schema."""


class SchemaNotFoundError(DecodeError):
    """The bytes name a schema that is not known here."""


class SchemaUnavailableError(SchemaNotFoundError):
    """The writer schema could not be had now; the same bytes may decode later (retryable)."""


class RegistryUnavailableError(SchemaUnavailableError):
    """The schema registry did not give an answer: unreachable, timed out, a server error, or it
    refused our credentials. Nothing is known about the id."""


class UnknownSchemaIdError(SchemaUnavailableError):
    """The schema registry answered that it has no schema with this id (yet: a registry replica may
    lag behind the one the producer registered with). ``given_up``: a record of this id was already
    retried for its whole budget lately, and the registry still says no (do not wait again)."""

    def __init__(self, message: str, schema_id: int, *, given_up: bool = False) -> None:
        super().__init__(message)
        self.schema_id = schema_id
        self.given_up = given_up


class ValidationError(SchemaError):
    """A decoded record whose content breaks a rule."""
