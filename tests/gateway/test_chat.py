"""Chat completions with audio through the official OpenAI client: non-streaming (WAV) and streaming
(PCM16 deltas), with an image part and with a spoken (input_audio) part; and the model list."""

from __future__ import annotations

import base64
import io

import soundfile

from tests.gateway.conftest import REPLY_TOKENS, png_data_url, spoken_wav

AUDIO_OUT = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}


async def test_models_lists_the_served_model(openai_client):
    models = await openai_client.models.list()
    assert [model.id for model in models.data] == ["vita-1.5"]


async def test_a_completion_with_audio_out_holds_a_wav_and_its_transcript(openai_client):
    completion = await openai_client.chat.completions.create(
        model="vita-1.5", messages=[{"role": "user", "content": "Hello! Who are you?"}], max_tokens=REPLY_TOKENS,
        seed=3, **AUDIO_OUT)
    audio = completion.choices[0].message.audio
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(audio.data)), dtype="int16")
    assert rate == 24_000 and len(samples) > 0
    assert audio.transcript and audio.id and audio.expires_at > completion.created
    assert completion.choices[0].finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.completion_tokens_details.audio_tokens > 0 and usage.prompt_tokens > 0


async def test_a_streamed_completion_with_an_image_sends_audio_and_transcript_deltas(openai_client):
    stream = await openai_client.chat.completions.create(
        model="vita-1.5", stream=True, stream_options={"include_usage": True}, max_tokens=REPLY_TOKENS,
        modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"},
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
                                               {"type": "image_url", "image_url": {"url": png_data_url()}}]}])
    pcm, transcript, finish, usage = b"", "", None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            audio = getattr(choice.delta, "audio", None)
            if audio is not None:
                pcm += base64.b64decode(getattr(audio, "data", None) or "")
                transcript += getattr(audio, "transcript", None) or ""
            finish = choice.finish_reason or finish
    assert len(pcm) > 0 and len(pcm) % 2 == 0
    assert transcript and finish in ("stop", "length")
    assert usage is not None and usage.total_tokens > 0


async def test_a_spoken_question_gets_a_spoken_answer(openai_client):
    wav = base64.b64encode(spoken_wav("What is the capital of France?")).decode()
    completion = await openai_client.chat.completions.create(
        model="vita-1.5", max_tokens=REPLY_TOKENS, **AUDIO_OUT,
        messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
                                               {"type": "image_url", "image_url": {"url": png_data_url()}}]}])
    message = completion.choices[0].message
    # A reply the model judged not addressed to it is empty but still well-formed.
    assert message.audio is not None and message.audio.id
    assert completion.usage.prompt_tokens > 0


async def test_a_text_only_completion_streams_content(openai_client):
    stream = await openai_client.chat.completions.create(
        model="vita-1.5", stream=True, max_tokens=REPLY_TOKENS, messages=[{"role": "user", "content": "Hi"}])
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert text
