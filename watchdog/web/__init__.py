"""The daemon's HTTP side: ``app`` (the Starlette app, /metrics, /healthz, /readyz) mounts ``hooks``
(registry push notifications), ``api`` (HTTP API v1) and ``slack`` (the Slack buttons); those three
share only ``common`` and never import each other (an import-linter contract)."""
