"""The baseline of bench/ingest.py: a bare FastAPI app that answers a form POST with 204."""

from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.post("/webhooks/twilio/status")
async def status_callback(request: Request) -> Response:
    await request.body()
    return Response(status_code=204)
