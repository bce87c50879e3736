"""A real OpenID Connect provider for the tests: scripts/oidc-test-provider (panva's oidc-provider) under Node.

`npm ci` runs once into a cache folder keyed by the lock file (`~/.cache/dataflare/oidc-test-provider/<hash>`,
or `OIDC_PROVIDER_CACHE`), under a file lock so parallel test runs share it. Each `Provider` is one node
process on a free loopback port; `stop()` ends it. The tests skip (with the reason) only when Node.js
cannot be found or is too old — `scripts/services` installs it — or when SKIP_OIDC_PROVIDER=1.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import queue
import secrets
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests

ROOT = Path(__file__).resolve().parents[3]
SOURCE = ROOT / "scripts" / "oidc-test-provider"
CLI_REDIRECT = "http://127.0.0.1:9/cli-callback"
API_AUDIENCE = "urn:dataflare:api"
OTHER_AUDIENCE = "urn:other:api"
CLIENT_SECRET = "portal-test-secret"
MIN_NODE = (20, 19)

USERS = {
    "ada-admin": {"password": "pw-ada", "name": "Ada Admin", "groups": ["portal-admins", "staff"]},
    "oscar-ops": {"password": "pw-oscar", "name": "Oscar Ops", "groups": ["portal-operators"]},
    "vera-view": {"password": "pw-vera", "name": "Vera View", "groups": ["portal-viewers"]},
    "nina-norole": {"password": "pw-nina", "name": "Nina Norole", "groups": ["staff", "sales"]},
}


def node_or_skip() -> str:
    """The node binary, or a skip naming why there is none usable."""
    if os.environ.get("SKIP_OIDC_PROVIDER") == "1":
        pytest.skip("SKIP_OIDC_PROVIDER=1: the OpenID provider tests are off")
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed (scripts/services installs them with apt)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    numbers = tuple(int(x) for x in version.lstrip("v").split(".")[:2])
    if numbers < MIN_NODE:
        pytest.skip(f"Node.js {version} is too old for oidc-provider (needs {'.'.join(map(str, MIN_NODE))}+)")
    return node


def provider_dir() -> Path:
    """A folder with the provider's node_modules (npm ci once per lock file) and the current server.mjs."""
    lock = (SOURCE / "package-lock.json").read_bytes()
    digest = hashlib.sha256(lock + (SOURCE / "package.json").read_bytes()).hexdigest()[:16]
    base = Path(os.environ.get("OIDC_PROVIDER_CACHE") or Path.home() / ".cache" / "dataflare" / "oidc-test-provider")
    target = base / digest
    target.mkdir(parents=True, exist_ok=True)
    with open(base / f"{digest}.lock", "w") as lockfile:
        fcntl.flock(lockfile, fcntl.LOCK_EX)
        if not (target / "node_modules" / "oidc-provider" / "package.json").exists():
            for name in ("package.json", "package-lock.json"):
                shutil.copy(SOURCE / name, target / name)
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=target,
                check=True,
                timeout=600,
            )
        tmp = target / f"server.{os.getpid()}.mjs"
        shutil.copy(SOURCE / "server.mjs", tmp)
        os.replace(tmp, target / "server.mjs")
    return target


class Provider:
    """One running provider: `issuer`, `users_file` (rewrite with `set_groups`), `stop()`."""

    def __init__(self, workdir: Path, *, redirect_uris=(), logout_uris=(), short_ttl: int = 2):
        node = node_or_skip()
        folder = provider_dir()
        self.users_file = workdir / f"users-{secrets.token_hex(4)}.json"
        self.users = json.loads(json.dumps(USERS))
        self._write_users()
        env = {
            **os.environ,
            "PORT": "0",
            "USERS_FILE": str(self.users_file),
            "REDIRECT_URIS": ",".join(redirect_uris),
            "LOGOUT_URIS": ",".join(logout_uris),
            "CLIENT_SECRET": CLIENT_SECRET,
            "SHORT_TTL": str(short_ttl),
            "NODE_ENV": "test",
        }
        self.process = subprocess.Popen(
            [node, str(folder / "server.mjs")],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.process.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=120)
        except queue.Empty:
            self.stop()
            raise AssertionError("the OpenID provider did not start within 120 s")
        if not line.startswith("ready "):
            self.stop()
            raise AssertionError(f"the OpenID provider said {line!r}: {self.process.stderr.read()}")
        self.issuer = line.split()[1].strip()

    def _write_users(self) -> None:
        tmp = self.users_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.users))
        os.replace(tmp, self.users_file)

    def set_groups(self, username: str, groups: list[str]) -> None:
        """What an administrator does at the provider: change someone's groups."""
        self.users[username]["groups"] = groups
        self._write_users()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    # ---- Tokens as a command-line client gets them: code flow with PKCE and a resource indicator ----
    def access_token(self, username: str, *, resource: str = API_AUDIENCE, client: str = "dataflare-cli") -> str:
        session = requests.Session()
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        params = {
            "client_id": client,
            "response_type": "code",
            "scope": "openid profile groups",
            "redirect_uri": CLI_REDIRECT,
            "state": secrets.token_urlsafe(8),
            "nonce": secrets.token_urlsafe(8),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": resource,
        }
        response = session.get(self.issuer + "/auth", params=params, allow_redirects=False, timeout=30)
        for _ in range(10):
            if response.status_code in (302, 303):
                location = urljoin(response.url, response.headers["Location"])
                if location.startswith(CLI_REDIRECT):
                    query = parse_qs(urlsplit(location).query)
                    assert "code" in query, query
                    break
                response = session.get(location, allow_redirects=False, timeout=30)
            elif response.status_code == 200 and "/interaction/" in response.url:
                response = session.post(
                    response.url.rstrip("/") + "/login",
                    data={"login": username, "password": self.users[username]["password"]},
                    allow_redirects=False,
                    timeout=30,
                )
            else:
                raise AssertionError(
                    f"unexpected answer {response.status_code} at {response.url}: {response.text[:300]}"
                )
        else:
            raise AssertionError("the provider never redirected back with a code")
        token = requests.post(
            self.issuer + "/token",
            data={
                "grant_type": "authorization_code",
                "code": query["code"][0],
                "redirect_uri": CLI_REDIRECT,
                "client_id": client,
                "code_verifier": verifier,
                "resource": resource,
            },
            timeout=30,
        )
        assert token.status_code == 200, token.text
        return token.json()["access_token"]
