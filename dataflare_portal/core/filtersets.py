import django_filters

from .models import AuditAction, AuditLogEntry


class AuditLogEntryFilterSet(django_filters.FilterSet):
    since = django_filters.IsoDateTimeFilter(field_name="timestamp", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="timestamp", lookup_expr="lt")
    action = django_filters.MultipleChoiceFilter(choices=AuditAction.choices)

    class Meta:
        model = AuditLogEntry
        fields = ["action", "object_type", "object_id", "actor", "request_id"]
