"""A per-process pool of gRPC channels that only ever dials addresses its resolver approved.

Every channel targets IP literals (`ipv4:a:port,b:port` or `ipv6:[a]:port`), never the endpoint's
name: the pool's resolver is the only resolver that sees the name, so gRPC's own DNS (c-ares) can
never give a second, different answer, and a reconnect goes back to an approved address. The name
stays what TLS checks the certificate against and what the server sees as :authority.

The portal installs its SSRF guard as the resolver of every pool (`set_default_resolver`); on its own
this package resolves without a policy (`resolve_unchecked`), still pinning each channel.

Channels are kept one per model config (`ModelEndpoint.config_id`): a changed endpoint, TLS setting or
approved address replaces the config's channel, `discard(config_id)` closes it (the portal calls it when
a config is saved or deleted), and the name is resolved and checked again every `recheck_s` seconds
and after a call fails with UNAVAILABLE (`invalidate`). A refused answer closes the channel.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from .config import ModelEndpoint, TlsConfig
from .errors import EndpointRefused, EndpointUnresolved

__all__ = [
    "ChannelPool",
    "Resolver",
    "default_pool",
    "grpc_target",
    "resolve_unchecked",
    "set_default_resolver",
    "split_endpoint",
]

# (host, port) -> approved IP addresses, preferred first; raises EndpointRefused / EndpointUnresolved.
Resolver = Callable[[str, int], Sequence[str]]

_BRACKETED = re.compile(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})")
_PLAIN = re.compile(r"([^:\[\]/,\s]+):(\d{1,5})")


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """(host, port) of "host:port" or "[ipv6]:port"; anything gRPC would read as a URI is refused."""
    text = (endpoint or "").strip()
    match = _BRACKETED.fullmatch(text) or _PLAIN.fullmatch(text)
    if match is None or not (0 < int(match.group(2)) < 65536):
        raise EndpointRefused(f"endpoint {endpoint!r} is not host:port")
    return match.group(1), int(match.group(2))


def resolve_unchecked(host: str, port: int) -> list[str]:
    """Resolve without an address policy (the package default; the portal installs its guard)."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as e:
        raise EndpointUnresolved(f"{host} cannot be resolved: {e}") from e
    addresses = list(dict.fromkeys(info[4][0].split("%")[0] for info in infos))
    addresses.sort(key=lambda a: ":" in a)
    return addresses


def grpc_target(addresses: Sequence[str], port: int) -> str:
    """An IP-literal gRPC target: the addresses of the first one's family, in order (pick_first)."""
    if not addresses:
        raise EndpointUnresolved("no address to dial")
    ips = [ipaddress.ip_address(a) for a in addresses]
    version = ips[0].version
    same = [ip for ip in ips if ip.version == version]
    if version == 4:
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip in same)
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip in same)


def _target_addresses(target: str) -> list[str]:
    """The IP addresses a grpc_target() string dials."""
    scheme, _, rest = target.partition(":")
    if scheme == "ipv6":
        return [part.rsplit(":", 1)[0].strip("[]") for part in rest.split(",")]
    return [part.rsplit(":", 1)[0] for part in rest.split(",")]


_resolver_lock = threading.Lock()
_default_resolver: Resolver = resolve_unchecked


def set_default_resolver(resolver: Resolver | None) -> None:
    """Make `resolver` the one every pool without its own uses (None restores `resolve_unchecked`)."""
    global _default_resolver
    with _resolver_lock:
        _default_resolver = resolver or resolve_unchecked


def _current_default_resolver() -> Resolver:
    with _resolver_lock:
        return _default_resolver


@dataclass
class _Slot:
    spec: tuple
    target: str
    addresses: frozenset[str]
    channel: grpc.Channel
    checked_at: float
    used_at: float
    stale: bool = False


class ChannelPool:
    """One channel per model config (or per endpoint+TLS+limit for ad-hoc endpoints), pinned to approved IPs."""

    def __init__(
        self,
        *,
        resolver: Resolver | None = None,
        recheck_s: float = 30.0,
        idle_close_s: float = 600.0,
        retire_grace_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start empty; channels are created on first use.

        Args:
            resolver: (host, port) -> approved addresses; the process default when None.
            recheck_s: resolve and check the name again after this long.
            idle_close_s: close channels unused for this long.
            retire_grace_s: a replaced channel is closed this long after, so calls on it can finish.
            clock: monotonic seconds (injectable for tests).
        """
        self._lock = threading.Lock()
        self._slots: dict[object, _Slot] = {}
        self._retiring: list[tuple[float, grpc.Channel]] = []
        self._pid = os.getpid()
        self._resolver = resolver
        self.recheck_s = recheck_s
        self.idle_close_s = idle_close_s
        self.retire_grace_s = retire_grace_s
        self._clock = clock

    @staticmethod
    def _owner(config: ModelEndpoint) -> object:
        if config.config_id:
            return ("config", str(config.config_id))
        return ("endpoint", config.endpoint, config.tls, config.max_message_bytes)

    def _after_fork(self) -> None:
        # A forked child (Celery prefork) must not reuse the parent's channels: their sockets and
        # polling threads belong to the parent. Called with the lock held.
        if os.getpid() != self._pid:
            self._slots, self._retiring = {}, []
            self._pid = os.getpid()

    def get(self, config: ModelEndpoint) -> grpc.Channel:
        """The config's channel, dialling an address the resolver approved (re-checked when due).

        Raises:
            EndpointRefused: the endpoint is malformed or resolves to a refused address (its
                channel, if any, is closed).
            EndpointUnresolved: the name does not resolve and there is no approved channel yet.
        """
        owner = self._owner(config)
        spec = (config.endpoint, config.tls, config.max_message_bytes)
        now = self._clock()
        with self._lock:
            self._after_fork()
            slot = self._slots.get(owner)
            if slot is not None and slot.spec == spec and not slot.stale and now - slot.checked_at < self.recheck_s:
                slot.used_at = now
                return slot.channel
        host, port = split_endpoint(config.endpoint)
        resolver = self._resolver or _current_default_resolver()
        try:
            addresses = list(resolver(host, port))
            target = grpc_target(addresses, port)
        except EndpointUnresolved:
            with self._lock:
                slot = self._slots.get(owner)
                if slot is not None and slot.spec == spec:
                    # DNS trouble: keep the address approved before (still an IP literal, never a new one)
                    # and ask again after the next interval rather than on every call.
                    slot.checked_at, slot.used_at, slot.stale = now, now, False
                    return slot.channel
            raise
        except EndpointRefused:
            # The name now points somewhere refused: stop using the address approved before, too.
            self.discard_owner(owner)
            raise
        closing: list[grpc.Channel] = []
        with self._lock:
            self._after_fork()
            slot = self._slots.get(owner)
            if (
                slot is not None
                and slot.spec == spec
                and slot.addresses <= {str(ipaddress.ip_address(a)) for a in addresses}
            ):
                # Every address the channel dials is still approved (round-robin DNS may reorder or add
                # addresses): keep it.
                slot.checked_at, slot.used_at, slot.stale = now, now, False
                channel = slot.channel
            else:
                channel = self._create(target, host, port, config.tls, config.max_message_bytes)
                if slot is not None:
                    self._retiring.append((now, slot.channel))
                self._slots[owner] = _Slot(spec, target, frozenset(_target_addresses(target)), channel, now, now)
            closing = self._sweep(now)
        for old in closing:
            old.close()
        return channel

    def target(self, config: ModelEndpoint) -> str | None:
        """The IP-literal target the config's current channel dials (None without one)."""
        with self._lock:
            slot = self._slots.get(self._owner(config))
            return slot.target if slot is not None else None

    def invalidate(self, config: ModelEndpoint) -> None:
        """Resolve and check again before the config's next call (its connection just failed)."""
        with self._lock:
            slot = self._slots.get(self._owner(config))
            if slot is not None:
                slot.stale = True

    def discard(self, config_id: object) -> bool:
        """Close the channel of a model config now (changed or deleted); True when there was one."""
        return self.discard_owner(("config", str(config_id)))

    def discard_owner(self, owner: object) -> bool:
        """Close the channel kept for `owner` (see `_owner`)."""
        with self._lock:
            slot = self._slots.pop(owner, None)
        if slot is None:
            return False
        slot.channel.close()
        return True

    def _sweep(self, now: float) -> list[grpc.Channel]:
        """Channels to close: retired ones past their grace, and idle ones. Called with the lock held."""
        closing = [ch for at, ch in self._retiring if now - at >= self.retire_grace_s]
        self._retiring = [(at, ch) for at, ch in self._retiring if now - at < self.retire_grace_s]
        for owner, slot in list(self._slots.items()):
            if now - slot.used_at >= self.idle_close_s:
                del self._slots[owner]
                closing.append(slot.channel)
        return closing

    @staticmethod
    def _create(target: str, host: str, port: int, tls: TlsConfig | None, max_bytes: int) -> grpc.Channel:
        """Open a channel to IP literals; the host name is the :authority and the TLS name."""
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        options: list[tuple[str, object]] = [
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            # Retries are ours (bounded, counted, breaker-aware); gRPC's own would hide them.
            ("grpc.enable_retries", 0),
            ("grpc.default_authority", authority),
        ]
        if tls is None:
            return grpc.insecure_channel(target, options=options)
        # The certificate is checked against the name the operator entered (or the configured
        # server name), never against the IP literal the channel dials.
        options.append(("grpc.ssl_target_name_override", tls.server_name or host))
        creds = grpc.ssl_channel_credentials(
            root_certificates=tls.root_certs,
            private_key=tls.client_key,
            certificate_chain=tls.client_cert,
        )
        return grpc.secure_channel(target, creds, options=options)

    def close(self) -> None:
        """Close every channel (tests, shutdown)."""
        with self._lock:
            channels = [slot.channel for slot in self._slots.values()] + [ch for _, ch in self._retiring]
            self._slots, self._retiring = {}, []
        for channel in channels:
            channel.close()


_default_pool = ChannelPool()


def default_pool() -> ChannelPool:
    """The process-wide pool."""
    return _default_pool
