from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(request: Request) -> dict:
    client = request.app.state.client
    try:
        await client.service_client.check_health()
        temporal = "ok"
    except Exception as err:
        temporal = f"unavailable: {err}"
    return {"status": "ok" if temporal == "ok" else "degraded", "temporal": temporal}
