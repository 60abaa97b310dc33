"""gRPC servicer of the audio service: PCM streams in → VAD events and utterance embeddings out
(services.audio.rpc.streaming); whole clips → embeddings (services.audio.rpc.clips). Protobuf ↔ the stream and
engine only; no model code here.

Status codes: bad input INVALID_ARGUMENT; too many open streams RESOURCE_EXHAUSTED
(retry later or elsewhere); engine stopped or models still loading UNAVAILABLE; anything else INTERNAL
with a generic message, details in the log only.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

from services.audio import metrics
from services.audio.rpc.clips import EncodeClipHandler
from services.audio.config import AudioSettings
from services.audio.encoder import LLM_TOKEN_RATE_HZ
from services.audio.engine import AudioEngine
from services.audio.rpc.messages import INTERNAL_MESSAGE, UNAVAILABLE_MESSAGE
from services.audio.rpc.streaming import StreamAudioHandler
from services.audio.weights import load_audio_encoder
from shared.grpc_server import EngineApp, LoadingGate
from shared.presets import get_preset
from shared.settings import ServiceSettings, resolve_device, resolve_dtype
from shared.weights_info import weights_info
from vita.audio.v1 import audio_pb2, audio_pb2_grpc
from vita.common.v1 import common_pb2

__all__ = ["INTERNAL_MESSAGE", "UNAVAILABLE_MESSAGE", "AudioApp", "AudioServicer", "build_engine"]


class AudioServicer(audio_pb2_grpc.AudioServicer, LoadingGate):
    """Registered before the models load (health says NOT_SERVING meanwhile); `attach` opens it."""

    def attach(self, engine: AudioEngine, features: ThreadPoolExecutor, settings: AudioSettings,
               hidden_size: int, weights: common_pb2.WeightsInfo) -> None:
        self._settings = settings
        self._hidden_size = hidden_size
        self._weights = weights
        self._streaming = StreamAudioHandler(engine, features, settings)
        self._clips = EncodeClipHandler(engine, features, settings)
        self.open()

    @property
    def open_streams(self) -> int:
        return self._streaming.open_streams if self._loaded else 0

    async def Describe(self, request, context):
        await self.require_loaded(context)
        return audio_pb2.DescribeResponse(
            hidden_size=self._hidden_size, tokens_per_second=LLM_TOKEN_RATE_HZ, weights=self._weights
        )

    async def StreamAudio(self, request_iterator, context):
        await self.require_loaded(context)
        # aclosing: when gRPC closes this generator early, the handler's cleanup runs now, not at GC.
        async with contextlib.aclosing(self._streaming.serve(request_iterator, context)) as messages:
            async for message in messages:
                yield message

    async def EncodeClip(self, request, context):
        await self.require_loaded(context)
        return await self._clips.encode(request, context)


def build_engine(common: ServiceSettings, settings: AudioSettings) -> tuple[AudioEngine, dict]:
    """Loads the encoder and the Silero VAD and builds the engine (also used by in-process benchmarks)."""
    preset = get_preset(common.preset)
    device = resolve_device(common.device)
    dtype = resolve_dtype(common.dtype, device)
    encoder = load_audio_encoder(
        preset.audio, seed=preset.init_seed, device=device, dtype=dtype, checkpoint_dir=common.checkpoint
    )
    engine = AudioEngine(
        encoder,
        device=device,
        max_batch_size=settings.max_batch_size,
        intra_op_threads=common.torch_threads or None,
    )
    facts = dict(
        hidden_size=encoder.dims.llm_hidden,  # a checkpoint's own width, else the preset's
        weights=weights_info(common.preset, common.checkpoint, dtype, device),
    )
    return engine, facts


class AudioApp(EngineApp):
    name = "audio"
    metrics = metrics.RPC
    service = audio_pb2.DESCRIPTOR.services_by_name["Audio"]
    add_servicer = staticmethod(audio_pb2_grpc.add_AudioServicer_to_server)

    def __init__(self, common: ServiceSettings, settings: AudioSettings):
        super().__init__(common, settings, AudioServicer())

    def start(self) -> None:
        engine, facts = build_engine(self.common, self.settings)
        engine.start()
        self.engine = engine
        features = self.pool(self.settings.feature_threads, "audio-features")
        self.servicer.attach(engine, features, self.settings, **facts)
