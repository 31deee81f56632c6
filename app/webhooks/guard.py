"""Where a webhook may send: ``http`` / ``https`` URLs whose host resolves only to public
addresses — never loopback, private, link-local (cloud metadata), multicast, reserved
or unspecified ones — unless ``STEWARD_WEBHOOK_ALLOW_PRIVATE`` is true. The host is
resolved when the webhook is created (a 422) and again at every attempt, and the
attempt connects to the address it checked (so a DNS answer that changes in between
cannot send it elsewhere)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(ValueError):
    """A URL a webhook may not send to (the message says why)."""


@dataclass(frozen=True)
class Target:
    """A checked URL: its parts and the address an attempt connects to."""

    scheme: str
    host: str
    port: int
    address: str

    def url(self, original: str) -> str:
        """``original`` with its host replaced by the checked address."""
        parts = urlsplit(original)
        addr = f"[{self.address}]" if ":" in self.address else self.address
        netloc = f"{addr}:{parts.port}" if parts.port else addr
        return parts._replace(netloc=netloc).geturl()


def public(ip: IPAddress) -> bool:
    """A globally routable unicast address (``is_global``: not private, loopback,
    link-local, shared 100.64/10 — where some clouds keep their metadata service —,
    reserved or unspecified), and so is any IPv4 address embedded in it (IPv4-mapped,
    6to4, Teredo)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        if any(e is not None and not public(e) for e in embedded):
            return False
        if ip.ipv4_mapped is not None:
            return True
    return ip.is_global and not ip.is_multicast


def split(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of a webhook URL; Refused when it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise Refused(f"not a URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise Refused("only http and https URLs")
    host = parts.hostname
    if not host:
        raise Refused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise Refused("credentials in the URL are not allowed (put them in the path or use the signature)")
    return scheme, host, port or (443 if scheme == "https" else 80)


def check(url: str, *, allow_private: bool) -> Target:
    """Resolve ``url``'s host and check every address (see the module doc)."""
    scheme, host, port = split(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise Refused(f"the host {host!r} does not resolve: {e}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise Refused(f"the host {host!r} does not resolve")
    if not allow_private:
        for a in addresses:
            if not public(ipaddress.ip_address(a.split("%", 1)[0])):
                raise Refused(
                    f"the host {host!r} resolves to {a}, a loopback, private or link-local address "
                    "(allowed only with STEWARD_WEBHOOK_ALLOW_PRIVATE=true)"
                )
    return Target(scheme, host, port, addresses[0])
