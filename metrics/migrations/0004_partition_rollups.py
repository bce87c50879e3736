"""PostgreSQL: store the rollup tables partitioned by granularity.

Minute, hour and day rows used to share one heap: a year of day rows (a few hundred thousand)
sat among millions of hour rows, so a month or a year of day buckets was read page by page
across the whole table, and the planner chose a sequential scan of all of it. With one
partition per granularity every dashboard read touches only the partition of its granularity,
whose rows are clustered by bucket, through the partition's own indexes.

PostgreSQL requires every unique index of a partitioned table to contain the partition key,
so the primary key becomes (id, granularity); ids still come from one sequence, and Django
keeps addressing rows by id. Other databases (SQLite, the embedded default) keep one table.
"""

from django.db import migrations, models

TABLES = {
    "metrics_summary": {
        "unique": (
            "metrics_metricssummary_unique_bucket",
            "granularity, bucket, project_id, pipeline_id, stage_template, model_version",
        ),
        "indexes": [("summary_gran_proj_bucket_idx", "granularity, project_id, bucket")],
    },
    "metrics_status_summary": {
        "unique": (
            "metrics_metricsstatussummary_unique_bucket",
            "granularity, bucket, project_id, pipeline_id, stage_template, model_version, status_code",
        ),
        "indexes": [("status_gran_proj_bucket_idx", "granularity, project_id, bucket")],
    },
}
PARTITIONS = ("minute", "hour", "day")


def _partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    run = schema_editor.execute
    for table, spec in TABLES.items():
        old = f"{table}_unpartitioned"
        unique_name, unique_cols = spec["unique"]
        run(f"ALTER TABLE {table} RENAME TO {old}")
        run(f"ALTER TABLE {old} RENAME CONSTRAINT {unique_name} TO {unique_name}_old")
        run(f"ALTER TABLE {old} RENAME CONSTRAINT {table}_pkey TO {table}_old_pkey")
        for name, _cols in spec["indexes"]:
            run(f"DROP INDEX IF EXISTS {name}")
        # No INCLUDING DEFAULTS: the only default is the old id sequence, which goes with the old table.
        run(f"CREATE TABLE {table} (LIKE {old}) PARTITION BY LIST (granularity)")
        for gran in PARTITIONS:
            run(f"CREATE TABLE {table}_{gran} PARTITION OF {table} FOR VALUES IN ('{gran}')")
        # Anything else (a granularity added later) still has a home until it gets a partition.
        run(f"CREATE TABLE {table}_other PARTITION OF {table} DEFAULT")
        run(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (id, granularity)")
        run(f"ALTER TABLE {table} ADD CONSTRAINT {unique_name} UNIQUE ({unique_cols})")
        for name, cols in spec["indexes"]:
            run(f"CREATE INDEX {name} ON {table} ({cols})")
        run(f"INSERT INTO {table} SELECT * FROM {old} ORDER BY granularity, bucket")  # noqa: S608
        run(f"DROP TABLE {old}")
        run(f"CREATE SEQUENCE {table}_id_seq OWNED BY {table}.id")
        run(f"SELECT setval('{table}_id_seq', COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)")  # noqa: S608
        run(f"ALTER TABLE {table} ALTER COLUMN id SET DEFAULT nextval('{table}_id_seq')")
        run(f"ANALYZE {table}")


def _unpartition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    run = schema_editor.execute
    for table, spec in TABLES.items():
        old = f"{table}_partitioned"
        unique_name, unique_cols = spec["unique"]
        run(f"ALTER TABLE {table} RENAME TO {old}")
        run(f"ALTER TABLE {old} RENAME CONSTRAINT {unique_name} TO {unique_name}_old")
        run(f"ALTER TABLE {old} RENAME CONSTRAINT {table}_pkey TO {table}_old_pkey")
        for name, _cols in spec["indexes"]:
            run(f"DROP INDEX IF EXISTS {name}")
        run(f"ALTER SEQUENCE {table}_id_seq OWNED BY NONE")
        run(f"CREATE TABLE {table} (LIKE {old})")
        run(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (id)")
        run(f"ALTER TABLE {table} ADD CONSTRAINT {unique_name} UNIQUE ({unique_cols})")
        for name, cols in spec["indexes"]:
            run(f"CREATE INDEX {name} ON {table} ({cols})")
        run(f"INSERT INTO {table} SELECT * FROM {old}")  # noqa: S608
        run(f"DROP TABLE {old}")
        run(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")
        run(f"ALTER TABLE {table} ALTER COLUMN id SET DEFAULT nextval('{table}_id_seq')")


class Migration(migrations.Migration):
    dependencies = [
        ("metrics", "0003_status_rollup_token_columns"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="metricsstatussummary",
            index=models.Index(
                fields=["granularity", "project_id", "bucket"], name="status_gran_proj_bucket_idx"
            ),
        ),
        migrations.RunPython(_partition, _unpartition, elidable=False),
    ]
