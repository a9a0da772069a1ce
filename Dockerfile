# tag-watchdog: a small, non-root image.  docker build -t tag-watchdog .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY watchdog ./watchdog
COPY migrations ./migrations
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /var/lib/tag-watchdog --create-home watchdog

USER 10001
WORKDIR /var/lib/tag-watchdog
EXPOSE 9797
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9797/healthz', timeout=4)"]
ENTRYPOINT ["tag-watchdog"]
CMD ["run", "-c", "/etc/tag-watchdog/config.yaml"]
