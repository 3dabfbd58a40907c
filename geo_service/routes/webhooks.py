"""Webhooks: an admin registers, lists, disables, deletes them and reads their deliveries."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from geo_service import audit, webhooks
from geo_service.db import SessionDep
from geo_service.routes.access import AdminDep, client_address
from geo_service.routes.params import Offset, json_response
from geo_service.schemas import MAX_INT4, Code, DeliveryRead, ErrorRead, WebhookCreate, WebhookPatch, WebhookRead

router = APIRouter(prefix="/api/v1", tags=["webhooks"])

WebhookId = Annotated[int, Path(ge=1, le=MAX_INT4, description="The webhook's id.")]
ERRORS = {403: {"model": ErrorRead}, 404: {"model": ErrorRead}, 422: {"model": ErrorRead}}


def now(request: Request) -> dt.datetime:
    return request.app.state.clock()


@router.post("/webhooks", response_model=WebhookRead, status_code=201, responses=ERRORS)
def create_webhook(request: Request, session: SessionDep, identity: AdminDep, body: WebhookCreate):
    """Register a URL to be sent the chosen incident events of the caller's towns, each signed with
    the secret (`X-Geo-Signature: sha256=<HMAC-SHA256 of the body>`). Audited."""
    allow = webhooks.Allowlist.parse(request.app.state.settings.webhook_allow)
    created = webhooks.register(session, identity, audit.actor_of(identity), url=body.url, events=body.events,
                                secret=body.secret, description=body.description, allow=allow, now=now(request),
                                address=client_address(request))
    response = json_response(created)
    response.status_code = 201
    return response


@router.get("/webhooks", response_model=list[WebhookRead], responses=ERRORS)
def list_webhooks(session: SessionDep, identity: AdminDep):
    """The webhooks the caller manages (an admin limited to towns: those within their towns)."""
    return json_response(webhooks.list_for(session, identity))


@router.get("/webhooks/{webhook_id}", response_model=WebhookRead, responses=ERRORS)
def get_webhook(session: SessionDep, identity: AdminDep, webhook_id: WebhookId):
    return json_response(webhooks.get_for(session, identity, webhook_id))


@router.patch("/webhooks/{webhook_id}", response_model=WebhookRead, responses=ERRORS)
def patch_webhook(request: Request, session: SessionDep, identity: AdminDep, webhook_id: WebhookId,
                  body: WebhookPatch):
    """`{"enabled": false}` pauses a webhook (its pending deliveries wait), `true` resumes it. Audited."""
    return json_response(webhooks.set_enabled(session, identity, audit.actor_of(identity), webhook_id, body.enabled,
                                              now(request), address=client_address(request)))


@router.delete("/webhooks/{webhook_id}", response_model=WebhookRead, responses=ERRORS)
def delete_webhook(request: Request, session: SessionDep, identity: AdminDep, webhook_id: WebhookId):
    """Delete a webhook: nothing more is sent to it and its pending deliveries are cancelled (its
    history is kept). Answers the webhook as deleted. Audited."""
    return json_response(webhooks.delete(session, identity, audit.actor_of(identity), webhook_id, now(request),
                                         address=client_address(request)))


@router.get("/webhooks/{webhook_id}/deliveries", response_model=list[DeliveryRead], responses=ERRORS)
def list_deliveries(session: SessionDep, identity: AdminDep, webhook_id: WebhookId,
                    status: Annotated[Code | None, Query(description="pending, delivered, failed or "
                                                                      "cancelled.")] = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 50, offset: Offset = 0):
    """A webhook's deliveries, newest first, each with every attempt (when, how long, the answer
    or the error, which process)."""
    return json_response(webhooks.deliveries_for(session, identity, webhook_id, status=status, limit=limit,
                                                 offset=offset))
