"""What the destination form asks for: read from each kind's declaration, never listed here.

The fields (label, type, help, required) are declared by the connector module of the kind
(:mod:`connectors.declaration`, found through :mod:`connectors.registry`). Anything a connector reads
that its form does not show goes in the form's "Other settings" JSON box, so the form never hides a
setting. Names are the connectors' setting names: the form's JavaScript sends them as they are.
"""

from __future__ import annotations

from connectors.declaration import FormField
from connectors.registry import declarations

DEFAULT_KIND = "http"


def kind_labels() -> dict[str, str]:
    """Kind -> label, in the order the console lists them (by label)."""
    return {d.kind: d.label for d in declarations()}


def form_fields(kind: str) -> tuple[tuple[FormField, ...], tuple[FormField, ...]]:
    """The settings fields and the (write-only) secret fields of ``kind``'s form; ``kind`` must be
    one of :func:`kind_labels`."""
    for declaration in declarations():
        if declaration.kind == kind:
            return declaration.form, declaration.secrets
    raise KeyError(kind)
