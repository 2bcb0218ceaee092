"""The egress policy: which addresses a connector may open a connection to (no server-side request
forgery through a destination's URL).

Every connector's HTTP client connects through :meth:`EgressPolicy.resolve` (see
:mod:`connectors.egress_clients` for the httpx, requests/urllib3, httplib2 and urllib plumbing):

* the host is resolved by the policy, every address it resolves to is checked, and the socket is
  opened to one of the *checked* addresses: never to the name again, so a DNS answer that changes
  between the check and the connection (DNS rebinding) cannot slip a private address in;
* the check runs on every new connection, redirects and token calls included;
* refused by default: loopback, private (RFC 1918, unique-local), link-local, CGNAT (100.64/10),
  multicast, reserved, unspecified, documentation and benchmark ranges, and IPv6 forms that embed
  one of them (IPv4-mapped, IPv4-compatible, 6to4, NAT64); every spelling of an address
  (``2130706433``, ``0x7f.1``, ``127.1``, ``[::ffff:127.0.0.1]``) is resolved to the address itself
  before the check, so no spelling escapes it;
* cloud metadata endpoints (169.254.169.254, fd00:ec2::254, 168.63.129.16, 100.100.100.200,
  192.0.0.192, ``metadata.google.internal``...) are refused always, whatever the allow-list says;
* ``ABSYNC_ALLOWED_NETWORKS`` (CIDRs) widens the policy; ``ABSYNC_ENV=development`` allows loopback.

A refusal is :class:`AddressNotAllowed`, whose text is the same for every refused target and for a
name that does not resolve: it tells nothing about the target (no port-open/closed oracle, since no
connection is attempted, and no internal-DNS oracle).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NOT_ALLOWED = (
    "address not allowed: the destination's host is not an address absync may connect to "
    "(or does not resolve); loopback, private, link-local and cloud metadata addresses are refused "
    "unless ABSYNC_ALLOWED_NETWORKS lists them"
)

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean... instance metadata
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.253",  # AWS VPC DNS
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::253",  # AWS VPC DNS over IPv6
        "168.63.129.16",  # Azure WireServer (a public-looking address)
        "100.100.100.200",  # Alibaba Cloud metadata
        "192.0.0.192",  # Oracle Cloud metadata
    )
)
METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.com",
        "metadata.tencentyun.com",
    }
)
EXTRA_REFUSED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "192.0.0.0/24",  # IETF protocol assignments (Python counts most of it as global)
        "100.64.0.0/10",  # CGNAT, shared address space
        "64:ff9b:1::/48",  # local-use NAT64
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class AddressNotAllowed(Exception):
    """The policy refused the target. Deliberately *not* an OSError: the HTTP libraries must not
    wrap it into "connection failed" or retry it; it reaches the connector unchanged."""

    def __init__(self) -> None:
        super().__init__(NOT_ALLOWED)


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64, Teredo), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64 or int(address) >> 32 == 0:  # NAT64 or IPv4-compatible (::a.b.c.d)
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """True for a globally routable unicast address (and any IPv4 it embeds is one too)."""
    for candidate in (address, embedded_ipv4(address)):
        if candidate is None:
            continue
        if (
            not candidate.is_global
            or candidate.is_private
            or candidate.is_loopback
            or candidate.is_link_local
            or candidate.is_multicast
            or candidate.is_reserved
            or candidate.is_unspecified
            or any(candidate in n for n in EXTRA_REFUSED if n.version == candidate.version)
        ):
            return False
        if isinstance(candidate, ipaddress.IPv6Address) and candidate.is_site_local:
            return False
    return True


def parse_address(text: str) -> IPAddress | None:
    """``text`` as a standard IP literal (brackets and IPv6 zone dropped), else None."""
    host = text.strip().strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True)
class EgressPolicy:
    """Which addresses connectors may reach. The default (no argument) is production's policy."""

    allowed: tuple[IPNetwork, ...] = ()
    allow_loopback: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> EgressPolicy:
        """From ``ABSYNC_ALLOWED_NETWORKS`` and ``ABSYNC_ENV`` (a :class:`streams.settings.Settings`)."""
        return cls.build(settings.allowed_networks, allow_loopback=settings.development)

    @classmethod
    def build(cls, networks: Iterable[str], *, allow_loopback: bool = False) -> EgressPolicy:
        return cls(
            tuple(ipaddress.ip_network(n, strict=False) for n in networks), allow_loopback=allow_loopback
        )

    def permits(self, address: IPAddress) -> bool:
        """True when a connection to ``address`` is allowed."""
        embedded = embedded_ipv4(address)
        forms = [address] if embedded is None else [address, embedded]
        if any(form in METADATA_ADDRESSES for form in forms):
            return False
        if self.allow_loopback and any(
            form in n for form in forms for n in LOOPBACK if n.version == form.version
        ):
            return True
        if any(form in n for form in forms for n in self.allowed if n.version == form.version):
            return True
        return is_public(address)

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` to connect to, all permitted; raises :class:`AddressNotAllowed`
        when any address it resolves to is refused (or it does not resolve). Blocking (DNS)."""
        name = host.strip().strip("[]").rstrip(".").lower()
        if name in METADATA_NAMES:
            raise AddressNotAllowed()
        literal = parse_address(name)
        if literal is not None:
            addresses: Sequence[IPAddress] = [literal]
        else:
            try:
                infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                raise AddressNotAllowed() from None
            addresses = [a for a in (parse_address(str(info[4][0])) for info in infos) if a is not None]
        if not addresses or not all(self.permits(a) for a in addresses):
            raise AddressNotAllowed()
        return list(dict.fromkeys(str(a) for a in addresses))

    def create_connection(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        source_address: tuple[str, int] | None = None,
        socket_options: Iterable[tuple[int, int, int | bytes]] | None = None,
    ) -> socket.socket:
        """A TCP socket to one of ``host``'s checked addresses (the first that answers)."""
        last: OSError | None = None
        for address in self.resolve(host, port):
            try:
                sock = socket.create_connection((address, port), timeout, source_address)
            except OSError as exc:
                last = exc
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for option in socket_options or ():
                    sock.setsockopt(*option)
            except OSError:
                sock.close()
                raise
            return sock
        assert last is not None  # resolve() returns at least one address
        raise last


DEFAULT_POLICY = EgressPolicy()
"""Production's policy: what a connector built without options gets."""


def refused(exc: BaseException) -> bool:
    """True when ``exc`` is, or was caused by, an :class:`AddressNotAllowed`. Libraries wrap errors
    in their own ways (``__cause__``, ``__context__``, urllib3's and urllib's ``reason``, an ``args``
    item): all are followed, up to a bound."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending and len(seen) < 64:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, AddressNotAllowed):
            return True
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending.extend(item for item in linked if isinstance(item, BaseException))
    return False
