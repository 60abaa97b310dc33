"""A fake model service as a `ServiceApp` for shared.grpc_server.serve: the real service's protobuf
service, RPC metrics under the real service's name, health that turns SERVING once it is built."""

from __future__ import annotations

import asyncio

import grpc

from apps.fakes.audio import FakeAudio
from apps.fakes.config import FakeSettings
from apps.fakes.llm import FakeLLM
from apps.fakes.reply import ReplyTokens
from apps.fakes.speech import FakeSpeech
from apps.fakes.vision import FakeVision
from shared.metrics import RpcMetrics
from shared.settings import ServiceSettings
from shared.tokenizer import QwenTokenizer
from vita.audio.v1 import audio_pb2, audio_pb2_grpc
from vita.llm.v1 import llm_pb2, llm_pb2_grpc
from vita.speech.v1 import speech_pb2, speech_pb2_grpc
from vita.vision.v1 import vision_pb2, vision_pb2_grpc

# name → (servicer class, add-to-server function, service descriptor)
FAKES = {
    "llm": (FakeLLM, llm_pb2_grpc.add_LLMServicer_to_server, llm_pb2.DESCRIPTOR.services_by_name["LLM"]),
    "speech": (FakeSpeech, speech_pb2_grpc.add_SpeechServicer_to_server,
               speech_pb2.DESCRIPTOR.services_by_name["Speech"]),
    "audio": (FakeAudio, audio_pb2_grpc.add_AudioServicer_to_server, audio_pb2.DESCRIPTOR.services_by_name["Audio"]),
    "vision": (FakeVision, vision_pb2_grpc.add_VisionServicer_to_server,
               vision_pb2.DESCRIPTOR.services_by_name["Vision"]),
}


class FakeApp:
    def __init__(self, name: str, common: ServiceSettings, settings: FakeSettings):
        servicer_class, self._add, self._service = FAKES[name]
        self.name = name
        self.metrics = RpcMetrics.declare(name)
        self._servicer = servicer_class(settings, common.preset)
        self._checkpoint = common.checkpoint

    def register(self, server: grpc.aio.Server) -> list[str]:
        self._add(self._servicer, server)
        return [self._service.full_name]

    async def load(self) -> None:
        if isinstance(self._servicer, FakeLLM):
            # The reply is real tokens of the tokenizer the orchestrator uses too (loading it takes ~1 s).
            tokenizer = await asyncio.to_thread(QwenTokenizer.from_dir, self._checkpoint)
            self._servicer.attach(ReplyTokens.build(tokenizer))
        else:
            self._servicer.open()

    async def close(self) -> None:
        pass
