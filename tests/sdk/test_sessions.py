"""The SDK's session calls against a real stack: create with a config, resume with history, delete."""

from __future__ import annotations

import grpc
import pytest

import sdk


async def test_create_get_resume_and_delete(stack):
    config = sdk.SessionConfig(max_reply_tokens=8, speech_output=False, seed=7, vad=sdk.VoiceActivity(enabled=False))
    async with sdk.AsyncClient(stack.address) as client:
        session = await client.create_session(config)
        assert session.config.max_reply_tokens == 8 and session.config.seed == 7
        assert session.config.vad.enabled is False and session.config.vad.min_silence_ms  # defaults filled in
        async with await client.resume(session.session_id) as conv:
            assert conv.ready.weights == "random:tiny" and conv.ready.session.history == ()
            first = await conv.ask("Remember the number seven.")
        # A new stream on the same session resumes it, history included.
        async with await client.resume(session.session_id) as conv:
            assert [t.turn_id for t in conv.ready.session.history] == [first.turn_id]
            assert conv.ready.session.history[0].outcome == "completed"
            await conv.ask("Which number?")
        stored = await client.get_session(session.session_id)
        assert [t.user_text for t in stored.history] == ["Remember the number seven.", "Which number?"]
        assert stored.running_turn_id == ""

        await client.delete_session(session.session_id)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.get_session(session.session_id)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.resume(session.session_id)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_start_makes_a_session_and_opens_it(stack):
    async with sdk.AsyncClient(stack.address) as client:
        async with await client.start(sdk.SessionConfig(max_reply_tokens=4, speech_output=False)) as conv:
            assert conv.connected and conv.ready.session.session_id == conv.session_id
            assert (await conv.ask("Hi")).outcome == "completed"


def test_importing_the_sdk_does_not_import_torch():
    import subprocess
    import sys

    probe = "import sys, sdk, sdk.sync; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_sync_client_runs_a_turn(stack):
    from sdk.sync import Client

    with Client(stack.address) as client:
        with client.start(sdk.SessionConfig(max_reply_tokens=4, speech_output=False)) as conv:
            result = conv.ask("Hi")
        assert result.outcome == "completed" and result.text == result.completed.reply_text
        assert [t.turn_id for t in client.get_session(conv.session_id).history] == [result.turn_id]
        client.delete_session(conv.session_id)
