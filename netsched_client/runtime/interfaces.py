"""Local addresses for paths: an IP literal as is, an interface name resolved,
or every usable address discovered (Linux: ioctl for IPv4, /proc for IPv6)."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

SIOCGIFADDR = 0x8915
IF_INET6 = Path("/proc/net/if_inet6")


class InterfaceError(ValueError):
    """A path's local address or interface name cannot be used."""


def interface_address(name: str, family: socket.AddressFamily) -> str:
    """The first address of interface `name` in `family`."""
    if family == socket.AF_INET6:
        for ifname, address in _inet6_addresses():
            if ifname == name:
                return address
        raise InterfaceError(f"interface {name!r} has no IPv6 address")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(
                sock.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15])
            )
        except OSError as exc:
            raise InterfaceError(f"interface {name!r}: {exc.strerror or exc}") from None
    return socket.inet_ntoa(packed[20:24])


def resolve_local(spec: str, family: socket.AddressFamily) -> str:
    """A path's local address from an IP literal or an interface name."""
    try:
        address = ipaddress.ip_address(spec)
    except ValueError:
        return interface_address(spec, family)
    if (address.version == 6) != (family == socket.AF_INET6):
        raise InterfaceError(f"local address {spec} is not of the server's address family")
    return spec


def discover(family: socket.AddressFamily, *, include_loopback: bool = False) -> list[str]:
    """Every local address in `family`, one per interface, loopback excluded by default."""
    found: list[str] = []
    for _, name in socket.if_nameindex():
        try:
            address = interface_address(name, family)
        except InterfaceError:
            continue
        if include_loopback or not ipaddress.ip_address(address).is_loopback:
            found.append(address)
    return found


def _inet6_addresses() -> list[tuple[str, str]]:
    if not IF_INET6.exists():
        return []
    out = []
    for line in IF_INET6.read_text().splitlines():
        fields = line.split()
        if len(fields) == 6:
            raw = fields[0]
            address = ipaddress.IPv6Address(bytes.fromhex(raw))
            if not address.is_link_local:
                out.append((fields[5], str(address)))
    return out
