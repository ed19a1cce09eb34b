"""`bilayer serve`: a local web app that animates a photo from a webcam in real time (docs/serve.md).

* `config.py`  the server's settings (limits, token) and the rule that other hosts need a token;
* `auth.py`    the token check on every request and WebSocket (ASGI middleware);
* `uploads.py` multipart uploads streamed to disk under a size limit, error messages without the
  server's folders;
* `avatars.py` avatars by unguessable id in an LRU cache bounded by count and tensor bytes;
* `live.py`    one camera stream: JPEG in -> keypoints -> render -> composite -> JPEG out, timed per stage;
* `jobs.py`    driving videos rendered by the runtime's `animate`, as background jobs;
* `app.py`     the FastAPI app: the page in `static/`, the HTTP API and the live WebSocket.

Sits above the runtime: imports the runtime, io, checkpoint and errors, never training or losses.
"""
