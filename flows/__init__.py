"""Prefect flows over sublim's steps. Offline by design, as the CLI: MLflow sends no usage telemetry unless the
environment asks for it."""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
