"""``anygpt serve``: start the OpenAI-compatible server on a bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, not '{text}'")
    return port


def register(sub: argparse._SubParsersAction) -> None:
    from anygpt.cli import add_memory_flags

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (chat, speech, images)")
    p.add_argument("--model", default=None, help="bundle folder (default: the shipped model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    add_memory_flags(p)
    p.add_argument(
        "--seed", type=int, default=None, help="seed of the engine (requests may set one)"
    )
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--max-request-mb", type=float, default=25.0, help="largest request body")
    p.add_argument("--max-audio-seconds", type=float, default=30.0, help="longest audio input")
    p.add_argument("--max-concurrency", type=int, default=64, help="requests in flight (429 above)")
    p.add_argument(
        "--max-tokens", type=int, default=4096, help="largest max_tokens a request may ask"
    )
    p.add_argument("--max-batch", type=int, default=16, help="sequences generated together")
    p.add_argument("--batch-window-ms", type=float, default=10.0,
                   help="how long to wait for requests to batch with")  # fmt: skip
    p.add_argument("--media-root", default=None, help="folder file:// image URLs may read")
    p.add_argument("--stream-chunk", type=int, default=20, help="speech frames per streamed chunk")
    p.add_argument(
        "--speech-mode",
        default="end-to-end",
        choices=["end-to-end", "cascaded"],
        help="spoken replies: the chat model speaks (end-to-end), or ASR -> text reply -> TTS "
        "sentence by sentence (cascaded); a request's 'speech_mode' field overrides it",
    )
    p.add_argument("--asr-model", help="bundle doing the cascade's ASR (default: --model)")
    p.add_argument("--tts-model", help="bundle doing the cascade's TTS (default: --model)")
    p.add_argument("--log-level", default="warning")
    p.set_defaults(handler=main)


def build(args: argparse.Namespace):
    """(app, model id) from parsed arguments; loads the bundle's text side and LLM up front."""
    import anygpt
    from anygpt.cli import bundle_options
    from anygpt.serve.app import create_app
    from anygpt.serve.backend import make_backend
    from anygpt.serve.protocol import Limits
    from anygpt.serve.worker import BatchingWorker

    if args.backend != "transformers" and bundle_options(args)["quantize"] != "none":
        raise ValueError(f"--quantize applies to the transformers backend, not {args.backend}")
    engine = anygpt.load(args.model, seed=args.seed, **bundle_options(args))
    engine.bundle.llm  # noqa: B018 - fail now, not on the first request, when the LLM is broken
    if args.backend != "transformers":
        engine.backend = make_backend(args.backend, engine.bundle)
    limits = Limits(
        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
        max_audio_seconds=args.max_audio_seconds,
        max_concurrency=args.max_concurrency,
        max_tokens=args.max_tokens,
        batch_window_s=args.batch_window_ms / 1000,
        max_batch=args.max_batch,
        media_root=Path(args.media_root) if args.media_root else None,
    )
    worker = BatchingWorker(
        engine,
        window_s=limits.batch_window_s,
        max_batch=limits.max_batch,
        stream_options={"chunk": args.stream_chunk},
    )
    model_id = engine.bundle.config.name or engine.bundle.root.name
    from anygpt.serve.app import BodyLimit

    mode = getattr(args, "speech_mode", "end-to-end")
    asr, tts = getattr(args, "asr_model", None), getattr(args, "tts_model", None)
    cascade = None
    if mode == "cascaded" or asr or tts:
        from anygpt.runtime.cascade import Cascade

        def stage(path):
            return anygpt.load(path, **bundle_options(args)) if path else None

        cascade = Cascade(engine, asr=stage(asr), tts=stage(tts))
    app = create_app(engine, worker, limits, model_id, mode, cascade)
    return BodyLimit(app, limits.max_request_bytes), model_id


def check_port(host: str, port: int) -> None:
    """Fail before loading the model when the address cannot be bound."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve host '{host}': {exc}") from exc
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as exc:
            raise ValueError(f"cannot listen on {host}:{port} ({exc.strerror})") from exc


def main(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        print("error: anygpt serve needs the serve extra: pip install -e .[serve]", file=sys.stderr)
        return 1
    try:
        check_port(args.host, args.port)
        app, model_id = build(args)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    url = f"http://{args.host}:{args.port}"
    print(f"serving {model_id} at {url}/ (chat page; API {url}/v1; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
