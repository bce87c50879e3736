"""Core services: the built-in operator, roles, and the audit log writer."""

from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import models

from .models import AuditAction, AuditLogEntry
from .requestctx import request_id_var

ROLE_VIEWER = "viewer"
ROLE_OPERATOR = "operator"
ROLE_ADMIN = "admin"
ROLES = (ROLE_VIEWER, ROLE_OPERATOR, ROLE_ADMIN)
# Fields never copied into the audit log, whatever the model.
SECRET_FIELD_MARKERS = ("secret", "password", "token", "ciphertext", "api_key")

_builtin_operator_pk: int | None = None


def builtin_operator():
    """The user every request acts as under AUTH_MODE=none (created on first use)."""
    global _builtin_operator_pk
    User = get_user_model()
    if _builtin_operator_pk is not None:
        user = User.objects.filter(pk=_builtin_operator_pk).first()
        if user is not None:
            return user
    user, _ = User.objects.get_or_create(
        username=settings.BUILTIN_OPERATOR_USERNAME,
        defaults={"is_staff": True, "is_superuser": True, "first_name": "Operator"},
    )
    _builtin_operator_pk = user.pk
    return user


def roles_ensure(*, sync: bool = True) -> dict[str, Group]:
    """Create the viewer, operator and admin groups if missing (and give new ones their permissions)."""
    groups, created = {}, False
    for name in ROLES:
        groups[name], new = Group.objects.get_or_create(name=name)
        created = created or new
    if created and sync:
        from .auth import roles_sync

        roles_sync()
    return groups


def user_role(user) -> str | None:
    """The highest role a user holds ('admin' for superusers), or None."""
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser:
        return ROLE_ADMIN
    names = set(user.groups.values_list("name", flat=True))
    for role in (ROLE_ADMIN, ROLE_OPERATOR, ROLE_VIEWER):
        if role in names:
            return role
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def audit_snapshot(instance: models.Model) -> dict[str, Any]:
    """The concrete fields of a row, secrets left out, as JSON-safe values."""
    data = {}
    for field in instance._meta.concrete_fields:
        name = field.attname
        if any(marker in name.lower() for marker in SECRET_FIELD_MARKERS):
            continue
        data[name] = _jsonable(getattr(instance, name))
    return data


def audit_record(
    *,
    actor,
    action: str | AuditAction,
    instance: models.Model | None = None,
    object_type: str = "",
    object_id: str = "",
    object_repr: str = "",
    before: dict | None = None,
    after: dict | None = None,
    message: str = "",
) -> AuditLogEntry:
    """Write one audit entry; call it inside the transaction of the change it records."""
    if instance is not None:
        object_type = object_type or instance._meta.label_lower
        object_id = object_id or str(instance.pk)
        object_repr = object_repr or str(instance)[:200]
    is_user = actor is not None and getattr(actor, "is_authenticated", False)
    return AuditLogEntry.objects.create(
        actor=actor if is_user else None,
        actor_name=(actor.get_username() if is_user else str(actor or "system"))[:150],
        action=str(action),
        object_type=object_type,
        object_id=str(object_id),
        object_repr=object_repr[:200],
        before=_jsonable(before) if before is not None else None,
        after=_jsonable(after) if after is not None else None,
        message=message,
        request_id=request_id_var.get(),
    )


# ---- Generic audited CRUD, used by the admin and the API for plain configuration rows ------
def object_save(*, actor, instance: models.Model, changed_fields: list[str] | None = None) -> models.Model:
    """Validate and save a row (create or update), with one audit entry holding before and after."""
    from django.db import transaction

    creating = instance._state.adding
    before = None
    if not creating:
        old = type(instance)._default_manager.filter(pk=instance.pk).first()
        before = audit_snapshot(old) if old is not None else None
    instance.full_clean()
    with transaction.atomic():
        instance.save()
        audit_record(
            actor=actor,
            action=AuditAction.CREATE if creating else AuditAction.UPDATE,
            instance=instance,
            before=before,
            after=audit_snapshot(instance),
        )
    return instance


def object_delete(*, actor, instance: models.Model) -> None:
    """Delete a row with one audit entry holding what it was."""
    from django.db import transaction

    with transaction.atomic():
        audit_record(actor=actor, action=AuditAction.DELETE, instance=instance, before=audit_snapshot(instance))
        instance.delete()
