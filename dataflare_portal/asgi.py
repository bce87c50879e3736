"""ASGI entry point."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dataflare_portal.settings")
application = get_asgi_application()

# AUTH_MODE=none refuses to serve on an address beyond loopback (raises before the first request).
from dataflare_portal.core.peerguard import assert_safe_bind  # noqa: E402

assert_safe_bind("ASGI")
