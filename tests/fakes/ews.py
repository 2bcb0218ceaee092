"""A local Exchange Web Services server for tests, spoken to by the real exchangelib.

``POST /EWS/Exchange.asmx`` with a SOAP envelope; the fake dispatches on the body's first element
(GetFolder, CreateItem, FindItem, GetItem, UpdateItem, DeleteItem) and answers with the shapes
Exchange 2016 sends (``m:`` messages, ``t:`` types namespaces, ``ServerVersionInfo`` header).

What it models, because the connector depends on it:

* Basic authentication of one service account (a wrong password is a 401, as in IIS).
* Impersonation: the mailbox is the ``ExchangeImpersonation`` header's address (else
  ``X-AnchorMailbox``). An unknown mailbox answers ``ErrorNonExistentMailbox`` in each response
  message; ``impersonation_allowed = False`` answers the ``ErrorImpersonateUserDenied`` SOAP fault.
* One calendar per mailbox; items keep their subject, start/end (UTC), time zone ids, all-day flag,
  free/busy status, sensitivity, reminder and extended properties. ``FindItem`` evaluates an
  ``IsEqualTo`` restriction on an extended property; extended properties are only returned when
  asked for, like Exchange.
* Faults on demand: ``busy_next`` (``ErrorServerBusy`` fault with ``BackOffMilliseconds``),
  ``fail_next`` (a bare HTTP error such as 500, as IIS sends) and ``lose_response_next`` (the
  operation happens, its answer is an HTTP error).
* Throttling: ``throttle_half`` answers every other request with a throttling answer, in turn the
  ``ErrorServerBusy`` SOAP fault with ``BackOffMilliseconds``, the same fault without it, and an
  HTTP 503 page, until ``stop_throttling``. The fault is the one exchangelib parses
  (``services/common.py``, ``_raise_soap_errors``): HTTP 500, ``s:Fault`` with ``faultcode``
  ``a:ErrorServerBusy``, ``detail/e:ResponseCode`` and ``e:Message`` in the errors namespace, and
  the back-off as ``detail/t:MessageXml/t:Value Name="BackOffMilliseconds"`` in the types namespace.

NTLM is not modelled (its 401 challenge dance adds nothing to what the connector decides).
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

from exchangelib.winzone import MS_TIMEZONE_TO_IANA_MAP
from lxml import etree

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"
NSMAP = {"s": SOAP, "m": M, "t": T}
PATH = "/EWS/Exchange.asmx"

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)

# xs:boolean fields: exchangelib sends 1/0, Exchange answers true/false.
_BOOL_FIELDS = ("IsAllDayEvent", "ReminderIsSet")
_FIELD_URIS = {
    "item:Subject": "Subject",
    "item:Sensitivity": "Sensitivity",
    "item:Body": "Body",
    "item:ReminderIsSet": "ReminderIsSet",
    "item:ReminderMinutesBeforeStart": "ReminderMinutesBeforeStart",
    "item:Categories": "Categories",
    "item:Importance": "Importance",
    "calendar:Start": "Start",
    "calendar:End": "End",
    "calendar:IsAllDayEvent": "IsAllDayEvent",
    "calendar:LegacyFreeBusyStatus": "LegacyFreeBusyStatus",
    "calendar:Location": "Location",
    "calendar:StartTimeZone": "StartTimeZone",
    "calendar:EndTimeZone": "EndTimeZone",
}


def t(tag: str) -> str:
    return f"{{{T}}}{tag}"


def m(tag: str) -> str:
    return f"{{{M}}}{tag}"


@dataclass
class StoredItem:
    """A calendar item as the fake mailbox holds it."""

    item_id: str
    change_key: str
    fields: dict[str, str] = field(default_factory=dict)
    """Local element name -> text (Subject, Sensitivity, Body, IsAllDayEvent "true"...)."""
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    start_time_zone: str | None = None
    end_time_zone: str | None = None
    extended: dict[tuple[str, str], str] = field(default_factory=dict)
    """(property set id, property name) -> value."""

    @property
    def subject(self) -> str | None:
        return self.fields.get("Subject")

    @property
    def is_all_day(self) -> bool:
        return self.fields.get("IsAllDayEvent") == "true"

    def local(self, name: str) -> dt.datetime | None:
        """Start or end in the item's own time zone (Windows id mapped back by exchangelib's table)."""
        value = self.start if name == "start" else self.end
        zone_id = self.start_time_zone if name == "start" else self.end_time_zone
        if value is None or zone_id is None:
            return value
        return value.astimezone(ZoneInfo(MS_TIMEZONE_TO_IANA_MAP[zone_id]))


@dataclass
class FakeMailbox:
    address: str
    root_id: str = field(default_factory=lambda: _new_id("root"))
    calendar_id: str = field(default_factory=lambda: _new_id("calendar"))
    items: dict[str, StoredItem] = field(default_factory=dict)


@dataclass
class ReceivedCall:
    operation: str
    mailbox: str
    headers: dict[str, str]
    body: str


def _new_id(kind: str) -> str:
    return base64.b64encode(f"{kind}:{uuid.uuid4()}".encode()).decode()


class SoapFault(Exception):
    """Answered as a SOAP fault (HTTP 500), as Exchange does for header-level errors."""

    def __init__(self, code: str, message: str, values: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.values = code, message, values or {}


class ResponseError(Exception):
    """Answered as a response message with ResponseClass="Error"."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class FakeExchange:
    """The server. Use as a context manager; ``url`` is the EWS endpoint to configure."""

    def __init__(self, username: str = "svc-absync@acme.com", password: str = "Service-Pa55word!") -> None:
        self.username, self.password = username, password
        self.mailboxes: dict[str, FakeMailbox] = {}
        self.calls: list[ReceivedCall] = []
        self.impersonation_allowed = True
        self._busy: list[int | None] = []
        self._failures: list[tuple[int, int | None]] = []
        self._lost: dict[str, int] = {}
        self._throttle_back_off_ms: int | None = None
        self._throttle_seq = 0
        self.throttled: dict[str, int] = {"busy_back_off": 0, "busy": 0, "503": 0}
        self._lock = threading.RLock()
        self._change_keys = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- set-up and inspection -------------------------------------------------------------
    def add_mailbox(self, address: str) -> FakeMailbox:
        with self._lock:
            return self.mailboxes.setdefault(address.lower(), FakeMailbox(address))

    def items(self, address: str) -> list[StoredItem]:
        with self._lock:
            return list(self.mailboxes[address.lower()].items.values())

    def busy_next(self, times: int = 1, back_off_ms: int | None = 2500) -> None:
        """The next ``times`` requests get the ErrorServerBusy fault (without ``BackOffMilliseconds``
        when ``back_off_ms`` is None)."""
        with self._lock:
            self._busy.extend([back_off_ms] * times)

    def fail_next(self, times: int = 1, status: int = 500, retry_after: int | None = None) -> None:
        """The next ``times`` requests get a bare HTTP ``status`` (an IIS error page), with a
        ``Retry-After`` header when given."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * times)

    def throttle_half(self, back_off_ms: int = 1500) -> None:
        """Every other request from now on is throttled (busy with ``back_off_ms``, busy without a
        back-off, HTTP 503, in turn) until :meth:`stop_throttling`."""
        with self._lock:
            self._throttle_back_off_ms = back_off_ms
            self._throttle_seq = 0

    def stop_throttling(self) -> None:
        with self._lock:
            self._throttle_back_off_ms = None

    def _throttle(self) -> tuple[str | None, int]:
        """Under the lock: the throttling answer for this request, if any, and the back-off."""
        if self._throttle_back_off_ms is None:
            return None, 0
        seq, self._throttle_seq = self._throttle_seq, self._throttle_seq + 1
        if seq % 2 == 0:
            return None, 0
        kind = ("busy_back_off", "busy", "503")[(seq // 2) % 3]
        self.throttled[kind] += 1
        return kind, self._throttle_back_off_ms

    def lose_response_next(self, operation: str, status: int = 504) -> None:
        """The next ``operation`` is carried out but its answer is lost: a bare HTTP ``status``
        (a proxy or load balancer giving up), so the client cannot know it succeeded."""
        with self._lock:
            self._lost[operation] = status

    def operations(self) -> list[str]:
        with self._lock:
            return [c.operation for c in self.calls]

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_port}{PATH}"

    def start(self) -> FakeExchange:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                status, headers, body = fake.handle(
                    self.path, dict(self.headers.items()), self.rfile.read(length)
                )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: tests inspect ``calls`` instead."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-ews", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeExchange:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP ------------------------------------------------------------------------------
    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """One HTTP exchange: returns (status, headers, body)."""
        headers = {name.lower(): value for name, value in headers.items()}
        if path != PATH:
            return 404, {"Content-Type": "text/html"}, b"<html><body>404 Not Found</body></html>"
        if not self._authorized(headers.get("authorization", "")):
            return 401, {"WWW-Authenticate": 'Basic realm="mail.acme.com"', "Content-Type": "text/html"}, b""
        try:
            envelope = etree.fromstring(raw, _PARSER)
        except etree.XMLSyntaxError as exc:
            return 400, {"Content-Type": "text/html"}, f"Bad request: {exc}".encode()
        operation_elem = envelope.find(f"{{{SOAP}}}Body")[0]
        operation = etree.QName(operation_elem).localname
        mailbox = self._mailbox_address(envelope, headers)
        with self._lock:
            self.calls.append(ReceivedCall(operation, mailbox, headers, raw.decode()))
            status, retry_after = self._failures.pop(0) if self._failures else (None, None)
            busy = status is None and bool(self._busy)
            back_off = self._busy.pop(0) if busy else None
            throttle, throttle_back_off = (None, 0) if status or busy else self._throttle()
        if throttle == "503":
            status = 503
        if status is not None:
            return _error_page(status, retry_after)
        try:
            if back_off is not None or throttle == "busy_back_off":
                raise SoapFault(
                    "ErrorServerBusy",
                    "The server cannot service this request right now. Try again later.",
                    {"BackOffMilliseconds": str(back_off if back_off is not None else throttle_back_off)},
                )
            if busy or throttle == "busy":
                raise SoapFault(
                    "ErrorServerBusy", "The server cannot service this request right now. Try again later."
                )
            if self._impersonating(envelope) and not self.impersonation_allowed:
                raise SoapFault(
                    "ErrorImpersonateUserDenied",
                    "The account does not have permission to impersonate the requested user.",
                )
            body = self._dispatch(operation, operation_elem, mailbox)
        except SoapFault as fault:
            return 500, {"Content-Type": "text/xml; charset=utf-8"}, _fault(fault)
        with self._lock:
            lost = self._lost.pop(operation, None)
        if lost is not None:
            return _error_page(lost, None)
        return 200, {"Content-Type": "text/xml; charset=utf-8"}, _envelope(body)

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False
        return user == self.username and password == self.password

    @staticmethod
    def _impersonating(envelope: Any) -> bool:
        return envelope.find(f"{{{SOAP}}}Header/{t('ExchangeImpersonation')}") is not None

    def _mailbox_address(self, envelope: Any, headers: dict[str, str]) -> str:
        """The impersonated address, else the X-AnchorMailbox header, else the caller's own mailbox."""
        sid = envelope.find(f"{{{SOAP}}}Header/{t('ExchangeImpersonation')}/{t('ConnectingSID')}")
        if sid is not None:
            for name in ("PrimarySmtpAddress", "SmtpAddress", "PrincipalName"):
                value = sid.findtext(t(name))
                if value:
                    return str(value).strip().lower()
        return (headers.get("x-anchormailbox") or self.username).lower()

    # -- operations --------------------------------------------------------------------------
    def _dispatch(self, operation: str, request: Any, address: str) -> Any:
        handlers = {
            "GetFolder": self._get_folder,
            "CreateItem": self._create_item,
            "FindItem": self._find_item,
            "GetItem": self._get_item,
            "UpdateItem": self._update_item,
            "DeleteItem": self._delete_item,
        }
        handler = handlers.get(operation)
        if handler is None:
            raise SoapFault(
                "ErrorInvalidRequest", f"The request is invalid: {operation} is not supported here."
            )
        with self._lock:
            mailbox = self.mailboxes.get(address)
            messages = []
            for unit in self._units(operation, request):
                try:
                    if mailbox is None:
                        raise ResponseError(
                            "ErrorNonExistentMailbox", "The SMTP address has no mailbox associated with it."
                        )
                    messages.append(_success(operation, handler(mailbox, request, unit)))
                except ResponseError as err:
                    messages.append(_error(operation, err))
        response = etree.Element(m(f"{operation}Response"), nsmap=NSMAP)
        container = etree.SubElement(response, m("ResponseMessages"))
        container.extend(messages)
        return response

    @staticmethod
    def _units(operation: str, request: Any) -> list[Any]:
        """The request's independent parts: one response message is answered per part."""
        paths = {
            "GetFolder": f"{m('FolderIds')}/*",
            "CreateItem": f"{m('Items')}/*",
            "FindItem": f"{m('ParentFolderIds')}/*",
            "GetItem": f"{m('ItemIds')}/*",
            "UpdateItem": f"{m('ItemChanges')}/*",
            "DeleteItem": f"{m('ItemIds')}/*",
        }
        return list(request.findall(paths[operation]))

    def _folder_is_calendar(self, mailbox: FakeMailbox, folder_ref: Any) -> bool:
        if etree.QName(folder_ref).localname == "DistinguishedFolderId":
            return bool(folder_ref.get("Id") == "calendar")
        return bool(folder_ref.get("Id") == mailbox.calendar_id)

    def _get_folder(self, mailbox: FakeMailbox, request: Any, ref: Any) -> list[Any]:
        distinguished = ref.get("Id") if etree.QName(ref).localname == "DistinguishedFolderId" else None
        if ref.get("Id") in (mailbox.root_id, "root") or distinguished == "root":
            folder = _folder("Folder", mailbox.root_id, None, "root", "", None)
        elif ref.get("Id") == mailbox.calendar_id or distinguished == "calendar":
            count = str(len(mailbox.items))
            folder = _folder(
                "CalendarFolder", mailbox.calendar_id, mailbox.root_id, "calendar", "Calendar", count
            )
        else:
            raise ResponseError(
                "ErrorFolderNotFound", "The specified folder could not be found in the store."
            )
        container = etree.Element(m("Folders"))
        container.append(folder)
        return [container]

    def _create_item(self, mailbox: FakeMailbox, request: Any, elem: Any) -> list[Any]:
        target = request.find(f"{m('SavedItemFolderId')}/*")
        if target is not None and not self._folder_is_calendar(mailbox, target):
            raise ResponseError(
                "ErrorFolderNotFound", "The specified folder could not be found in the store."
            )
        if etree.QName(elem).localname != "CalendarItem":
            raise ResponseError(
                "ErrorInvalidItemForOperationCreateItem", "Only calendar items are supported here."
            )
        item = StoredItem(item_id=_new_id("item"), change_key=self._next_change_key())
        for child in elem:
            _apply(item, child)
        mailbox.items[item.item_id] = item
        return [_items_container([_item_id_only(item)])]

    def _find_item(self, mailbox: FakeMailbox, request: Any, folder_ref: Any) -> list[Any]:
        if not self._folder_is_calendar(mailbox, folder_ref):
            raise ResponseError(
                "ErrorFolderNotFound", "The specified folder could not be found in the store."
            )
        restriction = request.find(m("Restriction"))
        matching = [i for i in mailbox.items.values() if restriction is None or _matches(i, restriction[0])]
        root = etree.Element(
            m("RootFolder"),
            TotalItemsInView=str(len(matching)),
            IncludesLastItemInRange="true",
            IndexedPagingOffset=str(len(matching)),
        )
        items = etree.SubElement(root, t("Items"))
        items.extend(_render(i, _requested(request.find(m("ItemShape")))) for i in matching)
        return [root]

    def _get_item(self, mailbox: FakeMailbox, request: Any, ref: Any) -> list[Any]:
        item = mailbox.items.get(ref.get("Id"))
        if item is None:
            raise ResponseError("ErrorItemNotFound", "The specified object was not found in the store.")
        return [_items_container([_render(item, _requested(request.find(m("ItemShape"))))])]

    def _update_item(self, mailbox: FakeMailbox, request: Any, change: Any) -> list[Any]:
        ref = change.find(t("ItemId"))
        item = mailbox.items.get(ref.get("Id"))
        if item is None:
            raise ResponseError("ErrorItemNotFound", "The specified object was not found in the store.")
        stale = ref.get("ChangeKey") not in (None, item.change_key)
        if stale and request.get("ConflictResolution") == "NeverOverwrite":
            raise ResponseError(
                "ErrorIrresolvableConflict", "The send or update operation could not be performed."
            )
        for update in change.find(t("Updates")):
            kind = etree.QName(update).localname
            if kind == "SetItemField":
                for child in update[1]:
                    _apply(item, child)
            elif kind == "DeleteItemField":
                _delete_field(item, update[0])
        item.change_key = self._next_change_key()
        response = [_items_container([_item_id_only(item)])]
        conflicts = etree.Element(m("ConflictResults"))
        etree.SubElement(conflicts, t("Count")).text = "0"
        return [*response, conflicts]

    def _delete_item(self, mailbox: FakeMailbox, request: Any, ref: Any) -> list[Any]:
        if mailbox.items.pop(ref.get("Id"), None) is None:
            raise ResponseError("ErrorItemNotFound", "The specified object was not found in the store.")
        return []

    def _next_change_key(self) -> str:
        return base64.b64encode(f"ck{next(self._change_keys)}".encode()).decode()


def _error_page(status: int, retry_after: int | None) -> tuple[int, dict[str, str], bytes]:
    page = f"<html><body><h1>Server Error</h1><p>HTTP {status}</p></body></html>"
    headers = {"Content-Type": "text/html"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return status, headers, page.encode()


# -- XML helpers -----------------------------------------------------------------------------
def _parse_time(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _extended_key(uri: Any) -> tuple[str, str]:
    """How an ExtendedFieldURI names a property: (property set id, property name)."""
    return str(uri.get("PropertySetId", "")).lower(), str(uri.get("PropertyName", ""))


def _apply(item: StoredItem, elem: Any) -> None:
    """Stores one element of a CalendarItem (from CreateItem or SetItemField)."""
    name = etree.QName(elem).localname
    if name == "ExtendedProperty":
        uri = elem.find(t("ExtendedFieldURI"))
        item.extended[_extended_key(uri)] = elem.findtext(t("Value"))
    elif name == "Start":
        item.start = _parse_time(elem.text).astimezone(dt.UTC)
    elif name == "End":
        item.end = _parse_time(elem.text).astimezone(dt.UTC)
    elif name == "StartTimeZone":
        item.start_time_zone = elem.get("Id")
    elif name == "EndTimeZone":
        item.end_time_zone = elem.get("Id")
    elif name in _BOOL_FIELDS:
        item.fields[name] = "true" if (elem.text or "").strip() in ("1", "true") else "false"
    else:
        item.fields[name] = elem.text or ""


def _delete_field(item: StoredItem, uri: Any) -> None:
    if etree.QName(uri).localname == "ExtendedFieldURI":
        item.extended.pop(_extended_key(uri), None)
        return
    name = _FIELD_URIS.get(uri.get("FieldURI", ""))
    if name in ("Start", "End", "StartTimeZone", "EndTimeZone"):
        raise ResponseError("ErrorInvalidPropertyDelete", f"{name} cannot be deleted.")
    if name is not None:
        item.fields.pop(name, None)


def _matches(item: StoredItem, restriction: Any) -> bool:
    """Evaluates the restrictions the connector needs: IsEqualTo on an extended property or a field."""
    kind = etree.QName(restriction).localname
    if kind == "And":
        return all(_matches(item, r) for r in restriction)
    if kind == "Or":
        return any(_matches(item, r) for r in restriction)
    if kind != "IsEqualTo":
        raise ResponseError("ErrorUnsupportedQueryFilter", f"The fake does not evaluate {kind} restrictions.")
    uri, constant = restriction[0], restriction.find(f"{t('FieldURIOrConstant')}/{t('Constant')}")
    wanted: str | None = constant.get("Value")
    if etree.QName(uri).localname == "ExtendedFieldURI":
        return item.extended.get(_extended_key(uri)) == wanted
    return bool(item.fields.get(_FIELD_URIS.get(uri.get("FieldURI", ""), "")) == wanted)


def _requested(shape: Any) -> tuple[set[str], set[tuple[str, str]]]:
    """(field names, extended property keys) an ItemShape asks for."""
    names: set[str] = set()
    extended: set[tuple[str, str]] = set()
    if shape is None:
        return names, extended
    if shape.findtext(t("BaseShape")) in ("Default", "AllProperties"):
        names.update(_FIELD_URIS.values())
    for uri in shape.iterfind(f"{t('AdditionalProperties')}/*"):
        if etree.QName(uri).localname == "ExtendedFieldURI":
            extended.add(_extended_key(uri))
        elif uri.get("FieldURI") in _FIELD_URIS:
            names.add(_FIELD_URIS[uri.get("FieldURI")])
    return names, extended


def _render(item: StoredItem, requested: tuple[set[str], set[tuple[str, str]]]) -> Any:
    """A t:CalendarItem with its id and the requested properties, in the schema's order."""
    names, extended = requested
    elem = _item_id_only(item)
    etree.SubElement(elem, t("ItemClass")).text = "IPM.Appointment"
    for name in ("Subject", "Sensitivity", "Body", "Categories", "Importance", "ReminderIsSet"):
        if name in names and name in item.fields:
            child = etree.SubElement(elem, t(name))
            child.text = item.fields[name]
            if name == "Body":
                child.set("BodyType", "Text")
    for (set_id, prop_name), value in item.extended.items():
        if (set_id, prop_name) in extended:
            prop = etree.SubElement(elem, t("ExtendedProperty"))
            etree.SubElement(
                prop,
                t("ExtendedFieldURI"),
                PropertySetId=set_id,
                PropertyName=prop_name,
                PropertyType="String",
            )
            etree.SubElement(prop, t("Value")).text = value
    if "Start" in names and item.start is not None:
        etree.SubElement(elem, t("Start")).text = item.start.strftime("%Y-%m-%dT%H:%M:%SZ")
    if "End" in names and item.end is not None:
        etree.SubElement(elem, t("End")).text = item.end.strftime("%Y-%m-%dT%H:%M:%SZ")
    for name in ("IsAllDayEvent", "LegacyFreeBusyStatus", "Location"):
        if name in names and name in item.fields:
            etree.SubElement(elem, t(name)).text = item.fields[name]
    for name, zone in (("StartTimeZone", item.start_time_zone), ("EndTimeZone", item.end_time_zone)):
        if name in names and zone is not None:
            etree.SubElement(elem, t(name), Id=zone, Name=zone)
    return elem


def _item_id_only(item: StoredItem) -> Any:
    elem = etree.Element(t("CalendarItem"))
    etree.SubElement(elem, t("ItemId"), Id=item.item_id, ChangeKey=item.change_key)
    return elem


def _items_container(items: list[Any]) -> Any:
    container = etree.Element(m("Items"))
    container.extend(items)
    return container


def _folder(
    tag: str, folder_id: str, parent_id: str | None, distinguished: str, name: str, count: str | None
) -> Any:
    elem = etree.Element(t(tag))
    etree.SubElement(elem, t("FolderId"), Id=folder_id, ChangeKey="AQAAAA==")
    if parent_id is not None:
        etree.SubElement(elem, t("ParentFolderId"), Id=parent_id, ChangeKey="AQAAAA==")
    if tag == "CalendarFolder":
        etree.SubElement(elem, t("FolderClass")).text = "IPF.Appointment"
    etree.SubElement(elem, t("DisplayName")).text = name
    if count is not None:
        etree.SubElement(elem, t("TotalCount")).text = count
    etree.SubElement(elem, t("ChildFolderCount")).text = "0"
    rights = etree.SubElement(elem, t("EffectiveRights"))
    for right in ("CreateAssociated", "CreateContents", "CreateHierarchy", "Delete", "Modify", "Read"):
        etree.SubElement(rights, t(right)).text = "true"
    etree.SubElement(elem, t("DistinguishedFolderId")).text = distinguished
    return elem


def _success(operation: str, children: list[Any]) -> Any:
    message = etree.Element(m(f"{operation}ResponseMessage"), ResponseClass="Success")
    etree.SubElement(message, m("ResponseCode")).text = "NoError"
    message.extend(children)
    return message


def _error(operation: str, err: ResponseError) -> Any:
    message = etree.Element(m(f"{operation}ResponseMessage"), ResponseClass="Error")
    etree.SubElement(message, m("MessageText")).text = err.message
    etree.SubElement(message, m("ResponseCode")).text = err.code
    etree.SubElement(message, m("DescriptiveLinkKey")).text = "0"
    return message


def _server_version_header() -> Any:
    header = etree.Element(f"{{{SOAP}}}Header")
    etree.SubElement(
        header,
        t("ServerVersionInfo"),
        MajorVersion="15",
        MinorVersion="1",
        MajorBuildNumber="2507",
        MinorBuildNumber="6",
        Version="V2017_07_11",
    )
    return header


def _envelope(body_child: Any) -> bytes:
    envelope = etree.Element(f"{{{SOAP}}}Envelope", nsmap=NSMAP)
    envelope.append(_server_version_header())
    etree.SubElement(envelope, f"{{{SOAP}}}Body").append(body_child)
    return bytes(etree.tostring(envelope, xml_declaration=True, encoding="utf-8"))


def _fault(fault: SoapFault) -> bytes:
    """A SOAP 1.1 fault as Exchange sends it (code in the types namespace, detail in errors)."""
    envelope = etree.Element(f"{{{SOAP}}}Envelope", nsmap=NSMAP)
    body = etree.SubElement(envelope, f"{{{SOAP}}}Body")
    elem = etree.SubElement(body, f"{{{SOAP}}}Fault")
    etree.SubElement(elem, "faultcode", nsmap={"a": T}).text = f"a:{fault.code}"
    etree.SubElement(elem, "faultstring").text = fault.message
    detail = etree.SubElement(elem, "detail")
    etree.SubElement(detail, f"{{{E}}}ResponseCode", nsmap={"e": E}).text = fault.code
    etree.SubElement(detail, f"{{{E}}}Message", nsmap={"e": E}).text = fault.message
    if fault.values:
        xml = etree.SubElement(detail, t("MessageXml"))
        for name, value in fault.values.items():
            etree.SubElement(xml, t("Value"), Name=name).text = value
    return bytes(etree.tostring(envelope, xml_declaration=True, encoding="utf-8"))
