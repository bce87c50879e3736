"""Django's own admin strings that the portal translates itself (never imported; read by makemessages).

Our locale/ catalog takes precedence over Django's, so a string listed here is translated by our
.po: Django's Simplified Chinese leaves "Error:" (the admin page title after a failed save) in
English and renders "Add %s" as "增加 数据源" with a stray space and a term our pages do not use.
The app list's hidden column headings (Django 5.1+) are untranslated there.
"""

from django.utils.translation import gettext_noop

DJANGO_ADMIN_STRINGS = (
    gettext_noop("Error:"),
    gettext_noop("Add"),
    gettext_noop("Add %s"),
    gettext_noop("Add %(name)s"),
    gettext_noop("Add another %(model)s"),
    gettext_noop("Save and add another"),
    gettext_noop("Change %s"),
    gettext_noop("View %s"),
    gettext_noop("Select %s"),
    gettext_noop("Select %s to change"),
    gettext_noop("Select %s to view"),
    # Column headings of the app list, for screen readers; Django's zh_Hans has none of them.
    gettext_noop("Model name"),
    gettext_noop("Add link"),
    gettext_noop("Change or view list link"),
)
