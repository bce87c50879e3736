from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class WasmStagesConfig(AppConfig):
    """WebAssembly stage modules: versioned uploads and the sandboxed `wasm` stage kind."""

    name = "wasmstages"
    verbose_name = _("WebAssembly stages")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from pipelines.stagekinds import registry

        from .kind import WasmKind

        if "wasm" not in registry:
            registry.register(WasmKind)
