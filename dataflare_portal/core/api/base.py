"""API base classes shared by every app: audited CRUD viewsets and `brief` serializers."""

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers, viewsets
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


class PortalModelViewSet(viewsets.ModelViewSet):
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


class PortalReadOnlyViewSet(viewsets.ReadOnlyModelViewSet):
    brief_serializer_class = None

    def get_serializer_class(self):
        if self.request is not None and self.request.query_params.get("brief") and self.brief_serializer_class:
            return self.brief_serializer_class
        return super().get_serializer_class()
