"""A chat completions request body, checked and turned into one vita turn.

One request is one turn on a fresh vita session. The turn is the last message, which must be the user's:
- typed: its text parts (joined) and images; earlier messages are folded into the prompt as
  "Role: text" lines ahead of it, so the model sees the conversation the client holds;
- spoken: its `input_audio` part (WAV, MP3 or FLAC), decoded here, with its images. A spoken turn
  carries no text, so a last message with both audio and text is refused, and earlier messages are not
  sent (the orchestrator has no way to put them before speech).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from apps.gateway.audio import b64decode, decode_audio_file
from apps.gateway.errors import GatewayError
from apps.gateway.media import image_bytes
from apps.gateway.settings import GatewaySettings

AUDIO_OUT_FORMATS = ("pcm16", "wav")
AUDIO_IN_FORMATS = ("wav", "mp3", "flac")
MAX_IMAGE_BYTES = 16 * 1024 * 1024
ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


@dataclass
class CompletionRequest:
    model: str
    stream: bool
    include_usage: bool
    audio_out: bool
    audio_format: str  # "pcm16" or "wav"
    text: str = ""
    images: list[bytes] = field(default_factory=list)
    audio_pcm16: bytes | None = None  # mono PCM16 at SPEECH_INPUT_RATE_HZ: a spoken turn
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None


async def parse_request(body: object, settings: GatewaySettings) -> CompletionRequest:
    if not isinstance(body, dict):
        raise GatewayError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise GatewayError("messages must be a non-empty list", param="messages")
    for name in ("tools", "functions"):
        if body.get(name):
            raise GatewayError(f"{name} (function calling) are not supported", code="unsupported_parameter", param=name)
    if body.get("n", 1) != 1:
        raise GatewayError("n must be 1", code="unsupported_parameter", param="n")
    stream = _flag(body, "stream")
    modalities = body.get("modalities") or ["text"]
    if not isinstance(modalities, list) or not set(modalities) <= {"text", "audio"}:
        raise GatewayError('modalities must be ["text"] or ["text", "audio"]', param="modalities")
    audio_out = "audio" in modalities
    audio_format = _audio_format(body.get("audio"), audio_out, stream)
    options = body.get("stream_options") or {}
    request = CompletionRequest(
        model=body.get("model") if isinstance(body.get("model"), str) else settings.model_name,
        stream=stream, include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
        audio_out=audio_out, audio_format=audio_format,
        max_tokens=_positive_int(body.get("max_completion_tokens", body.get("max_tokens")), "max_completion_tokens"),
        temperature=_temperature(body.get("temperature")),
        seed=_seed(body.get("seed")),
    )
    await _read_messages(messages, request, settings)
    return request


async def _read_messages(messages: list, request: CompletionRequest, settings: GatewaySettings) -> None:
    last = len(messages) - 1
    history: list[str] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise GatewayError(f"{param} must be an object", param=param)
        role = message.get("role")
        if role not in ROLE_NAMES:
            raise GatewayError(f"{param}.role must be system, developer, user or assistant (tool messages are not "
                               "supported)", param=f"{param}.role")
        if index == last and role != "user":
            raise GatewayError("the last message must be the user's", param=f"{param}.role")
        texts, images, audio = await _read_content(message, param, settings, current=index == last)
        if index < last:
            if texts:
                history.append(f"{ROLE_NAMES[role]}: {' '.join(texts)}")
            continue
        request.images = images
        if audio is not None:
            if texts:
                raise GatewayError(f"{param}: a spoken turn carries no text; send the input_audio part without "
                                   "text parts", code="unsupported_content", param=f"{param}.content")
            request.audio_pcm16 = audio
        else:
            text = "\n".join(texts)
            request.text = "\n".join([*history, f"User: {text}"]) if history else text
    if request.audio_pcm16 is None and not request.text and not request.images:
        raise GatewayError("the last message holds no content", param=f"messages[{last}].content")


async def _read_content(message: dict, param: str, settings: GatewaySettings, current: bool):
    content = message.get("content")
    if content is None:
        return [], [], None
    if isinstance(content, str):
        return [content], [], None
    if not isinstance(content, list):
        raise GatewayError(f"{param}.content must be a string or a list of parts", param=f"{param}.content")
    texts, images, audio = [], [], None
    for index, part in enumerate(content):
        where = f"{param}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise GatewayError(f"{where}.text must be a string", param=f"{where}.text")
            texts.append(part["text"])
        elif kind == "image_url":
            if not current:
                continue  # the images of earlier messages cannot be placed in the prompt: left out
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            images.append(await image_bytes(url, f"{where}.image_url.url", settings, MAX_IMAGE_BYTES))
        elif kind == "input_audio":
            if not current:
                continue
            if audio is not None:
                raise GatewayError("a message may hold one input_audio part", param=where)
            spec = part.get("input_audio")
            if not isinstance(spec, dict):
                raise GatewayError(f"{where}.input_audio must be an object with data and format", param=where)
            audio_format = spec.get("format")
            if audio_format not in AUDIO_IN_FORMATS:
                raise GatewayError(f"{where}.input_audio.format must be one of {', '.join(AUDIO_IN_FORMATS)}",
                                   param=f"{where}.input_audio.format")
            data = b64decode(spec.get("data"), f"{where}.input_audio.data")
            audio = decode_audio_file(data, audio_format, f"{where}.input_audio.data")
        else:
            name = kind if isinstance(kind, str) else type(part).__name__
            raise GatewayError(f"{where}: content part type {name[:40]!r} is not supported (text, image_url and "
                               "input_audio are)", code="unsupported_content", param=where)
    return texts, images, audio


def _audio_format(spec, audio_out: bool, stream: bool) -> str:
    if not audio_out:
        return "pcm16"
    if spec is None:
        return "pcm16" if stream else "wav"
    if not isinstance(spec, dict):
        raise GatewayError("audio must be an object with format (and voice, which is ignored)", param="audio")
    audio_format = spec.get("format", "pcm16" if stream else "wav")
    if audio_format not in AUDIO_OUT_FORMATS:
        raise GatewayError(f"audio.format must be one of {', '.join(AUDIO_OUT_FORMATS)}", code="unsupported_value",
                           param="audio.format")
    if stream and audio_format != "pcm16":
        raise GatewayError("streamed audio is pcm16 only", code="unsupported_value", param="audio.format")
    return audio_format


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool) and value is not None:
        raise GatewayError(f"{name} must be a boolean", param=name)
    return bool(value)


def _positive_int(value, param: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GatewayError(f"{param} must be a positive integer", param=param)
    return value


def _temperature(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 2:
        raise GatewayError("temperature must be a number in [0, 2]", param="temperature")
    return float(value)


def _seed(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise GatewayError("seed must be a non-negative integer", param="seed")
    return value
