"""Writes of the wasmstages app: uploading a module version (validated, immutable, audited)."""

from __future__ import annotations

import hashlib

import wasmtime
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils.translation import gettext as _

from dataflare_portal.core.models import AuditAction
from dataflare_portal.core.services import audit_record

from . import runtime
from .abi import ALL_CAPABILITIES, AbiError, abi_check
from .models import WasmModule

MAX_MODULE_BYTES = 16 * 1024 * 1024


def wasm_module_validate(*, name: str, content: bytes):
    """Check bytes before storing them (size, compiles, ABI, not a repeat of the latest version); returns
    (sha256, AbiReport) or raises ValidationError on `content`."""
    if not content:
        raise ValidationError({"content": [_("The file is empty.")]}, code="required")
    if len(content) > MAX_MODULE_BYTES:
        raise ValidationError(
            {
                "content": [
                    _("The module is %(size)d bytes; the limit is %(limit)d bytes.")
                    % {"size": len(content), "limit": MAX_MODULE_BYTES}
                ]
            },
            code="too_large",
        )
    try:
        module = runtime.compile_module(content)
    except wasmtime.WasmtimeError as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ValidationError(
            {"content": [_("This is not a WebAssembly module wasmtime can compile: %(error)s") % {"error": first}]},
            code="invalid_module",
        ) from None
    try:
        # At upload any capability's imports are accepted; a stage must grant them (checked at run start).
        report = abi_check(module, granted=ALL_CAPABILITIES)
        if report.imports:
            runtime.wasi_linker().instantiate_pre(module)  # the imports' signatures match WASI's
    except AbiError as exc:
        raise ValidationError({"content": [str(exc)]}, code="abi") from None
    except wasmtime.WasmtimeError as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ValidationError(
            {"content": [_("The module's imports do not match WASI's functions: %(error)s") % {"error": first}]},
            code="abi",
        ) from None
    digest = hashlib.sha256(content).hexdigest()
    latest = WasmModule.objects.latest_of(name)
    if latest is not None and latest.sha256 == digest:
        raise ValidationError(
            {"content": [_("These bytes are already %(label)s; nothing to upload.") % {"label": latest.label}]},
            code="duplicate",
        )
    return digest, report


def wasm_module_upload(*, name: str, content: bytes, actor, description: str = "") -> WasmModule:
    """Store `content` as the next version of module `name` after checking it compiles and follows the ABI."""
    content = bytes(content)
    digest, report = wasm_module_validate(name=name, content=content)
    user = actor if getattr(actor, "is_authenticated", False) else None
    for _attempt in range(3):
        version = (WasmModule.objects.filter(name=name).aggregate(v=Max("version"))["v"] or 0) + 1
        row = WasmModule(
            name=name,
            version=version,
            sha256=digest,
            size=len(content),
            content=content,
            exports=list(report.exports),
            imports=list(report.imports),
            description=description,
            uploaded_by=user,
        )
        row.full_clean(validate_constraints=False)
        try:
            with transaction.atomic():
                row.save()
                audit_record(
                    actor=actor,
                    action=AuditAction.CREATE,
                    instance=row,
                    after={"name": name, "version": version, "sha256": digest, "size": len(content)},
                    message=_("Uploaded WebAssembly module %(label)s.") % {"label": row.label},
                )
        except IntegrityError:
            continue  # two uploads of the same name raced for this version number: take the next
        return row
    raise ValidationError({"name": [_("Another upload of this module is in progress; try again.")]}, code="busy")


def module_resolve(name: str, version) -> WasmModule:
    """The version a stage means: a number, or "latest" (the highest version now); LookupError if none."""
    qs = WasmModule.objects.defer("content")
    if version in (None, "", "latest"):
        row = qs.filter(name=name).order_by("-version").first()
    else:
        row = qs.filter(name=name, version=int(version)).first()
    if row is None:
        raise LookupError(name)
    return row


def module_bytes(sha256: str) -> bytes:
    """The stored bytes with this digest (what a worker compiles on a cache miss)."""
    content = WasmModule.objects.filter(sha256=sha256).values_list("content", flat=True).first()
    if content is None:
        raise runtime.WasmStageError(_("No stored module has sha256 %(sha)s.") % {"sha": sha256})
    return bytes(content)
