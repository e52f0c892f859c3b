# battle-scorer images. One Dockerfile: the default target is the production image; the
# build argument EXTRAS adds an extra of pyproject.toml, the target `local` adds the local world.
#   (default, no extra)   worker, beat and the metrics exporter: no Flower, no web server,
#                         no sandbox, demo or rich (local/ is never copied into it)
#   EXTRAS=flower         battle-scorer-flower
#   EXTRAS=receiver       battle-scorer-receiver (the signed webhook receiver)
#   --target local        battle-scorer-local (the Tencent sandbox, the demo)
# The base is pinned to an exact Python and Debian release, so a rebuild months later gets the
# same interpreter; the Python packages are pinned by constraints.txt (`make lock`).
FROM python:3.11.14-slim-bookworm AS scorer
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY worker ./worker
COPY tasks ./tasks
# compileall: processes import worker/ and tasks/ from /app (Celery puts the working directory
# first on the path), where PYTHONDONTWRITEBYTECODE and a read-only /app would otherwise have
# every process start compile them from source again (bench/RESULTS.md, fourteenth session).
RUN pip install --no-cache-dir -c constraints.txt ".${EXTRAS:+[$EXTRAS]}" \
    && python -m compileall -q worker tasks \
    && useradd --create-home --uid 10001 scorer
USER scorer
CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]

# The local world (local/: the sandbox, the demo), for the compose `sandbox` profile only.
FROM scorer AS local
USER root
COPY local ./local
RUN pip install --no-cache-dir -c constraints.txt ./local && rm -rf ./local
USER scorer

# The default target: the production image, built without the local world.
FROM scorer
