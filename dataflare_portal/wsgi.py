"""WSGI entry point (gunicorn dataflare_portal.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dataflare_portal.settings")
application = get_wsgi_application()
