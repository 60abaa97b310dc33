"""Structured JSON logs (VITA_LOG_FORMAT=json): each line one JSON object with the service, the trace
and span of the work it belongs to, and the session and turn ids, wherever the line is logged from."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import time

import grpc
from opentelemetry.sdk.trace import TracerProvider

from shared import log_fields, tracing
from shared.json_logs import JsonFormatter, use_format
from shared.settings import ServiceSettings
from vita.common.v1 import common_pb2
from vita.llm.v1 import llm_pb2


def capture(service: str = "llm") -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(service))
    logger = logging.getLogger(f"test.json_logs.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_is_one_json_object_with_its_fields():
    logger, stream = capture()
    logger.info("loaded %d layers", 4, extra={"replica": "llm-0", "shape": (2, 3)})
    try:
        raise ValueError("bad\nshard")
    except ValueError:
        logger.exception("cannot load")
    first, second = lines(stream)
    assert first["message"] == "loaded 4 layers" and first["level"] == "INFO" and first["service"] == "llm"
    assert first["time"].endswith("+00:00") and first["replica"] == "llm-0" and first["shape"] == "(2, 3)"
    assert "trace_id" not in first and "session_id" not in first  # nothing bound, tracing off
    assert second["level"] == "ERROR" and "ValueError: bad\nshard" in second["exception"]
    assert len(stream.getvalue().splitlines()) == 2  # a multi-line message stays on one line


async def test_session_and_turn_follow_the_work_into_its_tasks():
    logger, stream = capture("orchestrator")

    async def turn(name: str) -> None:
        await asyncio.sleep(0)
        # A task the turn starts carries the turn's fields too.
        await asyncio.create_task(asyncio.to_thread(lambda: None))
        await asyncio.create_task(_log_later(logger, name))

    await asyncio.gather(
        log_fields.bound(turn("a"), session_id="s-a", turn_id="t-a"),
        log_fields.bound(turn("b"), session_id="s-b", turn_id="t-b"),
    )
    logger.info("outside")
    by_message = {line["message"]: line for line in lines(stream)}
    assert (by_message["a"]["session_id"], by_message["a"]["turn_id"]) == ("s-a", "t-a")
    assert (by_message["b"]["session_id"], by_message["b"]["turn_id"]) == ("s-b", "t-b")
    assert "session_id" not in by_message["outside"]


async def _log_later(logger: logging.Logger, message: str) -> None:
    await asyncio.sleep(0.01)
    logger.info(message)


def test_lines_carry_the_current_trace():
    logger, stream = capture()
    provider = TracerProvider()
    tracing.install(provider)
    try:
        with tracing.tracer().start_as_current_span("turn") as span:
            logger.info("inside")
        context = span.get_span_context()
    finally:
        tracing.uninstall()
        provider.shutdown()
    (line,) = lines(stream)
    assert line["trace_id"] == format(context.trace_id, "032x") and line["span_id"] == format(context.span_id, "016x")


async def test_a_model_service_call_is_logged_with_the_callers_session():
    logger, stream = capture()

    async def release(request, context):
        logger.info("released")
        return llm_pb2.ReleaseSessionResponse()

    async def generate(request, context):
        logger.info("generating")
        yield llm_pb2.GenerateResponse()

    handlers = grpc.method_handlers_generic_handler("vita.test.Fake", {
        "Release": grpc.unary_unary_rpc_method_handler(
            release, llm_pb2.ReleaseSessionRequest.FromString, llm_pb2.ReleaseSessionResponse.SerializeToString),
        "Generate": grpc.unary_stream_rpc_method_handler(
            generate, llm_pb2.GenerateRequest.FromString, llm_pb2.GenerateResponse.SerializeToString),
    })
    server = grpc.aio.server(interceptors=[log_fields.CallFieldsInterceptor()])
    server.add_generic_rpc_handlers((handlers,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            ctx = common_pb2.CallContext(session_id="sess-1", turn_id="turn-1")
            await channel.unary_unary(
                "/vita.test.Fake/Release", llm_pb2.ReleaseSessionRequest.SerializeToString,
                llm_pb2.ReleaseSessionResponse.FromString,
            )(llm_pb2.ReleaseSessionRequest(ctx=ctx))
            call = channel.unary_stream(
                "/vita.test.Fake/Generate", llm_pb2.GenerateRequest.SerializeToString,
                llm_pb2.GenerateResponse.FromString,
            )(llm_pb2.GenerateRequest(ctx=common_pb2.CallContext(session_id="sess-2", turn_id="turn-2")))
            assert len([response async for response in call]) == 1
    finally:
        await server.stop(None)
    by_message = {line["message"]: line for line in lines(stream)}
    assert (by_message["released"]["session_id"], by_message["released"]["turn_id"]) == ("sess-1", "turn-1")
    assert (by_message["generating"]["session_id"], by_message["generating"]["turn_id"]) == ("sess-2", "turn-2")


def test_the_format_is_opt_in():
    assert ServiceSettings().log_format == "text"
    root = logging.getLogger()
    saved = [handler.formatter for handler in root.handlers]
    try:
        use_format("text", "llm")
        assert [handler.formatter for handler in root.handlers] == saved
    finally:
        for handler, formatter in zip(root.handlers, saved):
            handler.setFormatter(formatter)


def test_a_service_started_with_vita_log_format_json_logs_json():
    env = {**os.environ, "VITA_LOG_FORMAT": "json", "VITA_PORT": "0", "VITA_METRICS_PORT": "-1", "VITA_PRESET": "tiny"}
    process = subprocess.Popen(
        [sys.executable, "-m", "services.vision"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        line = ""
        # Up to the first log line (a library may print a plain warning before logging is set up).
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if line.startswith("{") or (not line and process.poll() is not None):
                break
        record = json.loads(line)
        assert record["service"] == "vision" and record["level"] in ("INFO", "WARNING")
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stderr.close()
