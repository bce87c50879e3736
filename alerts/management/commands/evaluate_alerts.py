"""manage.py evaluate_alerts: one evaluation pass, printing every transition it made."""

from django.core.management.base import BaseCommand, CommandError
from django.utils.translation import gettext as _

from alerts.models import AlertRule
from alerts.services import alerts_evaluate, notifications_send


class Command(BaseCommand):
    help = "Evaluate the alert rules once and print what changed (fired, escalated, de-escalated, resolved)."

    def add_arguments(self, parser):
        parser.add_argument("--rule", action="append", default=[], help="Only this rule (name); repeatable.")
        parser.add_argument("--send", action="store_true", help="Also deliver the queued notifications.")

    def handle(self, *args, rule, send, **options):
        rules = None
        if rule:
            rules = list(AlertRule.objects.filter(name__in=rule, enabled=True))
            missing = set(rule) - {r.name for r in rules}
            if missing:
                raise CommandError(_("No enabled rule named: %(names)s") % {"names": ", ".join(sorted(missing))})
        changes = alerts_evaluate(rules=rules)
        for c in changes:
            value = "-" if c.value is None else f"{c.value:.4g}"
            scope = c.scope or "-"
            self.stdout.write(
                f"{c.event:<12} {c.severity:<8} rule={c.rule!r} scope={scope} value={value} #{c.alert_id}"
            )
        problems = AlertRule.objects.filter(enabled=True).exclude(last_error="")
        if rules is not None:
            problems = problems.filter(pk__in=[r.pk for r in rules])
        for r in problems:
            self.stderr.write(_("not evaluated: %(rule)s: %(error)s") % {"rule": r.name, "error": r.last_error})
        self.stdout.write(_("%(n)d change(s).") % {"n": len(changes)})
        if send:
            counts = notifications_send(worker="evaluate_alerts")
            self.stdout.write(_("notifications: %(c)s") % {"c": counts})
