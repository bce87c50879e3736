"""Named capabilities: a stage grants a module the WASI clock, random source or log; nothing else, and nothing
it does not grant (refused at upload, at run start and per batch, naming the import and the capability)."""

from __future__ import annotations

import logging

import pytest
from django.core.exceptions import ValidationError

from pipelines.stagekinds import StageConfigError, registry
from tasks.choices import RunStatus
from tasks.models import StageRun
from tasks.services import RunRefused, run_start
from tasks.tests.factories import make_pipeline, make_records
from wasmstages import runtime
from wasmstages.abi import AbiError, abi_check
from wasmstages.services import wasm_module_upload

from . import modules

ALL = ["clock", "log", "random"]


def _module(source: str):
    return runtime.compile_module(modules.binary(source))


def test_granted_capabilities_work_and_the_log_is_captured():
    out = runtime.run_batch(_module(modules.WASI_ALL), [{"id": 1}, {"id": 2}], label="caps@1", capabilities=ALL)
    assert out.records == [{"clock": 1, "random": 1, "log": 1}] * 2
    assert out.log == "hello from the module\n"


def test_a_module_gets_only_the_capabilities_it_imports_and_needs_no_others():
    out = runtime.run_batch(_module(modules.WASI_CLOCK), [{"id": 1}], label="caps@1", capabilities=["clock"])
    assert out.records == [{"clock": 1, "random": 0, "log": 0}] and out.log == ""


@pytest.mark.parametrize(
    ("granted", "missing", "name"),
    [
        (["clock", "random"], "log", "wasi_snapshot_preview1.fd_write"),
        (["log", "random"], "clock", "wasi_snapshot_preview1.clock_time_get"),
        (["clock", "log"], "random", "wasi_snapshot_preview1.random_get"),
        ([], "clock", "wasi_snapshot_preview1.clock_time_get"),
    ],
)
def test_a_batch_is_refused_an_import_its_stage_does_not_grant(granted, missing, name):
    with pytest.raises(runtime.WasmStageError) as err:
        runtime.run_batch(_module(modules.WASI_ALL), [{"id": 1}], label="caps@1", capabilities=granted)
    assert "caps@1" in str(err.value) and name in str(err.value) and f"`{missing}`" in str(err.value)


def test_the_log_is_size_limited():
    out = runtime.run_batch(_module(modules.WASI_LOUD), [{"id": 1}], label="caps@1", capabilities=["log"])
    assert out.log.startswith("hello from the module\n")
    assert len(out.log.encode()) < runtime.LOG_BYTES + 100
    assert f"[{5000 * 22 - runtime.LOG_BYTES} more bytes not kept]" in out.log


def test_a_failed_batch_carries_the_module_log_after_its_first_line():
    records = [{"id": "a"}, {"id": "b!"}]
    with pytest.raises(runtime.WasmStageError) as err:
        runtime.run_batch(_module(modules.WASI_ALL), records, label="caps@1", capabilities=ALL)
    first, *rest = str(err.value).split("\n")
    assert "record 1 (id b!)" in first
    assert "hello from the module" in "\n".join(rest) and "about to fail" in "\n".join(rest)


def test_the_env_capability_hands_over_the_stage_variables_and_nothing_of_the_worker(monkeypatch):
    monkeypatch.setenv("DF_WORKER_ONLY", "must-not-leak")
    module = _module(modules.WASI_ENV)
    env = {"LANG": "C.UTF-8", "TZ": "Asia/Shanghai", "ZH": "中文"}
    out = runtime.run_batch(module, [{"id": 1}], label="env@1", capabilities=["env"], env=env)
    assert out.records == [{"env": "LANG=C.UTF-8;TZ=Asia/Shanghai;ZH=中文;"}]
    assert runtime.run_batch(module, [{"id": 1}], label="env@1", capabilities=["env"]).records == [{"env": ""}]
    with pytest.raises(runtime.WasmStageError) as err:
        runtime.run_batch(module, [{"id": 1}], label="env@1", env=env)
    assert "environ_sizes_get" in str(err.value) and "`env`" in str(err.value)


def test_no_capability_grants_the_file_system():
    with pytest.raises(AbiError) as err:
        abi_check(_module(modules.FORBIDDEN_IMPORT), granted=frozenset(ALL))
    assert "wasi_snapshot_preview1.path_open" in str(err.value) and "clock, env, log, random" in str(err.value)


# ---- upload, stage config, run start -------------------------------------------------------------
@pytest.mark.django_db
def test_upload_accepts_capability_imports_and_refuses_the_rest():
    row = wasm_module_upload(name="caps", content=modules.binary(modules.WASI_ALL), actor=None)
    assert set(row.imports) == {
        "wasi_snapshot_preview1.clock_time_get",
        "wasi_snapshot_preview1.random_get",
        "wasi_snapshot_preview1.fd_write",
    }
    with pytest.raises(ValidationError) as err:
        wasm_module_upload(name="fs", content=modules.binary(modules.FORBIDDEN_IMPORT), actor=None)
    assert "path_open" in " ".join(err.value.message_dict["content"])
    with pytest.raises(ValidationError) as err:
        wasm_module_upload(name="sig", content=modules.binary(modules.WASI_BAD_SIGNATURE), actor=None)
    assert "clock_time_get" in " ".join(err.value.message_dict["content"])


@pytest.mark.django_db
def test_the_stage_config_must_grant_what_the_module_imports():
    kind = registry.get("wasm")
    wasm_module_upload(name="caps", content=modules.binary(modules.WASI_ALL), actor=None)
    kind.validate_config({"module": "caps", "capabilities": ALL})
    with pytest.raises(StageConfigError) as err:
        kind.validate_config({"module": "caps", "capabilities": ["clock", "random"]})
    assert err.value.path == "$.capabilities"
    assert "caps@1" in str(err.value) and "fd_write" in str(err.value) and "`log`" in str(err.value)
    with pytest.raises(StageConfigError) as err:
        kind.validate_config({"module": "caps", "capabilities": ["clock", "network"]})
    assert err.value.path == "$.capabilities[1]"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("config", "path", "text"),
    [
        ({"env": {"LANG": "C"}}, "$.env", "env is not granted"),
        ({"capabilities": ["env"], "env": {"API_TOKEN": "x"}}, "$.env.API_TOKEN", "secret"),
        ({"capabilities": ["env"], "env": {"DB_PASSWORD": "x"}}, "$.env.DB_PASSWORD", "secret"),
        ({"capabilities": ["env"], "env": {"1BAD": "x"}}, "$.env", ""),
        ({"capabilities": ["env"], "env": {"LANG": 3}}, "$.env.LANG", ""),
    ],
)
def test_the_stage_env_is_checked(config, path, text):
    kind = registry.get("wasm")
    wasm_module_upload(name="env", content=modules.binary(modules.WASI_ENV), actor=None)
    kind.validate_config({"module": "env", "capabilities": ["env"], "env": {"LANG": "C.UTF-8", "TZ": "UTC"}})
    with pytest.raises(StageConfigError) as err:
        kind.validate_config({"module": "env", **config})
    assert err.value.path == path and text in str(err.value)


@pytest.mark.django_db
def test_a_run_records_its_grant_and_logs_what_the_module_wrote(doorbell, file_root, caplog):
    wasm_module_upload(name="caps", content=modules.binary(modules.WASI_ALL), actor=None)
    stages = [("wasm", "wasm", {"module": "caps", "capabilities": ALL}), ("publish", "publish", {})]
    pipeline = make_pipeline(file_root, records=make_records(30), stages=stages, batch_size=10, name="caps")
    with caplog.at_level(logging.INFO, logger="wasmstages.module"):
        run = run_start(pipeline=pipeline, actor=None)
        doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    snapshot = {s["key"]: s for s in run.pipeline_snapshot["stages"]}
    assert snapshot["wasm"]["config"]["capabilities"] == ALL
    assert StageRun.objects.get(run=run, key="wasm").config["capabilities"] == ALL
    logged = [r.getMessage() for r in caplog.records if r.name == "wasmstages.module"]
    assert len(logged) == 3 and all("caps@1" in m and "hello from the module" in m for m in logged)
    assert str(run.pk) in logged[0]


@pytest.mark.django_db
def test_a_run_is_refused_at_start_when_its_stage_lacks_a_capability(doorbell, file_root):
    wasm_module_upload(name="caps", content=modules.binary(modules.WASI_ALL), actor=None)
    stages = [("wasm", "wasm", {"module": "caps", "capabilities": ["log"]}), ("publish", "publish", {})]
    pipeline = make_pipeline(file_root, records=make_records(5), stages=stages, name="nocaps")
    with pytest.raises(RunRefused) as err:
        run_start(pipeline=pipeline, actor=None)
    text = str(getattr(err.value, "detail", err.value))
    assert "clock_time_get" in text and "`clock`" in text


@pytest.mark.django_db
def test_a_run_hands_its_env_to_every_batch(doorbell, file_root):
    from tasks.tests.factories import published

    wasm_module_upload(name="env", content=modules.binary(modules.WASI_ENV), actor=None)
    config = {"module": "env", "capabilities": ["env"], "env": {"REGION": "cn-north"}}
    stages = [("wasm", "wasm", config), ("publish", "publish", {})]
    pipeline = make_pipeline(file_root, records=make_records(20), stages=stages, batch_size=10, name="env")
    run = run_start(pipeline=pipeline, actor=None)
    doorbell.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert published(run) == [{"env": "REGION=cn-north;"}] * 20
    assert StageRun.objects.get(run=run, key="wasm").config["env"] == {"REGION": "cn-north"}
