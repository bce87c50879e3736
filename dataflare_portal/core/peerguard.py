"""AUTH_MODE=none stays on loopback while serving, not only in `manage.py check`.

Two guards, both loud in the log:

- `PeerGuardMiddleware` answers 403 to every request whose peer (REMOTE_ADDR) is not a loopback
  address. X-Forwarded-For is read only when REMOTE_ADDR is one of `TRUSTED_PROXIES`; then the
  client is the right-most address in it that is not a trusted proxy.
- `assert_safe_bind()` runs in the WSGI/ASGI entry: it refuses to start (ImproperlyConfigured, so
  gunicorn's worker fails to boot) when it can see a non-loopback bind: listening sockets this
  process inherited, gunicorn's own configuration (argv, GUNICORN_CMD_ARGS, config file, PORT),
  `manage.py runserver ADDR:PORT`, and uvicorn/daphne/hypercorn host options.

`AUTH_MODE_NONE_ALLOW_REMOTE=true` (a trusted proxy authenticates every request) turns both off,
with a warning at start.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import sys

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponseForbidden, JsonResponse
from django.utils.translation import gettext as _

log = logging.getLogger("dataflare.security")

__all__ = ["PeerGuardMiddleware", "assert_safe_bind", "client_ip", "detected_binds", "is_loopback_host"]


def _networks(entries) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(f"TRUSTED_PROXIES holds {entry!r}, not an address or network.") from exc
    return nets


def _ip(value: str):
    value = (value or "").strip().strip("[]")
    if "%" in value:  # IPv6 zone id
        value = value.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1, IPv4-mapped loopback)."""
    host = (host or "").strip().strip("[]")
    if host.lower() == "localhost":
        return True
    address = _ip(host)
    return address is not None and address.is_loopback


def client_ip(request) -> str:
    """The client's address: REMOTE_ADDR, or X-Forwarded-For when REMOTE_ADDR is a trusted proxy."""
    remote = request.META.get("REMOTE_ADDR", "") or ""
    proxies = _networks(settings.TRUSTED_PROXIES)
    address = _ip(remote)
    if not proxies or address is None or not any(address in net for net in proxies):
        return remote
    forwarded = [p.strip() for p in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if p.strip()]
    # Walk from the right: every hop we trust appended the address it saw; the first untrusted one
    # is the client (anything further left was written by the client and proves nothing).
    for hop in reversed(forwarded):
        hop_ip = _ip(hop)
        if hop_ip is None:
            return hop
        if not any(hop_ip in net for net in proxies):
            return str(hop_ip)
    return forwarded[0] if forwarded else remote


class PeerGuardMiddleware:
    """AUTH_MODE=none: refuse (403) every request from beyond loopback, before any other work."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if settings.AUTH_MODE == "none" and not settings.AUTH_MODE_NONE_ALLOW_REMOTE:
            peer = client_ip(request)
            if not is_loopback_host(peer):
                log.warning(
                    "AUTH_MODE=none: refused %s %s from %s (not loopback); use AUTH_MODE=local to serve remote clients",
                    request.method,
                    request.path,
                    peer or "an unknown address",
                )
                message = _("This portal runs without authentication and only answers on this machine (loopback).")
                if request.path.startswith("/api/"):
                    from .api.exceptions import error_body

                    return JsonResponse(error_body(403, "remote_refused", message), status=403)
                return HttpResponseForbidden(message, content_type="text/plain; charset=utf-8")
        return self.get_response(request)


# ---- Start-up: which addresses will this server listen on? ------------------------------------
def _host_of(bind: str) -> str | None:
    """The host of a bind string (host:port, [v6]:port, unix:/path, fd://n); None for non-TCP binds."""
    bind = bind.strip()
    if bind.startswith(("unix:", "fd://")) or bind.startswith("/"):
        return None
    if bind.startswith("["):
        return bind[1 : bind.index("]")] if "]" in bind else bind
    if bind.count(":") > 1:  # bare IPv6
        return bind
    host = bind.rsplit(":", 1)[0] if ":" in bind else bind
    # gunicorn and runserver read an empty host or a bare port as "all interfaces" / default.
    return host


def _listening_sockets() -> list[str]:
    """Hosts of the TCP listening sockets this process holds (gunicorn workers inherit them)."""
    hosts = []
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        return hosts
    for fd in fds:
        if fd < 3:
            continue
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                continue
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                continue
            hosts.append(str(sock.getsockname()[0]))
        except OSError:
            continue
        finally:
            sock.close()
    return hosts


def _gunicorn_binds(argv: list[str]) -> list[str]:
    """gunicorn's effective bind, read with gunicorn's own config loader (argv, env, config file)."""
    if not argv or "gunicorn" not in os.path.basename(argv[0]):
        return []
    try:
        from gunicorn.app.wsgiapp import WSGIApplication
        from gunicorn.config import Config
    except ImportError:
        return []
    cfg = Config(WSGIApplication.__doc__ or "")
    parser = cfg.parser()
    args, _unknown = parser.parse_known_args(argv[1:])
    env_line = os.environ.get("GUNICORN_CMD_ARGS", "")
    env_args = parser.parse_known_args(env_line.split())[0] if env_line else None
    binds: list[str] = []
    config_file = args.config or (env_args.config if env_args else None)
    if not config_file and os.path.exists("gunicorn.conf.py"):
        config_file = "gunicorn.conf.py"
    if config_file and not str(config_file).startswith("python:") and os.path.exists(config_file):
        namespace: dict = {"__file__": config_file}
        try:
            with open(config_file, encoding="utf-8") as fh:
                exec(compile(fh.read(), config_file, "exec"), namespace)  # noqa: S102 - gunicorn runs it too
        except Exception:  # gunicorn itself reports a broken config file
            namespace = {}
        value = namespace.get("bind")
        if value:
            binds = [value] if isinstance(value, str) else list(value)
    if env_args is not None and env_args.bind:
        binds = list(env_args.bind)
    if args.bind:
        binds = list(args.bind)
    if not binds:
        port = os.environ.get("PORT")
        binds = [f"0.0.0.0:{port}"] if port else ["127.0.0.1:8000"]
    return binds


_RUNSERVER_ADDR = re.compile(r"^(?:(?P<addr>\[[^\]]+\]|[^:]+):)?(?P<port>\d+)$")


def _runserver_binds(argv: list[str]) -> list[str]:
    if len(argv) < 2 or argv[1] != "runserver":
        return []
    positional = [a for a in argv[2:] if not a.startswith("-")]
    ipv6 = any(a in ("-6", "--ipv6") for a in argv[2:])
    default = "::1" if ipv6 else "127.0.0.1"
    if not positional:
        return [default]
    match = _RUNSERVER_ADDR.match(positional[0])
    if not match:
        return [positional[0]]  # a host name without port: runserver refuses it itself
    return [match.group("addr") or default]


def _asgi_server_binds(argv: list[str]) -> list[str]:
    if not argv:
        return []
    prog = os.path.basename(argv[0])
    names = {"uvicorn": ("--host",), "daphne": ("-b", "--bind"), "hypercorn": ("-b", "--bind")}
    options = next((opts for name, opts in names.items() if name in prog), None)
    if options is None:
        return []
    found = []
    for i, arg in enumerate(argv[1:], start=1):
        for opt in options:
            if arg == opt and i + 1 < len(argv):
                found.append(argv[i + 1])
            elif arg.startswith(opt + "="):
                found.append(arg.split("=", 1)[1])
    return found


def detected_binds(argv: list[str] | None = None) -> list[str]:
    """Every TCP host this server process can be seen to listen on."""
    argv = list(sys.argv if argv is None else argv)
    binds = _listening_sockets() + _gunicorn_binds(argv) + _runserver_binds(argv) + _asgi_server_binds(argv)
    hosts = []
    for bind in binds:
        host = _host_of(bind)
        if host is not None:
            hosts.append(host)
    return hosts


def assert_safe_bind(entry: str, argv: list[str] | None = None) -> None:
    """Refuse to start in AUTH_MODE=none on a bind beyond loopback; log what is served either way."""
    if settings.AUTH_MODE != "none":
        return
    if settings.AUTH_MODE_NONE_ALLOW_REMOTE:
        log.warning(
            "AUTH_MODE=none with AUTH_MODE_NONE_ALLOW_REMOTE=true (%s): every client that reaches this server acts "
            "as the operator; only a proxy that authenticates every request may stand in front of it",
            entry,
        )
        return
    hosts = detected_binds(argv)
    remote = sorted({h for h in hosts if not is_loopback_host(h)})
    if remote:
        log.critical(
            "AUTH_MODE=none refuses to serve on %s (beyond loopback): bind to 127.0.0.1 or set AUTH_MODE=local",
            ", ".join(remote),
        )
        raise ImproperlyConfigured(
            f"AUTH_MODE=none refuses to start on {', '.join(remote)}: that address is beyond loopback and "
            "the portal has no authentication in this mode. Bind to 127.0.0.1, or set AUTH_MODE=local."
        )
    log.warning(
        "AUTH_MODE=none (%s): no authentication; serving loopback only%s, requests from other addresses get 403",
        entry,
        f" ({', '.join(sorted(set(hosts)))})" if hosts else "",
    )
