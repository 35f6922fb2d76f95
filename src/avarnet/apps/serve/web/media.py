"""An event's clip and snapshot, from the storage folder. Clips are served with HTTP Range
support (Starlette's FileResponse), so the browser can seek in them."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

KINDS = {  # route file name -> (event field, folder, media type)
    "clip.mp4": ("clip", "clips", "video/mp4"),
    "snapshot.jpg": ("snapshot", "snapshots", "image/jpeg"),
}


def routes(server) -> list[Route]:
    root: Path = server.config.storage.path

    def media_file(field: str, folder: str, media_type: str):
        async def serve(request: Request) -> Response:
            e = server.store.get(request.path_params["event_id"])
            name = e[field] if e else None
            path = root / folder / Path(name).name if name else None
            if path is None or not path.is_file():
                return Response("not found", status_code=404)
            return FileResponse(path, media_type=media_type)

        return serve

    return [
        Route(f"/events/{{event_id}}/{name}", media_file(*kind)) for name, kind in KINDS.items()
    ]
