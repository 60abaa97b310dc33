"""`vita capacity`: options and the run. Cheap to import (the CLI builds its parser from it)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", default="10,100,500,1000,2000",
                        help="concurrent sessions; a list runs each in turn on the same stack")
    parser.add_argument("--duration", type=float, default=30.0, help="measured window per point, seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of turns before the window")
    parser.add_argument("--clients", type=int, default=0,
                        help="load processes (0 = one per 500 sessions, so that no client sets the pace)")
    parser.add_argument("--user-speaks-s", type=float, default=3.0,
                        help="seconds a user speaks between the end of the reply's audio and the next turn")
    parser.add_argument("--max-reply-tokens", type=int, default=64, help="the sessions' max_reply_tokens")
    parser.add_argument("--fake", action="append", default=[], metavar="NAME=VALUE",
                        help="a per-stage cost of the fakes, e.g. llm_decode_tokens_per_s=60 "
                             "(apps/fakes/config.py; repeatable)")
    parser.add_argument("--priority", type=int, default=None, metavar="NICE",
                        help="on a shared machine, run the measured processes at this nice value (e.g. -10; "
                             "root, Linux); the others' load still counts, and is recorded with each point")
    parser.add_argument("--json", type=Path, default=None, help="write every point here")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the measured curve (needs several points)")
    parser.add_argument("--log-dir", default=None, help="logs of the fakes and the orchestrator")


def _sessions(spec: str) -> list[int]:
    try:
        values = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--sessions: expected integers like 10,100,500, got {spec!r}") from None
    if not values or min(values) < 1:
        raise SystemExit("--sessions: every value must be >= 1")
    return values


def fake_env(pairs: list[str]) -> dict[str, str]:
    from apps.fakes.config import FakeSettings

    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in FakeSettings.model_fields:
            known = ", ".join(FakeSettings.model_fields)
            raise SystemExit(f"--fake: expected NAME=VALUE with NAME one of {known}; got {pair!r}")
        env[f"VITA_FAKE_{name.upper()}"] = value
    return env


def run(args) -> int:
    from apps.capacity.report import format_point, plot_capacity
    from apps.capacity.run import Workload, measure_point
    from apps.capacity.stack import CapacityStack
    from apps.fakes.config import FakeSettings

    levels = _sessions(args.sessions)
    env = fake_env(args.fake)
    fakes = FakeSettings(**{key.removeprefix("VITA_FAKE_").lower(): value for key, value in env.items()})
    workload = Workload(max_reply_tokens=args.max_reply_tokens, user_speaks_s=args.user_speaks_s,
                        warmup_s=args.warmup, duration_s=args.duration)
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="vita-capacity-"))
    print(f"vita capacity: sessions {','.join(map(str, levels))}, {args.duration:.0f} s windows; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; logs in {log_dir}", flush=True)
    points = []
    with CapacityStack(fake_env=env, log_dir=log_dir) as stack:
        for sessions in levels:
            point = measure_point(stack, sessions, workload, fakes, args.clients, args.priority)
            points.append(point)
            print(format_point(point), flush=True)
    document = {
        "fakes": fakes.model_dump(),
        "workload": asdict(workload),
        "machine": {"cpus": os.cpu_count(), "cpu_model": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "points": points,
    }
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"results written to {args.json}")
    if args.plot:
        if len(points) < 2:
            print("--plot needs several session counts; no plot drawn", file=sys.stderr)
        else:
            plot_capacity(points, args.plot, f"one orchestrator process + Redis, fake model services "
                                             f"({os.cpu_count()} CPUs shared by all processes)")
            print(f"plot written to {args.plot}")
    failed = sum(p["failed_turns"] + p["open_failures"] for p in points)
    if failed or not all(p["turns"] for p in points):
        print(f"{failed} turns or sessions failed", file=sys.stderr)
        return 1
    return 0
