"""Build the example stage modules from source: `python -m wasmstages.examples.build {wat,assemblyscript,zig,c} OUT`.

The WAT example is compiled by wasmtime itself. The AssemblyScript example runs `npm ci` once into a cache
folder keyed by its lock file (`~/.cache/dataflare/wasm-assemblyscript/<hash>`, or WASM_EXAMPLES_CACHE),
under a file lock so parallel test runs share it, then `asc` (npm's assemblyscript, pinned in the lock). The
Zig example is built by PyPI's `ziglang` (pinned in requirements-dev.txt) for wasm32-freestanding, and so is the C
example, by the clang inside it (`zig cc`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import wasmtime

HERE = Path(__file__).resolve().parent


class ToolchainMissing(RuntimeError):
    """The toolchain an example needs is not installed (the tests skip with this reason)."""


def build_wat() -> bytes:
    return wasmtime.wat2wasm((HERE / "wat" / "tidy_text.wat").read_text())


def _cache_base(name: str) -> Path:
    root = os.environ.get("WASM_EXAMPLES_CACHE") or Path.home() / ".cache" / "dataflare"
    return Path(root) / name


def build_assemblyscript() -> bytes:
    source = HERE / "assemblyscript"
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise ToolchainMissing("Node.js and npm are not installed (scripts/services installs them with apt)")
    manifest = (source / "package.json").read_bytes() + (source / "package-lock.json").read_bytes()
    base = _cache_base("wasm-assemblyscript")
    target = base / hashlib.sha256(manifest).hexdigest()[:16]
    target.mkdir(parents=True, exist_ok=True)
    with open(f"{target}.lock", "w") as lockfile:
        fcntl.flock(lockfile, fcntl.LOCK_EX)
        if not (target / "node_modules" / "assemblyscript" / "package.json").exists():
            for name in ("package.json", "package-lock.json"):
                shutil.copy(source / name, target / name)
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=target, check=True, timeout=600
            )
        shutil.rmtree(target / "assembly", ignore_errors=True)
        shutil.copytree(source / "assembly", target / "assembly")
        out = target / "build" / "tidy_text.wasm"
        out.unlink(missing_ok=True)
        subprocess.run(["npm", "run", "-s", "build"], cwd=target, check=True, timeout=600)
        return out.read_bytes()


def build_zig() -> bytes:
    """Zig from PyPI's `ziglang` (requirements-dev.txt), freestanding wasm32: no WASI, nothing imported."""
    try:
        import ziglang  # noqa: F401
    except ImportError:
        raise ToolchainMissing("the Zig toolchain is not installed (pip install -r requirements-dev.txt)") from None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tidy_text.wasm"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ziglang",
                "build-exe",
                str(HERE / "zig" / "tidy_text.zig"),
                "-target",
                "wasm32-freestanding",
                "-fno-entry",
                "-rdynamic",
                "-fstrip",
                "-O",
                "ReleaseFast",
                f"-femit-bin={out}",
            ],
            cwd=tmp,
            check=True,
            timeout=600,
        )
        return out.read_bytes()


# The flags of the C example: freestanding wasm32 (no libc, no WASI), bulk memory so memcpy is memory.copy
# rather than a libc call, no entry point, the two ABI functions exported (the memory is by default), stripped.
C_FLAGS = [
    "--target=wasm32-freestanding",
    "-O2",
    "-nostdlib",
    "-mbulk-memory",
    "-Wl,--no-entry",
    "-Wl,--export=alloc",
    "-Wl,--export=process",
    "-Wl,--strip-all",
]


def build_c() -> bytes:
    """C built by the clang inside PyPI's `ziglang` (`zig cc`), freestanding wasm32: nothing imported."""
    try:
        import ziglang  # noqa: F401
    except ImportError:
        raise ToolchainMissing("the Zig toolchain is not installed (pip install -r requirements-dev.txt)") from None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tidy_text.wasm"
        subprocess.run(
            [sys.executable, "-m", "ziglang", "cc", *C_FLAGS, "-o", str(out), str(HERE / "c" / "tidy_text.c")],
            cwd=tmp,
            check=True,
            timeout=600,
        )
        return out.read_bytes()


BUILDERS = {"wat": build_wat, "assemblyscript": build_assemblyscript, "zig": build_zig, "c": build_c}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in BUILDERS:
        print(f"usage: {argv[0]} {{{','.join(BUILDERS)}}} OUT.wasm", file=sys.stderr)
        return 2
    Path(argv[2]).write_bytes(BUILDERS[argv[1]]())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
