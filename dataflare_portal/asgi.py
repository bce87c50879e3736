"""ASGI entry point (gunicorn with uvicorn workers in the image, compose and Kubernetes; docs/models.md)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dataflare_portal.settings")
django_application = get_asgi_application()

# AUTH_MODE=none refuses to serve on an address beyond loopback (raises before the first request).
from dataflare_portal.core.peerguard import assert_safe_bind  # noqa: E402

assert_safe_bind("ASGI")

# The OpenAI-compatible gateway (/v1/) skips the console's synchronous middleware: gateway/asgi.py.
from gateway.asgi import gateway_application  # noqa: E402

application = gateway_application(django_application)
