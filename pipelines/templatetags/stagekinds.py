"""`stage_kind_label`: a stage kind's label in the reader's language ("Model inference", not model_inference)."""

from django import template

from pipelines.stagekinds.registry import registry

register = template.Library()


@register.filter
def stage_kind_label(name):
    return registry.label_of(str(name)) if name else name
