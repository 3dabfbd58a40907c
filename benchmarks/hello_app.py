"""The baseline: a FastAPI app answering a constant, served exactly like geo_service.

`async def`, like the lookup route, so that the comparison is with the fastest FastAPI path.
"""

from fastapi import FastAPI

app = FastAPI()


@app.get("/hello")
async def hello() -> dict:
    return {"ok": True}
