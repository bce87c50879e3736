"""Opt-in: modelclient against Seldon MLServer, an independent KServe V2 implementation.

Skipped unless MLServer is installed in its own virtualenv (MLSERVER_VENV, default
/tmp/mlserver-venv); see docs/grpc.md for the two-line setup.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelclient import ModelClient, ModelEndpoint, PermanentModelError
from modelclient.channels import ChannelPool
from modelserver.text import count_tokens

RUNTIME = Path(__file__).parent / "mlserver_runtime"
REPO = Path(__file__).resolve().parents[2]
MLSERVER = Path(os.environ.get("MLSERVER_VENV", "/tmp/mlserver-venv")) / "bin" / "mlserver"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not MLSERVER.exists(), reason=f"MLServer not installed at {MLSERVER}"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory) -> Iterator[str]:
    """Start MLServer on free loopback ports with the text-echo runtime; yield the gRPC address."""
    folder = tmp_path_factory.mktemp("mlserver")
    for name in ("text_runtime.py", "model-settings.json"):
        shutil.copy(RUNTIME / name, folder / name)
    grpc_port = _free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": _free_port(),
        "grpc_port": grpc_port,
        "metrics_port": _free_port(),
        # With uvloop 0.23 the default parallel_workers=1 crashes; 0 serves in-process.
        "parallel_workers": 0,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{folder}"}
    log = (folder / "mlserver.log").open("w")
    proc = subprocess.Popen(
        [str(MLSERVER), "start", str(folder)],
        cwd=folder,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    address = f"127.0.0.1:{grpc_port}"
    client = ModelClient(channel_pool=ChannelPool())
    config = ModelEndpoint(address, "text-echo", deadline_s=2)
    try:
        deadline = time.monotonic() + 90
        while not client.check_health(config).model_ready:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"MLServer did not become ready:\n{(folder / 'mlserver.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield address
    finally:
        client.channels.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.parametrize("raw", [False, True])
def test_infer_texts_against_mlserver(mlserver: str, raw: bool) -> None:
    client = ModelClient(channel_pool=ChannelPool())
    texts = ["hello world", "数据 pipeline!", "third record."]
    result = client.infer_texts(ModelEndpoint(mlserver, "text-echo", model_version="1", raw_contents=raw), texts)
    assert [o["token_count"] for o in result.outputs] == [count_tokens(t) for t in texts]
    assert [o["echo"] for o in result.outputs] == [t.upper() for t in texts]
    assert result.usage_reported
    assert result.prompt_tokens == sum(count_tokens(t) for t in texts)
    assert (result.model_name, result.model_version) == ("text-echo", "1")


def test_health_and_errors_against_mlserver(mlserver: str) -> None:
    client = ModelClient(channel_pool=ChannelPool())
    report = client.check_health(ModelEndpoint(mlserver, "text-echo"))
    assert (report.live, report.ready, report.model_ready) == (True, True, True)
    assert report.server["name"] == "mlserver"
    with pytest.raises(PermanentModelError) as exc:
        client.infer_texts(ModelEndpoint(mlserver, "missing-model"), ["x"])
    assert exc.value.code == "NOT_FOUND"


def test_bisection_isolates_poison_records_on_mlserver(mlserver: str) -> None:
    client = ModelClient(channel_pool=ChannelPool())
    texts = [f"record {i}" + (" BAD" if i in (2, 11) else "") for i in range(16)]
    result = client.infer_texts_isolating(ModelEndpoint(mlserver, "text-echo"), texts, {"poison_marker": "BAD"})
    assert set(result.quarantined) == {2, 11}
    assert result.succeeded == 14
