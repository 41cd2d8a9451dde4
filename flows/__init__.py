"""Prefect flows over sublim's steps. Offline by design, as the CLI: neither MLflow nor Prefect's client sends
usage telemetry unless the environment asks for it."""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
