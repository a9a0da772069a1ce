# tag-watchdog: a small, non-root image.  docker build -t tag-watchdog .
# BASE_IMAGE: the official Python slim image by default; any Debian-like image with python3 >= 3.11
# and its venv module works (CI builds on one it makes itself: .ci/image-smoke.sh).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# For builds without the package index: wheels served elsewhere, as pip's own settings, e.g.
#   --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=http://127.0.0.1:8000/
ARG PIP_FIND_LINKS=""
ARG PIP_NO_INDEX=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/tag-watchdog/bin:$PATH \
    WATCHDOG_CONFIG=/etc/tag-watchdog/config.yaml

WORKDIR /src
COPY pyproject.toml README.md ./
COPY watchdog ./watchdog
COPY migrations ./migrations
# A virtualenv: the same on every base (Debian's own python3 refuses system-wide pip installs).
RUN python3 -m venv /opt/tag-watchdog \
    && pip install . \
    && rm -rf /src \
    && groupadd --system --gid 10001 watchdog \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tag-watchdog --no-create-home watchdog \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/tag-watchdog

# The default SQLite record (sqlite:///watchdog.db, relative to this directory) outlives the
# container: a volume (named, or anonymous by default).
VOLUME /var/lib/tag-watchdog
USER 10001:10001
WORKDIR /var/lib/tag-watchdog
EXPOSE 9797
# Asks /healthz where the daemon listens: http.listen of the same config and environment (the
# daemon's -c, else WATCHDOG_CONFIG; WATCHDOG_HTTP_LISTEN counts), 0.0.0.0 / :: on loopback.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["tag-watchdog", "health"]
ENTRYPOINT ["tag-watchdog"]
CMD ["run", "-c", "/etc/tag-watchdog/config.yaml"]
