"""Status enums of the catalog, with named state groups."""

from django.db import models
from django.utils.translation import gettext_lazy as _


class DataSourceKind(models.TextChoices):
    """The built-in connector kinds; DataSource.kind takes any registered kind (catalog.connectors.registry)."""

    FILE = "file", _("Files (CSV, JSONL, Parquet)")
    POSTGRESQL = "postgresql", _("PostgreSQL")
    S3 = "s3", _("Object storage (S3-compatible)")
    MYSQL = "mysql", _("MySQL / MariaDB")
    HTTP = "http", _("HTTP(S) download")


class ConnectionStatus(models.TextChoices):
    UNKNOWN = "unknown", _("Not tested")
    OK = "ok", _("Reachable")
    ERROR = "error", _("Unreachable")


class DatasetFormat(models.TextChoices):
    CSV = "csv", "CSV"
    JSONL = "jsonl", "JSONL"
    PARQUET = "parquet", "Parquet"
    TABLE = "table", _("Database table")
    QUERY = "query", _("Database query")


class DatasetVersionStatus(models.TextChoices):
    BUILDING = "building", _("Building")
    PUBLISHED = "published", _("Published")
    ARCHIVED = "archived", _("Archived")
    FAILED = "failed", _("Failed")

    @classmethod
    def readable(cls):
        return (cls.PUBLISHED, cls.ARCHIVED)
