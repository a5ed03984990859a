"""Outbound targets: which URLs a manual endpoint, a stress test or an evaluation may send requests to.

Without rules, a URL typed into a request makes the platform a proxy into its own network (its own
pages, cloud metadata, private services) and a port and name scanner. ``check_target`` is called where
each feature resolves a target (inference ``prepare``, stress ``resolve_target``, evaluation targets)
and again by the job worker before it launches evalscope. Its rules, in order:

1. Only ``http`` and ``https``.
2. ``targets.deny``: host names (``*.example.com`` for a domain), addresses, CIDRs, each optionally with
   ``:port``; a match on the name or on any address the name resolves to refuses the target.
3. Fixed defaults, never lifted: link-local and metadata addresses (169.254.0.0/16, fe80::/10,
   fd00:ec2::254, 100.100.100.200, metadata.google.internal), the unspecified address (0.0.0.0, ::,
   which reaches this machine), and the platform's own server port on this machine (the simulator's
   port is another and stays allowed).
4. ``targets.allow``: when it is not empty, a request's target must match it (the name, or every
   address); a match lifts rule 5.
5. Loopback and private ranges are refused when ``targets.allow_private`` is false (the production
   default; true elsewhere so that the simulator and a local vLLM work).

Catalogue and EMD targets come from the operator's configuration, not from a request: they are checked
with rules 1-3 only (``trusted=True``).

The host name is resolved once and every address is checked. DNS rebinding: the inference relay
connects to the very addresses that were checked (``Target.addresses``); evalscope resolves the name
itself, so the job worker checks again just before it launches (the remaining window is the seconds
between that check and evalscope's first connection). A name that does not resolve is not refused
here: it fails at connection time with the same message as a refused port, so that the two cannot be
told apart from outside (the server log keeps the reason).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from backend.errors import ApiError

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_NETWORKS: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32"))
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})


class TargetRefused(ValueError):
    """A URL the rules refuse; the message names the rule."""


@dataclass(frozen=True)
class Rule:
    """One ``targets.allow``/``targets.deny`` entry: a host name (``*.`` for a domain) or a network, and a port."""

    text: str
    name: str | None
    network: Network | None
    port: int | None

    @classmethod
    def parse(cls, text: str, where: str) -> Rule:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: {text!r} is not a host name, address, CIDR or host:port")
        raw = text.strip().lower()
        port: int | None = None
        host = raw
        if raw.startswith("["):  # [v6]:port or [v6]
            inside, _, rest = raw[1:].partition("]")
            host = inside
            if rest:
                port = _port(rest.removeprefix(":"), text, where)
        elif raw.count(":") == 1:
            host, _, port_text = raw.partition(":")
            port = _port(port_text, text, where)
        try:
            return cls(text, None, ipaddress.ip_network(host, strict=False), port)
        except ValueError:
            pass
        label = host.removeprefix("*.")
        if not label or not all(part and all(c.isalnum() or c in "-_" for c in part) for part in label.split(".")):
            raise ValueError(f"{where}: {text!r} is not a host name, address, CIDR or host:port")
        return cls(text, host.rstrip("."), None, port)

    def matches_name(self, host: str, port: int) -> bool:
        if self.name is None or (self.port is not None and self.port != port):
            return False
        if self.name.startswith("*."):
            return host.endswith(self.name[1:])
        return host == self.name

    def matches_address(self, address: Address, port: int) -> bool:
        if self.network is None or (self.port is not None and self.port != port):
            return False
        return address.version == self.network.version and address in self.network


def _port(text: str, whole: str, where: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{where}: {whole!r} has no valid port")
    return int(text)


@dataclass(frozen=True)
class Policy:
    allow: tuple[Rule, ...]
    deny: tuple[Rule, ...]
    allow_private: bool
    own_ports: frozenset[int]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Policy:
        section = config.get("targets") or {}
        own = {int(config["server"]["port"])} if config.get("server", {}).get("port") else set()
        return cls(allow=tuple(Rule.parse(t, "targets.allow") for t in section.get("allow") or ()),
                   deny=tuple(Rule.parse(t, "targets.deny") for t in section.get("deny") or ()),
                   allow_private=bool(section.get("allow_private", True)), own_ports=frozenset(own))


def resolve(host: str, port: int) -> list[Address]:
    """Every address the name resolves to (an address literal is itself); [] when it does not resolve."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        log.info("target host %r does not resolve: %s", host, exc)
        return []
    seen: list[Address] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in seen:
            seen.append(address)
    return seen


def _local_addresses() -> set[Address]:
    """This machine's own addresses (besides loopback), where the platform's port may listen."""
    found: set[Address] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
    except OSError:
        pass
    return found


def _plain(address: Address) -> Address:
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def _request_host() -> tuple[str, int] | None:
    """The host:port the current request reached us by (behind a port mapping it is not server.port)."""
    from flask import has_request_context, request

    if not has_request_context():
        return None
    parts = urlsplit(f"//{request.host}")
    try:
        port = parts.port or (443 if request.scheme == "https" else 80)
    except ValueError:
        return None
    return (parts.hostname or "").rstrip("."), port


def check_url(url: str, policy: Policy, *, trusted: bool = False,
              own: Iterable[tuple[str, int]] = ()) -> list[Address]:
    """The checked addresses of ``url`` (connect to these), or TargetRefused naming the rule."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TargetRefused(f"the scheme {parts.scheme or '(none)'!r} is not allowed "
                            "(targets default: http and https only)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise TargetRefused("the URL names no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TargetRefused("the URL's port is not a number from 1 to 65535") from None
    for rule in policy.deny:
        if rule.matches_name(host, port):
            raise TargetRefused(f"{host} is denied (targets.deny: {rule.text})")
    if host in METADATA_NAMES:
        raise TargetRefused(f"{host} is a cloud metadata service (targets.deny default: metadata)")
    own_names = {(h, p) for h, p in own}
    if (host, port) in own_names:
        raise TargetRefused(f"{host}:{port} is this platform itself (targets.deny default: own port)")
    addresses = [_plain(a) for a in resolve(host, port)]
    locals_: set[Address] | None = None
    for address in addresses:
        subject = f"{address} is" if str(address) == host else f"{host} resolves to {address}, which is"
        for rule in policy.deny:
            if rule.matches_address(address, port):
                raise TargetRefused(f"{subject} denied (targets.deny: {rule.text})")
        if any(address.version == n.version and address in n for n in METADATA_NETWORKS):
            raise TargetRefused(f"{subject} a link-local address (targets.deny default: metadata)")
        if address.is_unspecified:
            raise TargetRefused(f"{subject} the unspecified address, this machine (targets.deny default: own port)")
        if port in policy.own_ports:
            if locals_ is None:
                locals_ = _local_addresses()
            if address.is_loopback or address in locals_:
                raise TargetRefused(f"{subject} this machine, and port {port} is the platform's own "
                                    "(targets.deny default: own port)")
        if any(str(address) == h and port == p for h, p in own_names):
            raise TargetRefused(f"{host}:{port} is this platform itself (targets.deny default: own port)")
    if trusted:
        return addresses
    if policy.allow:
        by_name = any(rule.matches_name(host, port) for rule in policy.allow)
        if not by_name:
            outside = [a for a in addresses if not any(r.matches_address(a, port) for r in policy.allow)]
            if outside or not addresses:
                shown = host if not outside or str(outside[0]) == host else f"{host} ({outside[0]})"
                raise TargetRefused(f"{shown}:{port} is not in targets.allow")
        return addresses
    if not policy.allow_private:
        for address in addresses:
            if not address.is_global:
                subject = f"{address} is" if str(address) == host else f"{host} resolves to {address}, which is"
                kind = "a loopback" if address.is_loopback else "a private"
                raise TargetRefused(f"{subject} {kind} address (targets.allow_private is false)")
    return addresses


def check_target(url: str, field: str, config: Mapping[str, Any], *, trusted: bool = False) -> list[str]:
    """``check_url`` with the app's configuration and the current request's own host; a refusal is a 400
    naming ``field`` and the rule. Returns the checked addresses as strings."""
    own = [h for h in (_request_host(),) if h is not None]
    try:
        return [str(a) for a in check_url(url, Policy.from_config(config), trusted=trusted, own=own)]
    except TargetRefused as exc:
        log.warning("target refused for %s: %s", field, exc)
        raise ApiError(f"{field}: {exc}", field=field, code="target_refused",
                       details={"rule": _rule_of(str(exc))}) from None


def launch_problem(url: str, config: Mapping[str, Any], *, trusted: bool = False) -> str | None:
    """The worker's re-check before a launch (the name may resolve elsewhere by now): None or the refusal."""
    try:
        check_url(url, Policy.from_config(config), trusted=trusted)
    except TargetRefused as exc:
        return f"the target is refused: {exc}"
    return None


def _rule_of(message: str) -> str:
    """The rule a refusal names: the text in its closing parentheses, else the allow list."""
    if message.endswith(")") and "(" in message:
        return message.rpartition("(")[2][:-1]
    return "targets.allow"


def check_config(section: Mapping[str, Any]) -> dict[str, Any]:
    """``targets.*`` validated (config load time): lists of rules and a boolean."""
    out = dict(section)
    for key in ("allow", "deny"):
        value = out.get(key) or []
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise ValueError(f"targets.{key} must be a list of host names, CIDRs or host:port")
        for item in value:
            Rule.parse(item, f"targets.{key}")
        out[key] = value
    if not isinstance(out.get("allow_private", True), bool):
        raise ValueError(f"targets.allow_private must be true or false, not {out.get('allow_private')!r}")
    return out
