"""manage.py roles_sync: create the viewer/operator/admin groups and give them their permissions."""

from django.core.management.base import BaseCommand

from dataflare_portal.core.auth import roles_sync


class Command(BaseCommand):
    help = "Create the viewer, operator and admin groups and set their model permissions."

    def handle(self, *args, **options):
        counts = roles_sync()
        for role, count in counts.items():
            self.stdout.write(f"{role}: {count} permissions")
