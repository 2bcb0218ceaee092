"""What the destination form asks for, per connector kind.

Each kind lists its main settings and its secrets; anything else a connector reads (rarely changed
options such as ADP templates) goes in the form's "Other settings" JSON box, so the form never
hides a setting. Names here are the connectors' setting names (see connectors/*.py and
docs/connectors/): the form's JavaScript sends them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from connectors.http import AUTH_MODES, FORMATS, METHOD_MODES
from schemas.destination import KINDS


@dataclass(frozen=True, slots=True)
class FormField:
    name: str
    label: str
    kind: str = "text"
    """Input type: text, url, select, checkbox, textarea (settings) or secret (write-only)."""
    required: bool = False
    help: str = ""
    options: tuple[str, ...] = ()


KIND_LABELS = {
    "http": "Webhook (HTTP)",
    "graph": "Microsoft 365 calendar (Graph)",
    "ews": "Exchange calendar (EWS)",
    "google": "Google Calendar",
    "slack": "Slack",
    "adp": "ADP Workforce Now",
}
assert set(KIND_LABELS) == set(KINDS), "every destination kind needs a label"

CALENDAR = (
    FormField("title_template", "Event title", help="Placeholders: {employee_name}, {employee_email}."),
    FormField("show_leave_type", "Show the leave type in the title", "checkbox"),
    FormField("mark_private", "Mark events private", "checkbox"),
    FormField("include_pending", "Include absences not yet approved", "checkbox"),
    FormField("morning_hours", "Morning hours", help="For half days, e.g. 09:00-12:30."),
    FormField("afternoon_hours", "Afternoon hours", help="For half days, e.g. 13:30-18:00."),
)

SETTINGS: dict[str, tuple[FormField, ...]] = {
    "http": (
        FormField("url", "URL", "url", required=True, help="Where absence changes are sent."),
        FormField("format", "Payload format", "select", options=FORMATS),
        FormField(
            "method_mode", "Method", "select", options=METHOD_MODES, help="rest: PUT/DELETE per absence."
        ),
        FormField("auth", "Authentication", "select", options=AUTH_MODES),
        FormField("auth_header_name", "Authentication header name", help="Only for header authentication."),
        FormField("timeout", "Timeout", help="e.g. 10s; empty: the service default."),
    ),
    "graph": (
        FormField("tenant_id", "Microsoft Entra tenant id", required=True),
        FormField("client_id", "Application (client) id", required=True),
        *CALENDAR,
    ),
    "ews": (
        FormField(
            "server_url", "EWS URL", "url", required=True, help="https://mail.example.com/EWS/Exchange.asmx"
        ),
        FormField("username", "Service account", required=True, help="DOMAIN\\user or user@domain."),
        FormField("auth_type", "Authentication", "select", options=("NTLM", "basic")),
        FormField("server_version", "Server version", help="e.g. Exchange2016."),
        FormField("test_mailbox", "Mailbox for the connection test"),
        *CALENDAR,
    ),
    "google": (
        FormField("test_user", "User for the connection test", help="A mailbox of the domain."),
        FormField("auto_decline_mode", "Decline meetings during absences", help="e.g. declineNone."),
        FormField("decline_message", "Decline message"),
        *CALENDAR,
    ),
    "slack": (),
    "adp": (
        FormField("client_id", "Client id", required=True),
        FormField("token_url", "Token URL", "url"),
        FormField("api_base_url", "API base URL", "url"),
        FormField("mutual_tls", "Use the client certificate (mutual TLS)", "checkbox"),
    ),
}

SECRETS: dict[str, tuple[FormField, ...]] = {
    "http": (
        FormField(
            "signing_secrets",
            "Signing secrets",
            "secret",
            help="whsec_..., newest first; several (separated by commas or spaces) during a rotation.",
        ),
        FormField("username", "Basic user name", "secret"),
        FormField("password", "Basic password", "secret"),
        FormField("token", "Bearer token", "secret"),
        FormField("auth_header_value", "Authentication header value", "secret"),
    ),
    "graph": (FormField("client_secret", "Client secret", "secret"),),
    "ews": (FormField("password", "Service account password", "secret"),),
    "google": (FormField("service_account_json", "Service account key (JSON)", "secret"),),
    "slack": (),
    "adp": (
        FormField("client_secret", "Client secret", "secret"),
        FormField("client_cert_pem", "Client certificate (PEM)", "secret"),
        FormField("client_key_pem", "Client private key (PEM)", "secret"),
        FormField("client_key_password", "Private key password", "secret"),
    ),
}
