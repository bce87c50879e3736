"""A per-process pool of gRPC channels keyed by endpoint, TLS material and message limit."""

from __future__ import annotations

import os
import threading

import grpc

from .config import ModelEndpoint, TlsConfig

__all__ = ["ChannelPool", "default_pool"]


class ChannelPool:
    """Reuse one channel per (endpoint, TLS, limit): channels multiplex calls and are costly."""

    def __init__(self) -> None:
        """Start empty; channels are created on first use."""
        self._lock = threading.Lock()
        self._channels: dict[tuple, grpc.Channel] = {}
        self._pid = os.getpid()

    def get(self, config: ModelEndpoint) -> grpc.Channel:
        """Return the shared channel for this endpoint, creating it once."""
        key = (config.endpoint, config.tls, config.max_message_bytes)
        with self._lock:
            if os.getpid() != self._pid:
                # A forked child (Celery prefork) must not reuse the parent's channels: their
                # sockets and polling threads belong to the parent.
                self._channels = {}
                self._pid = os.getpid()
            channel = self._channels.get(key)
            if channel is None:
                channel = self._create(config.endpoint, config.tls, config.max_message_bytes)
                self._channels[key] = channel
            return channel

    @staticmethod
    def _create(endpoint: str, tls: TlsConfig | None, max_bytes: int) -> grpc.Channel:
        """Open a channel; keepalive pings notice a dead server between calls."""
        options: list[tuple[str, object]] = [
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            # Retries are ours (bounded, counted, breaker-aware); gRPC's own would hide them.
            ("grpc.enable_retries", 0),
        ]
        if tls is None:
            return grpc.insecure_channel(endpoint, options=options)
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        creds = grpc.ssl_channel_credentials(
            root_certificates=tls.root_certs,
            private_key=tls.client_key,
            certificate_chain=tls.client_cert,
        )
        return grpc.secure_channel(endpoint, creds, options=options)

    def close(self) -> None:
        """Close every channel (tests, shutdown)."""
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()


_default_pool = ChannelPool()


def default_pool() -> ChannelPool:
    """The process-wide pool."""
    return _default_pool
