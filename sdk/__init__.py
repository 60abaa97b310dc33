"""The client SDK of the public Assistant API (`vita.assistant.v1`), for platform backends.

    async with sdk.AsyncClient("localhost:50051") as client:
        async with await client.start(sdk.SessionConfig(max_reply_tokens=64)) as conv:
            reply = await conv.ask("Hello!")
            print(reply.text, reply.timings.ttft_ms)

See docs/SDK.md. Importing it needs grpc and the generated stubs, not torch.
"""

from sdk.channel import tls_credentials
from shared.keepalive import Keepalive
from sdk.client import AsyncClient
from sdk.conversation import Conversation
from sdk.errors import ConversationClosed, TurnFailed, TurnInterruptedError
from sdk.events import (
    AudioChunk,
    Event,
    PlaybackFlush,
    Ready,
    Reconnected,
    ReplySuppressed,
    SpeechStarted,
    SpeechStopped,
    StageTime,
    StreamEnded,
    TextDelta,
    Timings,
    TurnCompleted,
    TurnError,
    TurnInterrupted,
    TurnStarted,
)
from sdk.media import AudioFormat, Image, Media, Video
from sdk.reconnect import ReconnectPolicy
from sdk.sessions import HistoryTurn, Session, SessionConfig, VoiceActivity
from sdk.turn import Turn, TurnResult

__all__ = [
    "AsyncClient", "tls_credentials", "Keepalive", "Conversation", "Turn", "TurnResult", "ReconnectPolicy",
    "Session", "SessionConfig", "VoiceActivity", "HistoryTurn",
    "AudioFormat", "Image", "Video", "Media",
    "Event", "Ready", "TurnStarted", "TextDelta", "AudioChunk", "SpeechStarted", "SpeechStopped",
    "ReplySuppressed", "PlaybackFlush", "TurnCompleted", "Timings", "StageTime", "TurnError",
    "TurnInterrupted", "Reconnected", "StreamEnded",
    "TurnFailed", "TurnInterruptedError", "ConversationClosed",
]
