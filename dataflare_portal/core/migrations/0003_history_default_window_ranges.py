"""history_default_window now names a dashboard time range (today / 7d / 30d): map old overrides."""

from django.db import migrations

OLD_TO_NEW = {"1h": "today", "6h": "today", "24h": "today", "7d": "7d", "30d": "30d"}


def forwards(apps, schema_editor):
    SystemConfig = apps.get_model("core", "SystemConfig")
    for row in SystemConfig.objects.filter(key="history_default_window"):
        new = OLD_TO_NEW.get(row.value)
        if new is None:
            continue
        row.value = new
        row.save(update_fields=["value"])


class Migration(migrations.Migration):
    dependencies = [("core", "0002_duties")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
