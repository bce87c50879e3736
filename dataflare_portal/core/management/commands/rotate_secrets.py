"""manage.py rotate_secrets: re-encrypt every stored secret under the first SECRETS_ENCRYPTION_KEYS key."""

from django.core.management.base import BaseCommand, CommandError

from dataflare_portal.core.secrets import SecretDecryptError, secrets_rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt every *_ciphertext column under the first key of SECRETS_ENCRYPTION_KEYS. "
        "Put the new key first, keep the old ones after it, run this, then drop the old keys."
    )

    def handle(self, *args, **options):
        try:
            counts = secrets_rotate(actor="rotate_secrets")
        except SecretDecryptError as exc:
            raise CommandError(str(exc)) from exc
        for label, count in counts.items():
            self.stdout.write(f"{label}: {count} re-encrypted")
        self.stdout.write(self.style.SUCCESS(f"{sum(counts.values())} secret(s) re-encrypted under the first key."))
