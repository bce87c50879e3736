"""API base classes shared by every app: audited CRUD viewsets, `brief` serializers, strict list queries."""

from django import forms
from django.core.exceptions import FieldDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from django.utils.translation import gettext as _
from django_filters import NumberFilter
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework import filters, serializers, viewsets
from rest_framework.exceptions import ValidationError

from ..services import object_delete, object_save


class PortalModelSerializer(serializers.ModelSerializer):
    """Model serializer that validates with the model's own clean() and constraints."""

    def validate(self, attrs):
        attrs = super().validate(attrs)
        instance = self.instance or self.Meta.model()
        m2m = {}
        for name, value in attrs.items():
            field = self.Meta.model._meta.get_field(name) if name in self._model_field_names() else None
            if field is not None and field.many_to_many:
                m2m[name] = value
                continue
            setattr(instance, name, value)
        try:
            instance.full_clean(exclude=list(self._unvalidated_fields()))
        except DjangoValidationError as exc:
            raise ValidationError(
                exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
            )
        self._validated_instance = instance
        return attrs

    def _model_field_names(self):
        return {f.name for f in self.Meta.model._meta.get_fields()}

    def _unvalidated_fields(self):
        return [f.name for f in self.Meta.model._meta.get_fields() if f.many_to_many or f.one_to_many]


# ---- Strict list queries -------------------------------------------------------------------------
class StrictQueryParamsMixin:
    """List endpoints answer 400 naming an unknown or malformed query parameter.

    Without it a misspelt or unsupported filter (`qc-lots/?status=pending`) is silently ignored
    and the client gets every row. The accepted names come from what the view really uses: its
    filterset, search and ordering backends, its paginator, `brief`/`format`, and
    `extra_query_params` for views that read more.
    """

    common_query_params = ("format", "brief")
    extra_query_params: tuple[str, ...] = ()

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if request.method == "GET" and getattr(self, "action", None) == "list":
            query_params_check(self, request.query_params)

    def allowed_query_params(self) -> set[str]:
        allowed = set(self.common_query_params) | set(self.extra_query_params)
        paginator = getattr(self, "paginator", None)
        for name in ("limit_query_param", "offset_query_param", "page_query_param", "page_size_query_param"):
            if paginator is not None and getattr(paginator, name, None):
                allowed.add(getattr(paginator, name))
        for backend in getattr(self, "filter_backends", ()):
            if issubclass(backend, filters.SearchFilter):
                allowed.add(backend.search_param)
            elif issubclass(backend, filters.OrderingFilter):
                allowed.add(backend.ordering_param)
        for name, _filter in _filterset_filters(self):
            allowed.add(name)
        return allowed


def _filterset_filters(view):
    """(query parameter name, filter) for every filter of the view's filterset (range filters: both ends)."""
    if not any(issubclass(b, DjangoFilterBackend) for b in getattr(view, "filter_backends", ())):
        return
    filterset_class = DjangoFilterBackend().get_filterset_class(view, view.get_queryset())
    if filterset_class is None:
        return
    for name, flt in filterset_class.base_filters.items():
        widget = flt.field.widget
        if isinstance(widget, forms.MultiWidget):
            suffixes = getattr(widget, "suffixes", None) or [str(i) for i in range(len(widget.widgets))]
            for suffix in suffixes:
                yield (f"{name}_{suffix}" if suffix else name), flt
        else:
            yield name, flt


def _is_integer_filter(view, flt) -> bool:
    """A NumberFilter on an integer column (django-filter would accept 0.5 for it)."""
    if not isinstance(flt, NumberFilter) or flt.lookup_expr in ("isnull",):
        return False
    model = view.get_queryset().model
    field = None
    for part in (flt.field_name or "").split("__"):
        try:
            field = model._meta.get_field(part)
        except FieldDoesNotExist:
            return False
        if field.is_relation and field.related_model is not None:
            model = field.related_model
            field = model._meta.pk
    return isinstance(field, (models.IntegerField, models.AutoField)) and not isinstance(field, models.BooleanField)


def query_params_check(view, params) -> None:
    """Raise a 400 naming every unknown query parameter, and integers that are not whole numbers."""
    allowed = view.allowed_query_params()
    errors = {}
    for name in params:
        if name not in allowed:
            errors[name] = [_("Unknown query parameter. Accepted: %(names)s.") % {"names": ", ".join(sorted(allowed))}]
    for name, flt in _filterset_filters(view):
        if name in params and _is_integer_filter(view, flt):
            for value in params.getlist(name):
                try:
                    int(value)
                except ValueError:
                    errors[name] = [_("Enter a whole number.")]
    if errors:
        raise ValidationError(errors)


class PortalModelViewSet(StrictQueryParamsMixin, viewsets.ModelViewSet):
    """CRUD whose writes go through the audited core services (one audit entry per write)."""

    brief_serializer_class = None

    def get_serializer_class(self):
        if self.request is not None and self.request.query_params.get("brief") and self.brief_serializer_class:
            return self.brief_serializer_class
        return super().get_serializer_class()

    def _save(self, serializer):
        instance = serializer.instance or serializer.Meta.model()
        m2m = {}
        for name, value in serializer.validated_data.items():
            field = instance._meta.get_field(name)
            if field.many_to_many:
                m2m[name] = value
            else:
                setattr(instance, name, value)
        object_save(actor=self.request.user, instance=instance)
        for name, value in m2m.items():
            getattr(instance, name).set(value)
        serializer.instance = instance

    def perform_create(self, serializer):
        self._save(serializer)

    def perform_update(self, serializer):
        self._save(serializer)

    def perform_destroy(self, instance):
        object_delete(actor=self.request.user, instance=instance)


class PortalReadOnlyViewSet(StrictQueryParamsMixin, viewsets.ReadOnlyModelViewSet):
    brief_serializer_class = None

    def get_serializer_class(self):
        if self.request is not None and self.request.query_params.get("brief") and self.brief_serializer_class:
            return self.brief_serializer_class
        return super().get_serializer_class()
