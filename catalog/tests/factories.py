"""factory-boy factories for the catalog."""

import factory

from catalog.models import Dataset, DatasetVersion, DataSource, Project


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project
        django_get_or_create = ("slug",)

    name = factory.Sequence(lambda n: f"Project {n}")
    slug = factory.Sequence(lambda n: f"project-{n}")


class FileSourceFactory(factory.django.DjangoModelFactory):
    """A file data source whose root is the test's allowed file root."""

    class Meta:
        model = DataSource

    project = factory.SubFactory(ProjectFactory)
    name = factory.Sequence(lambda n: f"files-{n}")
    kind = "file"
    config = factory.LazyFunction(lambda: {"root": "."})


class PostgresSourceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DataSource

    project = factory.SubFactory(ProjectFactory)
    name = factory.Sequence(lambda n: f"pg-{n}")
    kind = "postgresql"
    config = factory.LazyFunction(
        lambda: {"host": "127.0.0.1", "port": 5432, "database": "postgres", "user": "postgres"}
    )


class DatasetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Dataset

    project = factory.SelfAttribute("source.project")
    source = factory.SubFactory(FileSourceFactory)
    name = factory.Sequence(lambda n: f"dataset-{n}")
    format = "jsonl"
    location = factory.Sequence(lambda n: f"data-{n}.jsonl")


class DatasetVersionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DatasetVersion

    dataset = factory.SubFactory(DatasetFactory)
    version = factory.Sequence(lambda n: n + 1)
    status = "published"
    checksum = factory.Sequence(lambda n: f"{n:064x}")
    record_count = 10

    class Params:
        building = factory.Trait(status="building", checksum="")
