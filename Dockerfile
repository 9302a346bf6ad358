# The site image: Django, Channels, Celery and the wire package (btard_wire) only; no torch, no hivemind,
# no worker code (tests/test_layering.py keeps the site from needing them).

# Stage 1: the worker wheel the site serves under /dist/ for its "Join this run" box (no dependencies
# installed, nothing of it is imported here).
FROM python:3.11-slim AS worker-wheel
ENV PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY btard_wire ./btard_wire
COPY worker_client ./worker_client
COPY platform ./platform
RUN pip wheel --no-deps -w /dist .

# Stage 2: the site.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY btard_wire ./btard_wire
COPY platform ./platform
COPY templates ./templates
COPY static ./static
COPY manage.py ./
COPY --from=worker-wheel /dist ./dist
RUN pip install -e '.[site]'
RUN python manage.py collectstatic --noinput || true
EXPOSE 8000
CMD ["python", "-m", "daphne", "-b", "0.0.0.0", "-p", "8000", "btard_site.asgi:application"]
