"""Secrets out of every text a connector produces: recorded calls, error messages, summaries.

A destination's response is attacker-controlled text (a receiver may echo the ``Authorization``
header in a 400 body), and that text ends up in ``last_error``, in ``delivery-status`` records and in
the console. So every secret is masked there in each form a connector sends it:

* the secret values themselves, trimmed, each part of a comma/space separated list (signing secret
  lists), each long line of a multi-line value (PEM keys) and the key fields of a JSON key file;
* their encodings on the wire: URL-encoded (form bodies: OAuth ``client_secret``), JSON-escaped,
  ``base64(username:password)`` (HTTP Basic), and for ``whsec_`` signing secrets the base64 key
  with and without padding, url-safe, and its hex;
* whatever a connector sent in a secret header (``Authorization: Bearer <access token>``...): the
  :class:`connectors.base.CallRecorder` learns those values as the calls are made, so tokens obtained
  at run time (Graph, Google, ADP access tokens) are masked too.

:func:`guard_methods` applies this to every connector class (``Connector.__init_subclass__``): an
error leaving ``deliver``/``test_connection``/``publish``/``setup`` is scrubbed (a connector error
keeps its type; any other exception becomes a :class:`RetryableError`, as the delivery worker would
make it, with its text scrubbed and its chain dropped), and a refusal of the egress policy anywhere
in its chain becomes the one uniform "address not allowed" :class:`ConfigurationError`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import SecretStr

from connectors.egress import NOT_ALLOWED, refused
from connectors.exceptions import ConfigurationError, ConnectorError, RetryableError
from streams.logging import MASK

MIN_WHOLE = 4
"""A whole secret value shorter than this is not searched for (it would mask ordinary words)."""
MIN_PART = 8
"""A derived form (a list item, a line, an encoding) shorter than this is not searched for."""
_BASE64ISH = re.compile(r"^[A-Za-z0-9+/=_\-]{16,}$")
_JSON_SECRET_FIELDS = ("private_key", "private_key_id", "client_secret", "refresh_token", "password")
_SCHEMES = ("bearer ", "basic ", "token ", "sharedaccesssignature ")


def value_forms(value: str) -> set[str]:
    """The forms one secret value may take on the wire or in an echo (see the module docstring)."""
    forms = {value, value.strip()}
    for part in re.split(r"[\s,]+", value):
        forms.add(part)
        if part.startswith("whsec_"):
            forms |= _key_forms(part.removeprefix("whsec_"))
    for line in value.splitlines():
        line = line.strip()
        if _BASE64ISH.match(line):
            forms.add(line)
    if value.lstrip().startswith("{"):
        forms |= _json_forms(value)
    encoded = {
        json.dumps(value)[1:-1],
        re.sub(r"[^A-Za-z0-9_.\-~]", lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), value),
    }
    forms |= encoded | {e.replace("%20", "+") for e in encoded}
    return {f for f in forms if len(f) >= MIN_PART or (f == value and len(f) >= MIN_WHOLE)}


def _key_forms(b64: str) -> set[str]:
    try:
        key = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=False)
    except (binascii.Error, ValueError):
        return {b64}
    plain = base64.b64encode(key).decode()
    safe = base64.urlsafe_b64encode(key).decode()
    return {b64, plain, plain.rstrip("="), safe, safe.rstrip("="), key.hex(), key.hex().upper()}


def _json_forms(value: str) -> set[str]:
    try:
        data = json.loads(value)
    except ValueError:
        return set()
    if not isinstance(data, dict):
        return set()
    forms: set[str] = set()
    for field in _JSON_SECRET_FIELDS:
        item = data.get(field)
        if isinstance(item, str) and item:
            forms |= {item, json.dumps(item)[1:-1]}
            forms |= {line.strip() for line in item.splitlines() if _BASE64ISH.match(line.strip())}
    return forms


def secret_forms(secrets: Mapping[str, SecretStr | str]) -> set[str]:
    """Every form of a destination's secrets worth masking, Basic credentials included."""
    values = {name: (s.get_secret_value() if isinstance(s, SecretStr) else s) for name, s in secrets.items()}
    return set(_forms_of(tuple(sorted(values.items()))))


@functools.lru_cache(maxsize=256)
def _forms_of(items: tuple[tuple[str, str], ...]) -> frozenset[str]:
    """:func:`secret_forms` of the same secrets, computed once: a recorder is made per attempt and
    the forms (and their pattern, :func:`_pattern_of`) showed in the worker's profile (issue 15). The
    cache holds what the connectors hold already, in this process's memory only."""
    values = dict(items)
    forms: set[str] = set()
    for value in values.values():
        if value:
            forms |= value_forms(value)
    user, password = values.get("username"), values.get("password")
    if user is not None and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        forms |= {pair, pair.rstrip("=")}
    return frozenset(forms)


def header_forms(value: str) -> set[str]:
    """A secret header's value and its credential after the scheme (``Bearer x`` -> ``x``)."""
    forms = {value}
    lowered = value.lower()
    for scheme in _SCHEMES:
        if lowered.startswith(scheme):
            forms.add(value[len(scheme) :].strip())
    return {f for f in forms if len(f) >= MIN_PART}


@functools.lru_cache(maxsize=256)
def _pattern_of(forms: frozenset[str]) -> re.Pattern[str]:
    """The pattern masking ``forms``, longest first; compiled once per set of forms."""
    ordered = sorted(forms, key=len, reverse=True)
    return re.compile("|".join(re.escape(f) for f in ordered))


class Redactor:
    """Masks a set of secret forms in text, longest first (so a whole header goes before its token)."""

    def __init__(self, forms: Iterable[str] = ()) -> None:
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(forms)

    def add(self, forms: Iterable[str]) -> None:
        new = set(forms) - self._forms
        if new:
            self._forms |= new
            self._pattern = _pattern_of(frozenset(self._forms))

    def scrub(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)


# -- connector methods -----------------------------------------------------------------------------

GUARDED_METHODS = ("setup", "deliver", "test_connection", "publish")


def _scrubbers(
    connector: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> list[Callable[[str], str]]:
    found = [a for a in (*args, *kwargs.values()) if callable(getattr(a, "scrub", None))]
    own = getattr(connector, "redactor", None)
    return [a.scrub for a in found] + ([own.scrub] if own is not None else [])


def _translate(exc: Exception, scrubbers: list[Callable[[str], str]]) -> Exception | None:
    """The error to raise instead of ``exc`` (None: re-raise ``exc`` itself, already scrubbed)."""

    def scrub(text: str) -> str:
        for one in scrubbers:
            text = one(text)
        return text

    if refused(exc):
        return ConfigurationError(NOT_ALLOWED)
    if isinstance(exc, ConnectorError):
        exc.message = scrub(exc.message)
        exc.args = (exc.message,)
        return None
    return RetryableError(scrub(f"{type(exc).__name__}: {exc}"))  # what the worker made of it, scrubbed


def guard(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` whose errors leave scrubbed, with egress refusals made uniform (see module doc)."""
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def guarded_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return await method(self, *args, **kwargs)
            except Exception as exc:
                replacement = _translate(exc, _scrubbers(self, args, kwargs))
                if replacement is None:
                    raise
                raise replacement from None

        guarded_async.__absync_guarded__ = True  # type: ignore[attr-defined]
        return guarded_async

    @functools.wraps(method)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            replacement = _translate(exc, _scrubbers(self, args, kwargs))
            if replacement is None:
                raise
            raise replacement from None

    guarded.__absync_guarded__ = True  # type: ignore[attr-defined]
    return guarded


def guard_methods(cls: type) -> None:
    """Wraps the methods of :data:`GUARDED_METHODS` that ``cls`` defines itself (once each)."""
    for name in GUARDED_METHODS:
        method = cls.__dict__.get(name)
        if callable(method) and not getattr(method, "__absync_guarded__", False):
            setattr(cls, name, guard(method))
