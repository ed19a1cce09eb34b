"""`bilayer serve`: the local web app (docs/serve.md): upload a photo, drive it live from your
camera or with a video."""
from __future__ import annotations

import argparse

from bilayer.runtime.choices import BACKENDS, PRECISIONS
from bilayer.server.config import MB, ServeConfig, resolve_token

DEFAULTS = ServeConfig(checkpoint=None)  # the limits' defaults


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="web app: animate a photo from your webcam in real time (or with a video)")
    p.add_argument("--checkpoint", metavar="C", help="model checkpoint (default: the shipped demo model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: this machine only; any other needs a token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", metavar="T", help="require this token on every request (generated and printed when "
                                                "--host is not a loopback address and none is given)")
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 where the CPU or GPU has it natively and each avatar's frames pass the quality "
                        "check, fp32 elsewhere (as animate)")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-photo-mb", type=positive, default=DEFAULTS.max_photo_bytes // MB, metavar="N")
    limits.add_argument("--max-video-mb", type=positive, default=DEFAULTS.max_video_bytes // MB, metavar="N")
    limits.add_argument("--max-avatars", type=positive, default=DEFAULTS.max_avatars, metavar="N",
                        help="avatars kept (least recently used out first)")
    limits.add_argument("--max-avatar-memory-mb", type=positive, default=DEFAULTS.max_avatar_bytes // MB, metavar="N",
                        help="tensor memory of the avatars kept")
    limits.add_argument("--max-streams", type=positive, default=DEFAULTS.max_streams, metavar="N",
                        help="camera streams at once")
    limits.add_argument("--max-jobs", type=positive, default=DEFAULTS.max_jobs, metavar="N",
                        help="video jobs kept (finished ones make room)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from bilayer.errors import InputError
    from bilayer.runtime.backends import check_backend
    from bilayer.runtime.precision import plan
    from bilayer.server.app import create_app

    if args.token is not None and not args.token.strip():
        raise InputError("--token must not be empty")
    check_backend(args.backend, args.precision)
    token, generated = resolve_token(args.host, args.token)
    config = ServeConfig(
        checkpoint=args.checkpoint, token=token, backend=args.backend, precision=args.precision,
        max_photo_bytes=args.max_photo_mb * MB, max_video_bytes=args.max_video_mb * MB, max_avatars=args.max_avatars,
        max_avatar_bytes=args.max_avatar_memory_mb * MB, max_streams=args.max_streams, max_jobs=args.max_jobs,
    )
    app = create_app(config)  # reads the checkpoint: a one-line error if it is missing or not one
    host = f"[{args.host}]" if ":" in args.host else args.host
    chosen = plan(args.precision, args.backend, next(app.state.server.model.parameters()).device)
    print(f"bilayer serve: {args.backend}/{chosen.frames} frames ({chosen})", flush=True)
    print(f"bilayer serve: open http://{host}:{args.port}/" + (f"?token={token}" if token else ""), flush=True)
    if generated:
        print(f"bilayer serve: {args.host} is reachable from other machines, so every request needs the token above "
              "(--token sets your own)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", ws_max_size=config.max_frame_bytes)
    return 0
