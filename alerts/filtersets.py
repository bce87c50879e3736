"""FilterSets of the alerts app: one per model, shared by the API and the inbox page."""

import django_filters
from django.utils.translation import gettext_lazy as _

from catalog.models import Project

from .choices import AlertStatus, ChannelKind, NotificationStatus, RuleKind, Severity
from .models import Alert, AlertRule, Notification, NotificationChannel, RunWebhook


class AlertFilterSet(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=AlertStatus.choices, label=_("Status"))
    open = django_filters.BooleanFilter(method="filter_open", label=_("Open only"))
    severity = django_filters.MultipleChoiceFilter(choices=Severity.choices, label=_("Severity"))
    project = django_filters.ModelChoiceFilter(queryset=Project.objects.all(), label=_("Project"))
    kind = django_filters.MultipleChoiceFilter(field_name="rule__kind", choices=RuleKind.choices, label=_("Rule kind"))
    since = django_filters.IsoDateTimeFilter(field_name="fired_at", lookup_expr="gte", label=_("Fired since"))
    until = django_filters.IsoDateTimeFilter(field_name="fired_at", lookup_expr="lt", label=_("Fired before"))

    class Meta:
        model = Alert
        fields = ["status", "open", "severity", "project", "pipeline", "rule", "kind", "run_id", "model_version"]

    def filter_open(self, queryset, name, value):
        if value is None:
            return queryset
        return queryset.filter(status__in=AlertStatus.open()) if value else queryset.filter(status=AlertStatus.RESOLVED)


class AlertRuleFilterSet(django_filters.FilterSet):
    kind = django_filters.MultipleChoiceFilter(choices=RuleKind.choices)

    class Meta:
        model = AlertRule
        fields = ["kind", "enabled", "project", "pipeline"]


class NotificationChannelFilterSet(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=ChannelKind.choices)

    class Meta:
        model = NotificationChannel
        fields = ["kind", "enabled"]


class RunWebhookFilterSet(django_filters.FilterSet):
    class Meta:
        model = RunWebhook
        fields = ["project", "enabled"]


class NotificationFilterSet(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=NotificationStatus.choices)

    class Meta:
        model = Notification
        fields = ["status", "channel", "alert", "webhook", "run_event", "event"]
