"""The operator console: server-rendered pages with a little JavaScript, served by the API's app.

Mount it with ``app.include_router(absync.web.console.router)``. The pages call the same
``/api/v1`` routes as any client, through ``/console/api`` (see :mod:`absync.web.console.routes`),
so the API stays the one place where rights and tenants are checked.
"""

from absync.web.console.routes import router

__all__ = ["router"]
