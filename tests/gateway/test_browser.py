"""The browser page (apps/gateway/static) in real headless Chromium, against a real stack and gateway.

Chromium's fake devices stand in for the user: the microphone plays an espeak-ng wav (looped) and the camera
is Chromium's test pattern. The page must connect, stream the speech until the server's VAD makes it a
turn, play the reply's audio (the page counts the samples Web Audio really played) and show the
transcript; over plain HTTP on loopback and over HTTPS with a self-signed certificate, where the page
must pick wss:// itself. The reply is then cut short, by barge-in (the looped phrase comes round again
while the reply plays) over HTTP and by the Stop button over HTTPS: its audio must stop at once and none
of it may play later. Each run saves screenshots and prints where.

Playwright only drives the browser: it launches the system's Chromium (Debian package `chromium`, which
scripts/test.sh installs) and never downloads one of its own.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

CHROMIUM = "/usr/bin/chromium"
PHRASE = "Hello, what do you see?"
# Silence before the phrase: the page connects and configures the session before speech begins.
LEAD_SILENCE_S = 1.5
# Silence after it, before Chromium loops the file: room for the reply to play before the user speaks again.
TAIL_SILENCE_S = 12.0
# Generous bounds for a loaded 2-core machine; a healthy run takes a few seconds per step.
CONNECT_TIMEOUT_MS = 20_000
TURN_TIMEOUT_MS = 40_000
# The reply audio the page must have played, in samples at 24 kHz.
PLAYED_SAMPLES = 24_000 // 4

CHROMIUM_FLAGS = [
    "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    # Without these Chromium reaches for Google's services at start and, on a closed network, stalls.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGE_FLAGS = [
    *CHROMIUM_FLAGS,
    # Grant camera and microphone without a prompt, and use fake devices.
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    # The test's HTTPS gateway has a self-signed certificate.
    "--ignore-certificate-errors",
]


def _require(ok: bool, reason: str) -> None:
    """CI installs every tool this test needs, so there a missing one is a failure, elsewhere a skip."""
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def playwright_api():
    _require(Path(CHROMIUM).exists(), f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, "the playwright package is missing (pip install -e '.[dev]')")
    return sync_playwright


@pytest.fixture(scope="module")
def microphone_wav(tmp_path_factory, playwright_api) -> Path:
    """The phrase between silences, as 16-bit PCM at espeak-ng's own rate (the page resamples)."""
    _require(shutil.which("espeak-ng") is not None, "espeak-ng is missing (apt-get install espeak-ng)")
    wav = subprocess.run(["espeak-ng", "--stdout", "-s", "160", PHRASE], capture_output=True, check=True).stdout
    speech, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    lead = np.zeros(int(LEAD_SILENCE_S * rate), dtype=np.int16)
    tail = np.zeros(int(TAIL_SILENCE_S * rate), dtype=np.int16)
    path = tmp_path_factory.mktemp("browser") / "microphone.wav"
    soundfile.write(path, np.concatenate([lead, speech, tail]), rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory, playwright_api) -> tuple[Path, Path]:
    """A self-signed certificate for loopback, as someone trying the page behind HTTPS would make one."""
    _require(shutil.which("openssl") is not None, "the openssl CLI (for the HTTPS certificate) is missing")
    root = tmp_path_factory.mktemp("https")
    cert, key = root / "gateway.crt", root / "gateway.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


# Runs the page's capture worklet in an OfflineAudioContext at `rate` on a tone of `toneHz` (amplitude 0.5)
# for `seconds`, and returns the PCM16 samples it posted.
CAPTURE_TONE = """async ([source, rate, toneHz, seconds]) => {
  const context = new OfflineAudioContext(1, Math.round(rate * seconds), rate);
  await context.audioWorklet.addModule(URL.createObjectURL(new Blob([source], {type: "text/javascript"})));
  const node = new AudioWorkletNode(context, "pcm16-capture", {numberOfOutputs: 0, processorOptions: {chunkMs: 40}});
  const chunks = [];
  node.port.onmessage = ({data}) => chunks.push(Array.from(data));
  const tone = new OscillatorNode(context, {frequency: toneHz});
  tone.connect(new GainNode(context, {gain: 0.5})).connect(node);
  tone.start();
  await context.startRendering();
  await new Promise((resolve) => setTimeout(resolve, 300));  // the last chunks are still being posted
  return chunks.flat();
}"""
CAPTURE_SOURCE = Path(__file__).resolve().parents[2] / "apps" / "gateway" / "static" / "pcm16-capture.js"


def test_capture_worklet_resamples_to_24khz(playwright_api):
    """The microphone path alone: at the rates browsers run audio at, a tone in the speech band comes out
    at 24 kHz at its frequency and level, and a tone above 12 kHz is filtered out instead of folding into
    the speech band."""
    source = CAPTURE_SOURCE.read_text()
    seconds, tone_rms = 0.5, 0.5 / np.sqrt(2)
    with playwright_api() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            # A page on localhost, a secure context (AudioWorklet needs one), answered without a server.
            page.route("http://localhost/", lambda route: route.fulfill(body="<!doctype html>", content_type="text/html"))
            page.goto("http://localhost/")
            for rate, tone_hz in ((48000, 1000), (44100, 1000), (16000, 1000), (48000, 18000), (44100, 18000)):
                samples = np.array(page.evaluate(CAPTURE_TONE, [source, rate, tone_hz, seconds])) / 32768.0
                case = f"{tone_hz} Hz at {rate} Hz"
                # Whole 40 ms chunks: the last, partial one stays in the worklet.
                assert abs(len(samples) - 24000 * seconds) <= 960, (case, len(samples))
                steady = samples[600:]  # past the filter's start
                level_db = 20 * np.log10(np.sqrt(np.mean(steady**2)) / tone_rms + 1e-12)
                if tone_hz > 12000:
                    assert level_db < -60, f"{case}: folded into the speech band at {level_db:.1f} dB"
                    continue
                spectrum = np.abs(np.fft.rfft(steady * np.hanning(len(steady))))
                peak = int(np.argmax(spectrum))
                assert abs(peak * 24000 / len(steady) - tone_hz) < 2, case
                assert abs(level_db) < 0.5, f"{case}: level {level_db:.2f} dB"
                others = np.concatenate([spectrum[: peak - 20], spectrum[peak + 20 :]])
                assert 20 * np.log10(others.max() / spectrum[peak]) < -40, f"{case}: distorted"
        finally:
            browser.close()


@pytest.fixture(scope="module")
def gateways(stack, certificate):
    """One gateway on plain HTTP and one on HTTPS, both in front of the test stack. Started from this
    thread: a child dies with the thread that started it (shared.grpc_server.die_with_parent)."""
    cert, key = certificate
    started = {"http": stack.spawn_gateway()}
    try:
        started["https"] = stack.spawn_gateway(
            extra_env={"VITA_GATEWAY_HTTPS_CERT": str(cert), "VITA_GATEWAY_HTTPS_KEY": str(key)})
        yield started
    finally:
        for gateway in started.values():
            gateway.stop(10)


PAGE_STATE = """() => {
  const page = window.vitaPage;
  return {stats: page.stats, played: page.playedSamples, frames: page.framesSent, busy: page.busy,
          contextRate: page.contextRate, transcript: page.transcript};
}"""
# How each test cuts the reply short: the user speaks over it (the fake microphone's phrase comes round
# again, and server VAD fires while the reply plays) or presses Stop reply.
INTERRUPTIONS = {"http": "barge-in", "https": "stop"}


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_page_talks_through_the_gateway(scheme, gateways, microphone_wav, playwright_api, tmp_path):
    port = gateways[scheme].address.rsplit(":", 1)[1]
    # `localhost` over HTTPS (the certificate names it); over HTTP, loopback is a secure context as is.
    url = f"{scheme}://localhost:{port}/" if scheme == "https" else f"http://127.0.0.1:{port}/"
    flags = [*PAGE_FLAGS, f"--use-file-for-fake-audio-capture={microphone_wav}"]
    interruption = INTERRUPTIONS[scheme]
    problems: list[str] = []
    with playwright_api() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=flags,
            viewport={"width": 1200, "height": 720},
        )
        try:
            page = context.new_page()
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.goto(url)
            page.click("#connect")  # a user gesture: the page may start audio
            page.wait_for_function("() => window.vitaPage.stats.configured", timeout=CONNECT_TIMEOUT_MS)
            # The fake microphone's phrase: server VAD hears it start and end, and the reply plays.
            page.wait_for_function(
                f"() => window.vitaPage.stats.events['input_audio_buffer.speech_stopped'] >= 1"
                f" && window.vitaPage.playedSamples >= {PLAYED_SAMPLES}"
                f" && document.querySelector('#transcript .assistant .text').textContent.length > 0",
                timeout=TURN_TIMEOUT_MS,
            )
            state = page.evaluate(PAGE_STATE)
            shot = tmp_path / f"page-{scheme}.png"
            page.screenshot(path=str(shot))
            print(f"\nscreenshot of the page over {scheme}: {shot}")
            if interruption == "stop":
                page.wait_for_function("() => window.vitaPage.busy", timeout=TURN_TIMEOUT_MS)
                page.click("#stop")
            # The cut reply ends (response.done), the page has recorded the cut, and the truncation it sent
            # (when some of the reply was heard) has been answered: that answer may land after the done.
            page.wait_for_function(
                f"() => window.vitaPage.stats.cuts.some(cut => cut.why === '{interruption}' && cut.responseId"
                f" && window.vitaPage.stats.responses.some(done => done.id === cut.responseId)"
                f" && (cut.heardMs === 0"
                f"     || (window.vitaPage.stats.events['conversation.item.truncated'] || 0) >= 1))",
                timeout=TURN_TIMEOUT_MS,
            )
            after = page.evaluate(PAGE_STATE)
            page.screenshot(path=str(tmp_path / f"page-{scheme}-after-{interruption}.png"))
            page.click("#connect")  # Disconnect: the page closes its WebSocket
            page.wait_for_function("() => window.vitaPage.stats.state === 'closed'", timeout=CONNECT_TIMEOUT_MS)
            closed = page.evaluate("() => window.vitaPage.stats.errors")
        finally:
            context.close()
    stats = after["stats"]
    print(f"page over {scheme}: played {state['played']} samples before the {interruption}, "
          f"{state['frames']} camera frames, AudioContext at {state['contextRate']} Hz; first of each event, "
          f"ms after Connect: {state['stats']['firstAt']}; cuts {stats['cuts']}")

    assert not problems, problems
    assert stats["errors"] == [], stats["errors"]
    assert closed == [], closed  # a clean close, code 1000
    assert stats["url"].startswith("wss://" if scheme == "https" else "ws://"), stats["url"]
    events = state["stats"]["events"]
    assert events.get("session.created") == 1 and events.get("session.updated", 0) >= 1
    assert events.get("input_audio_buffer.speech_started", 0) >= 1
    assert events.get("input_audio_buffer.committed", 0) >= 1  # the speech became a turn
    assert events.get("response.created", 0) >= 1
    assert state["stats"]["receivedAudioSamples"] >= state["played"] >= PLAYED_SAMPLES
    assert state["stats"]["micSamplesSent"] > 0
    assert state["frames"] >= 1  # the camera sent frames while the session was open
    assert "You" in state["transcript"] and "Assistant" in state["transcript"], state["transcript"]

    cut = next(cut for cut in stats["cuts"] if cut["why"] == interruption and cut["responseId"])
    done = next(done for done in stats["responses"] if done["id"] == cut["responseId"])
    assert not cut["busyAfter"], "audio still queued right after the cut"
    assert done["status"] == "cancelled", done
    assert done["reason"] == ("turn_detected" if interruption == "barge-in" else "client_cancelled"), done
    assert done["queued"] == cut["queued"], "audio of the cut reply was queued after the cut"
    if cut["heardMs"] > 0:  # the page told the server how much of the reply was heard
        assert stats["events"].get("conversation.item.truncated", 0) >= 1, stats["events"]
