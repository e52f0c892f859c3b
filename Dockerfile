# battle-scorer image. One Dockerfile, one image per role by build argument EXTRAS:
#   (none)    worker, beat and the metrics exporter: no Flower, no rich, no web server
#   flower    battle-scorer-flower
#   receiver  battle-scorer-receiver (the signed webhook receiver)
#   local     battle-scorer-local (the Tencent sandbox, the demo)
# The base is pinned to an exact Python and Debian release, so a rebuild months later gets the
# same interpreter; the Python packages are pinned by constraints.txt (`make lock`).
FROM python:3.11.14-slim-bookworm
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY worker ./worker
COPY tasks ./tasks
RUN pip install --no-cache-dir -c constraints.txt ".${EXTRAS:+[$EXTRAS]}" \
    && useradd --create-home --uid 10001 scorer
USER scorer
CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
