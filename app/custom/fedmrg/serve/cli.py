"""``fedmrg serve --model M``: the viewer of :mod:`fedmrg.serve.app` on http://127.0.0.1:PORT/."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="local web viewer: drop a DICOM / PNG, see the draft report (generic and personalized) and the 14 "
        "observations",
        description="Start a web page on this machine (default http://127.0.0.1:8765/) where a radiologist drops a "
        "DICOM, PNG or JPEG radiograph and sees the image as the model reads it, the draft report with the generic "
        "adapter and with the site's specialized adapter side by side, and the 14 observations with state and "
        "confidence. JSON API: GET /api/model, POST /api/predict (multipart field `file`). Uploads are not stored.",
    )
    p.add_argument("--model", type=Path, required=True, help="an exported model (fedmrg export) or any run output "
                   "`fedmrg generate --model` accepts")  # fmt: skip
    p.add_argument("--site", help="the site whose specialized adapter to use (default: the model's only one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port)")
    p.add_argument("--max-upload-mb", type=float, default=64.0, help="largest accepted upload in MB (default 64)")
    p.add_argument("--device", default="auto", help="torch device (default auto)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from werkzeug.serving import make_server

    from fedmrg.errors import ConfigError
    from fedmrg.inference.predict import Predictor
    from fedmrg.report.export import load_model
    from fedmrg.report.trainer import resolve_device
    from fedmrg.serve.app import create_app

    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"[fedmrg serve] WARNING: binding {args.host}: other machines can reach this viewer; it has no "
              "authentication and no TLS", file=sys.stderr)  # fmt: skip
    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    loaded = load_model(args.model, site=args.site, device=resolve_device(args.device))
    app = create_app(Predictor(loaded), source=str(args.model), max_upload_mb=args.max_upload_mb)
    server = make_server(args.host, args.port, app, threaded=True)
    host = f"[{args.host}]" if ":" in args.host else args.host
    who = f"personalized for {loaded.private_site}" if loaded.private_site else "generic only"
    print(f"FedMRG viewer ({who}) on http://{host}:{server.server_port}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
