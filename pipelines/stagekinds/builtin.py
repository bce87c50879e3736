"""The built-in stage kinds, in the order they are offered."""

from .clean import CleanKind
from .dedup import DedupKind
from .filter import FilterKind
from .inference import ModelInferenceKind
from .publish import PublishKind
from .qc import QCKind
from .read import ReadKind

BUILTIN_KINDS = [ReadKind, FilterKind, CleanKind, DedupKind, ModelInferenceKind, QCKind, PublishKind]
