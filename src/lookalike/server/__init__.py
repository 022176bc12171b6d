"""`lookalike serve`: the HTTP API and web page over a collection (FastAPI on uvicorn)."""

from .app import create_app
from .config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
