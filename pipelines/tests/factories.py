"""factory-boy factories for pipelines: QC policies, model configs, pipelines with a standard stage list."""

import factory

from catalog.tests.factories import DatasetFactory, FileSourceFactory, ProjectFactory
from pipelines.models import ModelConfig, Pipeline, PipelineStage, PipelineTemplate, QCPolicy

# read -> filter -> clean -> qc -> publish
STANDARD_STAGES = [
    ("read", "read", {}),
    ("filter", "filter", {"rules": [{"type": "length", "field": "text", "min": 8}]}),
    ("clean", "clean", {"steps": [{"op": "normalize_whitespace"}, {"op": "strip_html"}]}),
    ("qc", "qc", {}),
    ("publish", "publish", {}),
]


class QCPolicyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = QCPolicy
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"policy-{n}")
    aql = 1.0
    inspection_level = "II"
    seed = 42
    require_review = True

    class Params:
        no_review = factory.Trait(require_review=False)


class ModelConfigFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ModelConfig
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"model-{n}")
    endpoint = "127.0.0.1:1"
    model_name = "quality"
    model_version = "1"


class PipelineFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Pipeline
        skip_postgeneration_save = True

    project = factory.SubFactory(ProjectFactory)
    name = factory.Sequence(lambda n: f"pipeline-{n}")
    input_dataset = factory.SubFactory(
        DatasetFactory, source=factory.SubFactory(FileSourceFactory, project=factory.SelfAttribute("...project"))
    )
    output_dataset = factory.SubFactory(
        DatasetFactory,
        source=factory.SelfAttribute("..input_dataset.source"),
        location=factory.Sequence(lambda n: f"out/data-{n}.jsonl"),
    )
    qc_policy = factory.SubFactory(QCPolicyFactory)
    batch_size = 50

    @factory.post_generation
    def stages(self, create, extracted, **kwargs):
        if not create:
            return
        specs = STANDARD_STAGES if extracted is None else extracted
        for position, (key, kind, config) in enumerate(specs):
            PipelineStage.objects.create(pipeline=self, key=key, kind=kind, position=position, config=config)


class PipelineStageFactory(factory.django.DjangoModelFactory):
    """One stage of a pipeline; a `filter` stage unless the test names another kind."""

    class Meta:
        model = PipelineStage

    pipeline = factory.SubFactory(PipelineFactory)
    key = factory.Sequence(lambda n: f"stage-{n}")
    kind = "filter"
    position = factory.Sequence(lambda n: n)
    config = factory.LazyFunction(lambda: {"rules": [{"type": "length", "field": "text", "min": 1}]})


class PipelineTemplateFactory(factory.django.DjangoModelFactory):
    """An immutable template version with a body and its checksum."""

    class Meta:
        model = PipelineTemplate

    name = factory.Sequence(lambda n: f"template-{n}")
    version = 1
    body = factory.LazyFunction(lambda: {"schema_version": 1, "stages": []})
    checksum = factory.LazyAttribute(
        lambda o: __import__("hashlib").sha256(__import__("json").dumps(o.body, sort_keys=True).encode()).hexdigest()
    )
