# DataFlare Portal image: one image for every process (web, worker, beat, model server); compose.yaml
# picks the command. Multi-stage: dependencies are built into a venv, the runtime stage is slim,
# runs as a non-root user, and carries the collected static files (served by WhiteNoise).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: the virtualenv ------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt /tmp/requirements.txt
RUN pip install --upgrade pip && pip install -r /tmp/requirements.txt

# ---- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    DJANGO_SETTINGS_MODULE=dataflare_portal.settings \
    DATA_DIR=/data \
    DEBUG=false \
    AUTH_MODE=local \
    BIND_ADDRESS=0.0.0.0 \
    PORT=8000
RUN groupadd --system --gid 10001 dataflare \
 && useradd --system --uid 10001 --gid dataflare --home-dir /app --shell /usr/sbin/nologin dataflare \
 && mkdir -p /data /app \
 && chown dataflare:dataflare /data
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY --chown=dataflare:dataflare . /app
# Static files are collected at build time. The secrets below exist only for this step (DEBUG off
# refuses to start without them); real ones come from the environment at run time.
RUN SECRET_KEY=build-only-not-secret \
    SECRETS_ENCRYPTION_KEYS=ZGF0YWZsYXJlLWJ1aWxkLW9ubHktZHVtbXkta2V5ISE= \
    DATA_DIR=/tmp/build-data \
    python manage.py collectstatic --noinput -v0 \
 && rm -rf /tmp/build-data

USER dataflare
EXPOSE 8000 8001 8080
VOLUME ["/data"]
# X-Forwarded-Proto: the check talks plain HTTP on loopback; with DEBUG off the portal would
# otherwise redirect it to HTTPS.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), headers={'X-Forwarded-Proto': 'https'}), timeout=4)"]
CMD ["sh", "-c", "exec gunicorn dataflare_portal.asgi:application -k uvicorn_worker.UvicornWorker --bind 0.0.0.0:${PORT} --workers ${WEB_CONCURRENCY:-3} --timeout 60 --access-logfile - --forwarded-allow-ips=${FORWARDED_ALLOW_IPS:-127.0.0.1}"]
