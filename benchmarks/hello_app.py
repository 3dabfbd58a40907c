"""The baseline: a FastAPI app answering a constant, served exactly like geo_service.

`async def`, like the lookup route, so that the comparison is with the fastest FastAPI path.
"""

from fastapi import FastAPI, Request

app = FastAPI()


@app.get("/hello")
async def hello() -> dict:
    return {"ok": True}


@app.post("/hello")
async def hello_post(request: Request) -> dict:
    """The baseline of a report: a JSON body read and parsed, a constant answered."""
    await request.json()
    return {"ok": True}
