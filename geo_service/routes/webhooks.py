"""Webhooks (PLACEHOLDER, being written): an admin registers, lists, disables and deletes them."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["webhooks"])
