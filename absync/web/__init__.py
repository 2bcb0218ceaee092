"""The operator HTTP API (``/api/v1``), its tokens and rights, metrics and the HTTP component.

``app.create_app`` builds the FastAPI app, ``server.build`` runs it inside ``absync run``.
"""
