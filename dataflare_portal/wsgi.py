"""WSGI entry point (gunicorn dataflare_portal.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dataflare_portal.settings")
application = get_wsgi_application()

# AUTH_MODE=none refuses to serve on an address beyond loopback (raises before the first request).
from dataflare_portal.core.peerguard import assert_safe_bind  # noqa: E402

assert_safe_bind("WSGI")
