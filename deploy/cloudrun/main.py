"""The Cloud Run function's source file: functions-framework loads functions from a file, so
this one names lookalike's (see lookalike.serverless.gcp and docs/deployment.md)."""

from lookalike.serverless.gcp import on_storage_event, on_storage_request

__all__ = ["on_storage_event", "on_storage_request"]
