"""FilterSets of the schedules app: one per model, for the API."""

import django_filters
from django.utils.translation import gettext_lazy as _

from .choices import CatchUp, FireOutcome, OverlapPolicy, ScheduleKind
from .models import DatasetTrigger, Schedule, ScheduleFire, TriggerFire


class ScheduleFilterSet(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=ScheduleKind.choices, label=_("Kind"))
    overlap = django_filters.ChoiceFilter(choices=OverlapPolicy.choices, label=_("Overlap policy"))
    catchup = django_filters.ChoiceFilter(choices=CatchUp.choices, label=_("Catch-up policy"))

    class Meta:
        model = Schedule
        fields = ["pipeline", "enabled", "kind", "overlap", "catchup"]


class ScheduleFireFilterSet(django_filters.FilterSet):
    outcome = django_filters.MultipleChoiceFilter(choices=FireOutcome.choices, label=_("Outcome"))
    since = django_filters.IsoDateTimeFilter(field_name="slot", lookup_expr="gte", label=_("Slot since"))
    until = django_filters.IsoDateTimeFilter(field_name="slot", lookup_expr="lt", label=_("Slot before"))

    class Meta:
        model = ScheduleFire
        fields = ["schedule", "outcome", "since", "until"]


class DatasetTriggerFilterSet(django_filters.FilterSet):
    class Meta:
        model = DatasetTrigger
        fields = ["pipeline", "dataset", "enabled"]


class TriggerFireFilterSet(django_filters.FilterSet):
    outcome = django_filters.MultipleChoiceFilter(choices=FireOutcome.choices, label=_("Outcome"))

    class Meta:
        model = TriggerFire
        fields = ["trigger", "dataset_version", "outcome"]
