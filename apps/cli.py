"""The `vita` command."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

SERVICES = ("llm", "speech", "audio", "vision", "orchestrator", "gateway")


def cmd_serve(args) -> int:
    overrides = {}
    if args.port is not None:
        overrides["port"] = args.port
    if args.preset is not None:
        overrides["preset"] = args.preset
    if args.checkpoint is not None:
        overrides["checkpoint"] = args.checkpoint
    if args.service == "gateway":
        for model_option in ("preset", "checkpoint"):  # the gateway holds no model
            overrides.pop(model_option, None)
        if args.orchestrator:
            overrides["orchestrator"] = args.orchestrator
        importlib.import_module("apps.gateway.__main__").main(**overrides)
        return 0
    importlib.import_module(f"services.{args.service}.__main__").main(**overrides)
    return 0


def _stack_config(args, log_dir: Path | None, data_dir: Path | None = None):
    from apps.launcher import StackConfig

    config = StackConfig(
        preset=args.preset,
        public_host=args.host,
        public_port=args.port,
        checkpoint=args.checkpoint,
        log_dir=log_dir,
        data_dir=data_dir,
    )
    if hasattr(args, "gateway_port"):  # `vita up`
        port = args.gateway_port if args.gateway_port is not None else 0 if args.port == 0 else 8080
        config.gateway, config.gateway_port = port >= 0, max(port, 0)
    if getattr(args, "services", None):
        config.services = args.services
    if getattr(args, "replicas", None):
        config.replicas = args.replicas
    return config


def _model_services(value: str) -> tuple[str, ...]:
    from apps.launcher import MODEL_SERVICES

    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in MODEL_SERVICES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(MODEL_SERVICES)}")
    missing = [name for name in ("llm", "speech") if name not in names]
    if missing:
        raise argparse.ArgumentTypeError(f"every stack needs {', '.join(missing)}")
    return names


def _replica_counts(value: str) -> dict[str, int]:
    """`llm=2,speech=2`: processes per model service (the orchestrator routes over them)."""
    from apps.launcher import MODEL_SERVICES

    counts = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, _, count = item.partition("=")
        name = name.strip()
        if name not in MODEL_SERVICES:
            raise argparse.ArgumentTypeError(f"unknown service {name!r}; choose from {', '.join(MODEL_SERVICES)}")
        try:
            counts[name] = int(count)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: write SERVICE=COUNT, e.g. llm=2") from None
        if not 1 <= counts[name] <= 16:
            raise argparse.ArgumentTypeError(f"{item!r}: a count is between 1 and 16")
    return counts


def served_weights(args, environ=os.environ) -> str:
    """What the stack serves, as the services will resolve it: --checkpoint, else VITA_CHECKPOINT (which
    every service reads), else the preset's seeded random weights."""
    checkpoint = args.checkpoint or environ.get("VITA_CHECKPOINT")
    if checkpoint:
        return f"serving the checkpoint {checkpoint} ({args.preset} preset)"
    return f"serving seeded RANDOM weights of the {args.preset} preset: replies are noise, not VITA-1.5"


def sessions_line(stack, data_dir: Path | None) -> str:
    if stack.redis is None:
        return f"  redis         {stack.redis_url}  (REDIS_URL: sessions live there)"
    return f"  redis         {stack.redis_url}  (sessions kept in {data_dir})"


def cmd_up(args) -> int:
    from apps.launcher import Stack

    stop = threading.Event()
    starting = True

    def on_signal(*_) -> None:
        stop.set()
        if starting:  # abandon the start: Stack.start stops what it started, in order
            raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    data_dir = Path(args.data_dir).expanduser()
    stack = Stack(_stack_config(args, Path(args.log_dir) if args.log_dir else None, data_dir))
    print(f"starting the {args.preset} stack (Redis, {', '.join(stack.config.services)}, orchestrator)...", flush=True)
    try:
        stack.start()
    except RuntimeError as error:  # a service that exits at start-up, a busy data directory
        print(f"vita up: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped before the stack was up.", flush=True)
        return 130
    starting = False
    try:
        print(served_weights(args))
        for name, service in stack.services.items():
            print(f"  {name:<13} {service.address}  metrics :{service.metrics_port}")
        print(sessions_line(stack, data_dir))
        print(f"Assistant API on {stack.address}  (metrics :{stack.orchestrator.metrics_port})", flush=True)
        if stack.gateway is not None:
            print(f"OpenAI-compatible API on http://{stack.gateway.address}/v1  (Realtime: "
                  f"ws://{stack.gateway.address}/v1/realtime; page: http://{stack.gateway.address}/)", flush=True)
        print("Ctrl-C stops everything.", flush=True)
        stop.wait()
        print("stopping: draining running turns, then the model services, then Redis...", flush=True)
    finally:
        stack.stop()
    print("stopped.", flush=True)
    return 0


def cmd_chat(args) -> int:
    from apps.chat import chat_main

    return chat_main(args)


def cmd_demo(args) -> int:
    """Stack up, one text turn, reply WAV written, timings printed, stack stopped."""
    import asyncio

    from apps.chat import print_report, run_turn
    from apps.launcher import Stack

    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="vita-demo-"))
    print(f"starting the {args.preset} stack (logs in {log_dir})...", flush=True)
    with Stack(_stack_config(args, log_dir)) as stack:
        print(f"Assistant API on {stack.address}; sending: {args.text!r}", flush=True)
        print("reply: ", end="", flush=True)
        report = asyncio.run(
            run_turn(stack.address, args.text, seed=args.seed, max_reply_tokens=args.max_reply_tokens,
                          echo=lambda delta: print(delta, end="", flush=True))
        )
        print()
        if report.errors:
            for error in report.errors:
                print(f"error (code {error.code}): {error.message}", file=sys.stderr)
            return 1
        print_report(report, Path(args.out))
    print("stack stopped.")
    return 0


def cmd_bench(args) -> int:
    from apps.bench.command import run

    return run(args)


def cmd_gpu_check(args) -> int:
    from apps.bench.gpu_check import run

    return run(args)


def cmd_capacity(args) -> int:
    from apps.capacity.command import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vita", description="vita-serve: real-time VITA-1.5 serving")
    sub = parser.add_subparsers(dest="command", required=True)

    def stack_args(p):
        p.add_argument("--preset", default="tiny", choices=("tiny", "full"))
        p.add_argument("--checkpoint", type=Path, default=None, help="official VITA-1.5 checkpoint directory")
        p.add_argument("--host", default="127.0.0.1", help="address the Assistant API binds")
        p.add_argument("--port", type=int, default=50051, help="Assistant API port (0 = any free port)")
        p.add_argument("--log-dir", default=None, help="write each process's log here")

    from apps.redis_server import default_data_dir

    up = sub.add_parser("up", help="run the whole stack on this machine")
    stack_args(up)
    up.add_argument("--data-dir", default=str(default_data_dir()),
                    help="where the local Redis keeps sessions and history across restarts "
                         "(default: %(default)s; unused when REDIS_URL is set)")
    up.add_argument("--services", type=_model_services, default=None,
                    help="the model services to run, comma-separated (default: llm,speech,audio,vision; "
                         "without audio or vision the API refuses spoken input or images)")
    up.add_argument("--replicas", type=_replica_counts, default=None,
                    help="processes per model service, e.g. llm=2,speech=2 (default 1 each); the orchestrator "
                         "routes sessions to LLM replicas by affinity and other calls to the less busy of two")
    up.add_argument("--gateway-port", type=int, default=None,
                    help="port of the OpenAI-compatible gateway (default 8080, any free port with --port 0; "
                         "0 = any free port, -1 = no gateway)")
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="run one service (what a container runs)")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--preset", default=None, choices=("tiny", "full"))
    serve.add_argument("--checkpoint", type=Path, default=None)
    serve.add_argument("--orchestrator", default=None,
                       help="gateway only: the orchestrator's address (default: VITA_GATEWAY_ORCHESTRATOR)")
    serve.set_defaults(func=cmd_serve)

    chat = sub.add_parser("chat", help="send one turn to a running stack")
    chat.add_argument("--address", default="127.0.0.1:50051")
    chat.add_argument("--text", default="Hello! Who are you?")
    chat.add_argument("--image", action="append", default=[], help="an image to ask about (repeatable)")
    chat.add_argument("--video", default=None, help="a video to ask about")
    chat.add_argument("--audio", default=None, help="ask by voice: a WAV, FLAC or OGG file streamed at real-time pace")
    chat.add_argument("--fast", action="store_true", help="stream --audio as fast as possible instead of real time")
    chat.add_argument("--max-tiles", type=int, default=0, help="image tiles (0 = the session default)")
    chat.add_argument("--session", default=None, help="continue this session instead of creating one")
    chat.add_argument("--api-key", default=None)
    chat.add_argument("--seed", type=int, default=None)
    chat.add_argument("--max-reply-tokens", type=int, default=None)
    chat.add_argument("--out", default="reply.wav", help="where the reply speech is written")
    chat.set_defaults(func=cmd_chat)

    demo = sub.add_parser("demo", help="stack up, one turn, reply WAV, timings, stack down")
    stack_args(demo)
    demo.set_defaults(port=0)
    demo.add_argument("--text", default="Hello! Who are you? Tell me about yourself.")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--max-reply-tokens", type=int, default=64)
    demo.add_argument("--out", default="reply.wav")
    demo.set_defaults(func=cmd_demo)

    from apps.bench.command import add_arguments as bench_arguments

    bench = sub.add_parser("bench", help="concurrent sessions against the API (or --inprocess): latency percentiles")
    bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)

    from apps.bench.gpu_check import add_arguments as gpu_check_arguments

    gpu_check = sub.add_parser("gpu-check", help="full preset on CUDA: TTFT, TTFA, RTF, LLM tok/s at 1, 8, 32 sessions")
    gpu_check_arguments(gpu_check)
    gpu_check.set_defaults(func=cmd_gpu_check)

    from apps.capacity.command import add_arguments as capacity_arguments

    capacity = sub.add_parser("capacity", help="sessions one orchestrator + Redis sustain, against fake model services")
    capacity_arguments(capacity)
    capacity.set_defaults(func=cmd_capacity)

    from apps.checkpoint.cli import add_parser as add_checkpoint_parser

    add_checkpoint_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
