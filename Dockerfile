FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY platform ./platform
COPY worker_client ./worker_client
COPY templates ./templates
COPY static ./static
COPY manage.py ./
RUN pip install -e . && python manage.py collectstatic --noinput || true
EXPOSE 8000
CMD ["python", "-m", "daphne", "-b", "0.0.0.0", "-p", "8000", "btard_site.asgi:application"]
