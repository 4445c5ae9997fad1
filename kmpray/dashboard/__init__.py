"""``kmpray dashboard``: a small web app over a running engine (Starlette + uvicorn, the
``dashboard`` extra). ``create_app(scheduler)`` builds it; ``serve()`` runs it."""

from __future__ import annotations

from .app import DEFAULT_PORT, create_app, serve

__all__ = ["DEFAULT_PORT", "create_app", "serve"]
