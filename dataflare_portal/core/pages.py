"""The system-config page: every setting with its effective value and source, editable by admins."""

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from . import config
from .auth import has_role, role_required
from .services import ROLE_ADMIN, ROLE_VIEWER

RESET = "__reset__"


def _field_for(setting: config.Setting, editable: bool) -> forms.Field:
    common = {"required": False, "label": setting.label or setting.key, "help_text": setting.description}
    if setting.type == "int":
        field = forms.IntegerField(min_value=setting.minimum, max_value=setting.maximum, **common)
    elif setting.type == "float":
        field = forms.FloatField(min_value=setting.minimum, max_value=setting.maximum, **common)
    elif setting.type == "bool":
        field = forms.TypedChoiceField(
            choices=[("true", gettext_lazy("Yes")), ("false", gettext_lazy("No"))], coerce=str, **common
        )
    elif setting.type == "choice":
        field = forms.ChoiceField(choices=[(c, setting.display(c)) for c in setting.choices], **common)
    else:
        field = forms.CharField(max_length=500, **common)
    field.disabled = not editable or setting.read_only
    return field


class ConfigForm(forms.Form):
    """One field per setting; an empty field or the reset box removes the database override."""

    def __init__(self, *args, rows, editable, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows = rows
        for row in rows:
            setting = row["setting"]
            value = row["value"]
            if setting.type == "bool":
                value = "true" if value else "false"
            self.fields[setting.key] = _field_for(setting, editable)
            self.initial[setting.key] = value
            if not setting.read_only:
                self.fields[f"{setting.key}{RESET}"] = forms.BooleanField(
                    required=False, label=_("Reset"), disabled=not editable or row["source"] != config.SOURCE_DATABASE
                )

    def changes(self) -> dict[str, object]:
        """Settings whose submitted value differs from the effective one (RESET for resets)."""
        out = {}
        for row in self.rows:
            setting = row["setting"]
            if setting.read_only:
                continue
            if self.cleaned_data.get(f"{setting.key}{RESET}"):
                out[setting.key] = RESET
                continue
            value = self.cleaned_data.get(setting.key)
            if value in (None, ""):
                continue
            if setting.type == "bool":
                value = value == "true"
            if value != row["value"]:
                out[setting.key] = value
        return out


@role_required(ROLE_VIEWER)
def system_config(request):
    """GET shows the settings; POST (admin role) applies changed values, each through config_set()."""
    editable = has_role(request.user, ROLE_ADMIN)
    rows = config.config_all()
    if request.method == "POST":
        if not editable:
            messages.error(request, _("Your role does not allow changing settings."))
            return redirect("core:config")
        form = ConfigForm(request.POST, rows=rows, editable=True)
        if form.is_valid():
            changed = []
            for key, value in form.changes().items():
                try:
                    if value == RESET:
                        config.config_reset(key=key, actor=request.user)
                    else:
                        config.config_set(key=key, value=value, actor=request.user)
                    changed.append(key)
                except ValidationError as exc:
                    for message in exc.message_dict.get(key, exc.messages):
                        form.add_error(key if key in form.fields else None, message)
            if not form.errors:
                if changed:
                    messages.success(request, _("Saved: %(keys)s.") % {"keys": ", ".join(changed)})
                else:
                    messages.info(request, _("Nothing changed."))
                return redirect("core:config")
    else:
        form = ConfigForm(rows=rows, editable=editable)
    table = []
    for row in rows:
        setting = row["setting"]
        table.append(
            {
                "setting": setting,
                "value": row["value"],
                "display": setting.display(row["value"]),
                "source": row["source"],
                "source_label": config.SOURCE_LABELS[row["source"]],
                "field": form[setting.key],
                "reset": None if setting.read_only else form[f"{setting.key}{RESET}"],
            }
        )
    context = {
        "title": _("System configuration"),
        "rows": table,
        "form": form,
        "editable": editable,
        "config_file": str(getattr(config.settings, "CONFIG_FILE", "")),
    }
    return render(request, "core/system_config.html", context, status=400 if form.errors else 200)
