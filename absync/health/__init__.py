"""Destination health: auto-disable and operator alerts (see :mod:`absync.health.monitor`)."""
