"""Command line: `python -m modelserver --host 127.0.0.1 --port 8001 [fault flags]`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import grpc

from .faults import FaultSettings
from .server import DEFAULT_MAX_BATCH, TlsFiles, serve


def _status_code(name: str) -> grpc.StatusCode:
    """Parse a gRPC status code name such as UNAVAILABLE."""
    try:
        return grpc.StatusCode[name.upper()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown gRPC status code {name!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """Flags for binding, limits, TLS and fault injection."""
    p = argparse.ArgumentParser(prog="python -m modelserver", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--workers", type=int, default=32, help="handler threads")
    p.add_argument("--max-message-mb", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH)
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain (enables TLS)")
    p.add_argument("--tls-key", type=Path, help="PEM private key")
    p.add_argument("--http-port", type=int, help="also serve the OpenAI-compatible HTTP API on this port")
    p.add_argument(
        "--api-key-env",
        default="MODELSERVER_API_KEY",
        help="environment variable holding the bearer token the HTTP API requires (unset = none)",
    )
    p.add_argument("--tls-client-ca", type=Path, help="PEM CA for client certs (mutual TLS)")
    f = p.add_argument_group("fault injection (tests and demos)")
    f.add_argument("--latency-ms", type=float, default=0.0)
    f.add_argument("--latency-jitter-ms", type=float, default=0.0)
    f.add_argument("--error-rate", type=float, default=0.0, help="fraction of ModelInfer calls to fail")
    f.add_argument("--error-code", type=_status_code, default=grpc.StatusCode.UNAVAILABLE)
    f.add_argument("--hang", action="store_true", help="hold ModelInfer calls until the client's deadline")
    f.add_argument("--poison-marker", help="reject records containing this string (INVALID_ARGUMENT)")
    f.add_argument("--retry-after-s", type=float, help="HTTP: send Retry-After with injected errors")
    f.add_argument("--seed", type=int, help="make error and jitter draws reproducible")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            sys.exit("--tls-cert and --tls-key go together")
        tls = TlsFiles(
            args.tls_cert.read_bytes(),
            args.tls_key.read_bytes(),
            args.tls_client_ca.read_bytes() if args.tls_client_ca else None,
        )
    faults = FaultSettings(
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        error_rate=args.error_rate,
        error_code=args.error_code,
        hang=args.hang,
        poison_marker=args.poison_marker,
        seed=args.seed,
        retry_after_s=args.retry_after_s,
    )
    handle = serve(
        args.host,
        args.port,
        faults=faults,
        max_workers=args.workers,
        max_message_bytes=args.max_message_mb * 1024 * 1024,
        max_batch=args.max_batch,
        tls=tls,
        http_port=args.http_port,
        api_key=os.environ.get(args.api_key_env, ""),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"modelserver listening on {handle.address}", flush=True)
    if handle.http is not None:
        print(f"modelserver OpenAI-compatible API on {handle.http.base_url}", flush=True)
    stop.wait()
    handle.stop(grace=5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
