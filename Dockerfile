# battle-scorer worker image: one image for worker, beat, flower and the sandbox.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY tasks ./tasks
RUN pip install --no-cache-dir . && useradd --create-home --uid 10001 scorer
USER scorer
CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
