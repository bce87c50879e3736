"""QC admin: the review queue (sampled records one by one, a/r/n shortcuts), QC lots (decide, override, publish)."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from dataflare_portal.core.admin_base import BigTableAdmin, PortalModelAdmin, badge_column
from dataflare_portal.core.auth import has_role
from dataflare_portal.core.services import ROLE_OPERATOR, ROLE_VIEWER

from .choices import LotDecision, ReviewDecision
from .models import QCLot, ReviewItem
from .qc import QCError, can_override, qc_lot_decide, qc_lot_override, review_item_decide, review_next_item


class ReviewDecisionForm(forms.Form):
    """One reviewer decision on one sampled record."""

    decision = forms.ChoiceField(
        choices=[(ReviewDecision.ACCEPTED, _("Accept")), (ReviewDecision.REJECTED, _("Reject"))],
        label=_("decision"),
    )
    reason = forms.CharField(
        label=_("reason"), required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2})
    )


class OverrideForm(forms.Form):
    reason = forms.CharField(label=_("override reason"), max_length=2000, widget=forms.Textarea(attrs={"rows": 3}))


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(exc.messages)
    return str(exc)


@admin.register(ReviewItem)
class ReviewItemAdmin(BigTableAdmin):
    """The review queue: the list, and a one-by-one review page with keyboard shortcuts."""

    list_display = (
        "record_key",
        badge_column("decision", _("decision")),
        "lot_link",
        "run_link",
        "sequence",
        "reviewer",
        "decided_at",
    )
    list_display_links = ("record_key",)
    list_filter = ("decision", ("lot__stage_run__run__pipeline", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("lot", "reviewer", "lot__stage_run__run__pipeline")
    # Filters reached from a lot's or a run's page (?lot__id__exact=, ?lot__stage_run__run__id__exact=).
    scoped_lookups = ("lot__id__exact", "lot__stage_run__run__id__exact")

    def lookup_allowed(self, lookup, value, request=None):
        return lookup in self.scoped_lookups or super().lookup_allowed(lookup, value, request)

    @admin.display(description=_("lot"), ordering="lot")
    def lot_link(self, obj):
        url = reverse("admin:tasks_reviewitem_changelist") + f"?lot__id__exact={obj.lot_id}"
        return format_html('<a href="{}">{}</a>', url, obj.lot_id)

    @admin.display(description=_("run"))
    def run_link(self, obj):
        run = obj.lot.stage_run.run
        url = reverse("admin:tasks_reviewitem_changelist") + f"?lot__stage_run__run__id__exact={run.pk}"
        return format_html('<a href="{}">{}</a>', url, run)

    raw_id_fields = ("lot", "reviewer")
    readonly_fields = ("lot", "sequence", "record_key", "record", "decision", "reason", "reviewer", "decided_at")
    change_list_template = "tasks/review_changelist.html"

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        return [
            path("review/", self.admin_site.admin_view(self.review_view), name="tasks_reviewitem_review"),
            path(
                "review/<int:item_id>/",
                self.admin_site.admin_view(self.review_view),
                name="tasks_reviewitem_review_item",
            ),
            *super().get_urls(),
        ]

    def review_view(self, request, item_id: int | None = None):
        """Review one lot's sampled records one by one; POST records a decision and moves on within the lot.

        Review is always scoped to one lot: without a lot (or once the lot is done) the page lists the
        lots waiting for review and the operator chooses one; it never drifts into another lot.
        """
        if not has_role(request.user, ROLE_VIEWER):  # a staff user without a role sees no records
            raise PermissionDenied
        if request.method == "POST" and not has_role(request.user, ROLE_OPERATOR):
            raise PermissionDenied  # deciding is the operator's, whether or not a record is left to decide
        lot = None
        if request.GET.get("lot"):
            lot_id = request.GET["lot"]
            lot = (
                get_object_or_404(QCLot.objects.select_related("policy", "stage_run__run"), pk=lot_id)
                if (lot_id.isdigit())
                else None
            )
        if item_id:
            item = get_object_or_404(
                ReviewItem.objects.select_related("lot", "lot__policy", "lot__stage_run__run", "reviewer"), pk=item_id
            )
            lot = item.lot
        else:
            item = review_next_item(lot=lot) if lot is not None else None
        form = ReviewDecisionForm()
        if request.method == "POST" and item is not None:
            if not has_role(request.user, ROLE_OPERATOR):
                raise PermissionDenied
            form = ReviewDecisionForm(request.POST)
            if form.is_valid():
                try:
                    review_item_decide(
                        item=item,
                        actor=request.user,
                        decision=form.cleaned_data["decision"],
                        reason=form.cleaned_data["reason"],
                    )
                except (ValidationError, QCError) as exc:
                    form.add_error(None, _message(exc))
                else:
                    item.lot.refresh_from_db()
                    if item.lot.decision != LotDecision.PENDING:
                        messages.success(
                            request,
                            gettext("Lot %(lot)s decided: %(d)s.")
                            % {"lot": item.lot_id, "d": item.lot.get_decision_display()},
                        )
                    nxt = review_next_item(lot=item.lot, after_sequence=item.sequence)
                    url = (
                        reverse("admin:tasks_reviewitem_review_item", args=[nxt.pk])
                        if nxt
                        else reverse("admin:tasks_reviewitem_review") + f"?lot={item.lot_id}"
                    )
                    return HttpResponseRedirect(url)
        nxt = None
        if item is not None:
            nxt = review_next_item(lot=item.lot, after_sequence=item.sequence)
            if nxt is not None and nxt.pk == item.pk:
                nxt = None
        progress = None
        if lot is not None:
            total = lot.items.count()
            done = lot.items.exclude(decision=ReviewDecision.PENDING).count()
            progress = {"done": done, "total": total}
        waiting_lots = (
            QCLot.objects.filter(decision=LotDecision.PENDING, items__decision=ReviewDecision.PENDING)
            .exclude(pk=lot.pk if lot is not None else None)
            .select_related("policy", "stage_run__run__pipeline")
            .distinct()
            .order_by("created_at")[:20]
        )
        context = {
            **self.admin_site.each_context(request),
            "title": _("Review lot %(lot)s") % {"lot": lot.pk} if lot is not None else _("Review queue"),
            "lot": lot,
            "run": lot.stage_run.run if lot is not None else None,
            "item": item,
            "next_item": nxt,
            "form": form,
            "progress": progress,
            "waiting_lots": waiting_lots,
            "opts": self.model._meta,
            "record_rows": record_rows(item.record) if item is not None else [],
        }
        return TemplateResponse(request, "tasks/review_item.html", context)


def record_rows(record) -> list[tuple[str, str]]:
    """A record as (field, text) rows: strings as they are, every other value as indented JSON."""
    if not isinstance(record, dict):
        return [("", json.dumps(record, ensure_ascii=False, indent=2))]
    return [
        (key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2))
        for key, value in sorted(record.items())
    ]


class ReviewItemInline(admin.TabularInline):
    model = ReviewItem
    fields = ("sequence", "record_key", "decision", "reason", "reviewer", "decided_at")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True


@admin.register(QCLot)
class QCLotAdmin(PortalModelAdmin):
    """QC lots: the sampling plan and evidence, with decide, override and publish actions."""

    list_display = (
        "__str__",
        "policy",
        "lot_size",
        "sample_size",
        "acceptance_number",
        "auto_defects",
        "review_defects",
        badge_column("decision", _("decision")),
        "decided_at",
        "review_link",
    )
    list_filter = ("decision", "policy")
    list_select_related = ("policy", "stage_run")
    raw_id_fields = ("stage_run", "override_by")
    readonly_fields = [f.name for f in QCLot._meta.fields]
    inlines = [ReviewItemInline]
    actions = ["decide_lots", "override_lots", "publish_runs"]

    def has_add_permission(self, request):
        return False

    @admin.display(description=_("review"))
    def review_link(self, obj):
        if obj.decision != LotDecision.PENDING:
            return "-"
        url = reverse("admin:tasks_reviewitem_review") + f"?lot={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, gettext("Review"))

    @admin.action(description=_("Decide selected lots by the acceptance rule"))
    def decide_lots(self, request, queryset):
        if not has_role(request.user, ROLE_OPERATOR):
            self.message_user(request, gettext("Your role does not allow this."), messages.ERROR)
            return
        for lot in queryset:
            try:
                lot = qc_lot_decide(lot=lot, actor=request.user)
                self.message_user(request, gettext("%(lot)s: %(d)s") % {"lot": lot, "d": lot.get_decision_display()})
            except QCError as exc:
                self.message_user(request, f"{lot}: {exc}", messages.ERROR)

    @admin.action(description=_("Override: accept selected lots (admin, with a reason)"))
    def override_lots(self, request, queryset):
        if not can_override(request.user):
            self.message_user(request, gettext("Only an admin may override a QC decision."), messages.ERROR)
            return None
        if "apply" in request.POST:
            form = OverrideForm(request.POST)
            if form.is_valid():
                for lot in queryset:
                    qc_lot_override(lot=lot, actor=request.user, reason=form.cleaned_data["reason"])
                self.message_user(request, gettext("%(n)d lot(s) overridden.") % {"n": queryset.count()})
                return None
        else:
            form = OverrideForm()
        context = {
            **self.admin_site.each_context(request),
            "title": _("Override QC decision"),
            "form": form,
            "queryset": queryset,
            "opts": self.model._meta,
            "action": "override_lots",
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "tasks/review_override.html", context)

    @admin.action(description=_("Publish the runs of selected lots"))
    def publish_runs(self, request, queryset):
        from .publish import PublishBlocked, PublishError, publish_run

        if not has_role(request.user, ROLE_OPERATOR):
            self.message_user(request, gettext("Your role does not allow this."), messages.ERROR)
            return
        for lot in queryset.select_related("stage_run__run"):
            run = lot.stage_run.run
            try:
                version = publish_run(run=run, actor=request.user)
                self.message_user(request, gettext("Published %(v)s.") % {"v": version})
            except (PublishBlocked, PublishError, PermissionDenied, ValidationError) as exc:
                self.message_user(request, f"{run}: {_message(exc)}", messages.ERROR)


# ---- Dataset versions: archive (the catalog admin cannot import tasks, so the action is attached here) ----
@admin.action(description=_("Archive selected versions (move files to the archive folder)"))
def archive_versions(modeladmin, request, queryset):
    from .publish import dataset_version_archive

    if not has_role(request.user, ROLE_OPERATOR):
        modeladmin.message_user(request, gettext("Your role does not allow this."), messages.ERROR)
        return
    for version in queryset:
        try:
            dataset_version_archive(version=version, actor=request.user)
            modeladmin.message_user(request, gettext("Archived %(v)s.") % {"v": version})
        except ValidationError as exc:
            modeladmin.message_user(request, f"{version}: {_message(exc)}", messages.ERROR)


def _attach_archive_action() -> None:
    from catalog.models import DatasetVersion

    if not admin.site.is_registered(DatasetVersion):
        return
    model_admin = admin.site.get_model_admin(DatasetVersion)
    current = list(model_admin.actions or [])
    if archive_versions not in current:
        model_admin.actions = [*current, archive_versions]


_attach_archive_action()
