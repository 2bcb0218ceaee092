"""``/api/v1/me``: who the token is (name, right, tenant). Any valid token."""

from __future__ import annotations

from fastapi import APIRouter

from absync.web.auth import Viewer
from absync.web.models import ERRORS, Me

router = APIRouter(tags=["me"], responses=ERRORS)


@router.get("/me", response_model=Me, summary="Who this token is")
def me(principal: Viewer) -> Me:
    return Me(name=principal.name, right=principal.right.value, tenant=principal.tenant)
