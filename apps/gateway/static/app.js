// The page: microphone and camera in, reply audio and transcript out, over the gateway's Realtime
// WebSocket. The server detects speech (server VAD), so the microphone streams while the session is open
// and a turn starts when the user speaks; speaking over a reply stops its playback at once (barge-in).

import { Camera } from "./camera.js";
import { Player } from "./player.js";
import { RealtimeSocket, base64ToBytes, bytesToBase64, realtimeUrl } from "./realtime.js";
import { Transcript } from "./transcript.js";

const MIC_CHUNK_MS = 40;
const CAMERA_INTERVAL_MS = 750; // between 1 and 2 frames per second
// A frame is skipped while this much is still queued in the browser: audio must not wait behind video.
const MAX_BUFFERED_BYTES = 256 * 1024;
// The page's session.update, so that an error in reply to it can be told apart.
const SESSION_UPDATE_ID = "page_session_update";

const $ = (id) => document.getElementById(id);
const ui = {
  connect: $("connect"),
  apiKey: $("api-key"),
  mic: $("mic"),
  camera: $("camera"),
  stop: $("stop"),
  status: $("status"),
  level: $("level"),
  video: $("preview"),
  form: $("say"),
  text: $("text"),
};

const transcript = new Transcript($("transcript"));
const stats = {
  state: "idle", // idle | connecting | open | closed
  url: "",
  protocol: "", // the subprotocol the server chose
  sessionId: "",
  configured: false, // the server answered the page's session.update: input audio may flow
  events: {}, // server event type -> count
  firstAt: {}, // server event type -> when it first came, in ms since Connect was pressed
  errors: [], // the server's error events and connection failures, newest last
  micChunksSent: 0,
  micSamplesSent: 0,
  receivedAudioSamples: 0,
  responsesDone: 0,
  lastResponseStatus: "",
  // Finished replies, newest last: {id, status, reason, queued (reply samples queued so far, all replies)}.
  responses: [],
  // Playback stopped early, newest last: {why, responseId, heardMs, busyAfter, queued}.
  cuts: [],
};

let socket = null;
let context = null;
let player = null;
let micStream = null;
let micNode = null;
let micSource = null;
let camera = null;
let activeResponse = null; // id of the reply being generated, if any
// Replies cut off by barge-in or Stop: their audio deltas still on the wire must not play.
const silenced = new Set();
let connectedAt = 0; // performance.now() of the last Connect

function setStatus(text, kind = "") {
  ui.status.textContent = text;
  ui.status.className = kind;
}

function setState(state) {
  stats.state = state;
  document.body.dataset.state = state;
  ui.connect.textContent = state === "open" || state === "connecting" ? "Disconnect" : "Connect";
  for (const control of [ui.mic, ui.camera, ui.stop, ui.text]) control.disabled = state !== "open";
}

async function openMicrophone() {
  micStream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  await context.audioWorklet.addModule(new URL("./pcm16-capture.js", import.meta.url));
  // No outputs: the node is a sink, which the browser runs without a path to the speakers.
  micNode = new AudioWorkletNode(context, "pcm16-capture", {
    numberOfOutputs: 0,
    processorOptions: { chunkMs: MIC_CHUNK_MS },
  });
  micNode.port.onmessage = ({ data }) => sendMicChunk(data);
  micSource = context.createMediaStreamSource(micStream);
  micSource.connect(micNode);
}

function sendMicChunk(pcm) {
  showLevel(pcm);
  // Audio waits for the session's settings: sent earlier, it could reach a session about to be replaced.
  if (!socket || !socket.open || !stats.configured || !ui.mic.checked) return;
  // Int16Array is little-endian on every platform browsers run on, as PCM16 requires.
  socket.send({ type: "input_audio_buffer.append", audio: bytesToBase64(new Uint8Array(pcm.buffer)) });
  stats.micChunksSent += 1;
  stats.micSamplesSent += pcm.length;
}

function showLevel(pcm) {
  let sum = 0;
  for (let i = 0; i < pcm.length; i++) sum += pcm[i] * pcm[i];
  const rms = Math.sqrt(sum / pcm.length) / 0x8000;
  ui.level.style.width = `${Math.min(100, Math.round(rms * 400))}%`;
}

async function openCamera() {
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
  camera = new Camera(ui.video, {
    intervalMs: CAMERA_INTERVAL_MS,
    shouldSkip: () => !socket || !socket.open || socket.buffered > MAX_BUFFERED_BYTES,
    onFrame: (dataUrl) =>
      socket.send({
        type: "conversation.item.create",
        item: { type: "message", role: "user", content: [{ type: "input_image", image_url: dataUrl }] },
      }),
  });
  await camera.attach(stream);
}

function connect() {
  connectedAt = performance.now();
  setState("connecting");
  setStatus("Connecting…");
  stats.errors = [];
  // Created on the click: browsers only let a page start audio from a user gesture.
  context = context || new AudioContext();
  context.resume();
  player = player || new Player(context);
  stats.url = realtimeUrl(window.location);
  const apiKey = ui.apiKey.value.trim();
  try {
    socket = new RealtimeSocket(stats.url, { apiKey, onOpen, onClose, onEvent });
  } catch (error) {
    // The browser refuses to even try; its message would show the key itself.
    fail(apiKey ? "cannot connect: the API key has characters a WebSocket cannot carry" : `cannot connect: ${error.message}`);
  }
}

/** Microphone and camera, asked for once the session is ready to take what they capture. Without a
 * microphone the session stays open for typed messages; without a camera it is audio only. */
async function openDevices() {
  try {
    await openMicrophone();
  } catch (error) {
    ui.mic.checked = false;
    transcript.add("notice", `no microphone (${error.message}); type instead`);
  }
  try {
    await openCamera();
  } catch (error) {
    ui.camera.checked = false;
    transcript.add("notice", `no camera (${error.message}); audio only`);
  }
  if (!socket) {
    releaseDevices(); // the connection closed while the browser was asking
    return;
  }
  if (camera && ui.camera.checked) camera.start();
}

function sessionReady() {
  if (stats.configured) return;
  stats.configured = true;
  openDevices();
}

function onOpen() {
  stats.protocol = socket.socket.protocol;
  stats.configured = false;
  setState("open");
  setStatus("Connected: speak, or type below");
  socket.send({
    type: "session.update",
    event_id: SESSION_UPDATE_ID,
    session: {
      type: "realtime",
      output_modalities: ["audio"],
      audio: {
        input: { format: { type: "audio/pcm", rate: 24000 }, turn_detection: { type: "server_vad" } },
        output: { format: { type: "audio/pcm", rate: 24000 } },
      },
    },
  });
}

/** Lets go of the microphone and camera, so the browser stops showing them in use. */
function releaseDevices() {
  if (camera) camera.release();
  camera = null;
  if (micSource) micSource.disconnect();
  if (micNode) {
    micNode.port.onmessage = null;
    micNode.port.postMessage("stop");
  }
  if (micStream) micStream.getTracks().forEach((track) => track.stop());
  micStream = null;
  micSource = null;
  micNode = null;
  ui.level.style.width = "0";
}

function onClose(event) {
  const wasOpen = stats.state === "open";
  setState("closed");
  releaseDevices();
  socket = null; // nothing more can be sent on it
  if (player) player.flush();
  activeResponse = null;
  silenced.clear();
  if (event.code === 1000 && wasOpen) {
    setStatus("Disconnected");
  } else {
    const reason = event.reason || (wasOpen ? "the connection dropped" : "the gateway refused the connection");
    stats.errors.push({ code: `close_${event.code}`, message: reason });
    setStatus(`Disconnected (${event.code}): ${reason}`, "error");
  }
}

function fail(message) {
  releaseDevices();
  stats.errors.push({ code: "page", message });
  setStatus(message, "error");
  setState("closed");
}

function onEvent(event) {
  stats.events[event.type] = (stats.events[event.type] || 0) + 1;
  if (!(event.type in stats.firstAt)) stats.firstAt[event.type] = Math.round(performance.now() - connectedAt);
  switch (event.type) {
    case "session.created":
      stats.sessionId = (event.session && event.session.id) || "";
      break;
    case "session.updated":
      stats.sessionId = (event.session && event.session.id) || stats.sessionId;
      sessionReady();
      break;
    case "input_audio_buffer.speech_started":
      // Barge-in: the user talks over the reply, so what is still queued must not play.
      cutPlayback("barge-in");
      transcript.speechStarted();
      break;
    case "input_audio_buffer.speech_stopped":
      transcript.speechStopped();
      break;
    case "conversation.item.input_audio_transcription.completed":
      if (event.transcript) transcript.userTranscript(event.transcript);
      break;
    case "response.created":
      activeResponse = event.response && event.response.id;
      break;
    case "response.output_audio.delta": {
      const bytes = base64ToBytes(event.delta || "");
      stats.receivedAudioSamples += bytes.length >> 1;
      if (silenced.has(event.response_id)) break;
      player.enqueue(bytes, event.item_id);
      break;
    }
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta":
      if (!silenced.has(event.response_id)) transcript.replyDelta(event.response_id, event.delta || "");
      break;
    case "response.done": {
      const response = event.response || {};
      stats.responsesDone += 1;
      // Cancelled by the server (the session's other cancels were cut here already): stop its audio too.
      if (response.status === "cancelled" && !silenced.has(response.id)) cutPlayback("cancelled");
      transcript.replyDone(response.id, response.status);
      if (activeResponse === response.id) activeResponse = null;
      silenced.delete(response.id); // nothing of it comes after its response.done
      stats.lastResponseStatus = response.status || "";
      const details = response.status_details || {};
      const queued = player.queuedSamples;
      remember(stats.responses, { id: response.id, status: response.status, reason: details.reason || "", queued });
      break;
    }
    case "error": {
      const error = event.error || {};
      // A refused session.update leaves the server's defaults, which also take PCM16 at 24 kHz.
      if (error.event_id === SESSION_UPDATE_ID) sessionReady();
      remember(stats.errors, { code: error.code || error.type || "error", message: error.message || "" });
      transcript.add("notice", `error: ${error.message || error.code || "unknown"}`);
      break;
    }
  }
}

/** Stops the reply's audio now and tells the server how much of it was heard: that is what the
 * conversation's history keeps. */
function cutPlayback(why) {
  const responseId = activeResponse;
  if (responseId) silenced.add(responseId);
  if (!player) return;
  const cut = player.flush(Boolean(responseId));
  for (const { itemId, heardMs } of cut) {
    if (itemId && socket) {
      socket.send({ type: "conversation.item.truncate", item_id: itemId, content_index: 0, audio_end_ms: heardMs });
    }
  }
  if (responseId || cut.length > 0) {
    const heardMs = cut.length > 0 ? cut[0].heardMs : 0;
    remember(stats.cuts, { why, responseId, heardMs, busyAfter: player.busy, queued: player.queuedSamples });
  }
}

/** Appends to a list of recent things, keeping it short in a long session. */
function remember(list, entry) {
  list.push(entry);
  if (list.length > 20) list.shift();
}

function stopReply() {
  cutPlayback("stop");
  if (activeResponse && socket) socket.send({ type: "response.cancel" });
}

function sendText(text) {
  stopReply(); // a typed message interrupts the reply the same way speech does
  transcript.add("user", text);
  socket.send({
    type: "conversation.item.create",
    item: { type: "message", role: "user", content: [{ type: "input_text", text }] },
  });
  socket.send({ type: "response.create" });
}

ui.connect.addEventListener("click", () => {
  if (socket) socket.close();
  else connect();
});
ui.camera.addEventListener("change", () => {
  if (!camera) return;
  if (ui.camera.checked && socket && socket.open) camera.start();
  else camera.stop();
  ui.video.classList.toggle("off", !ui.camera.checked);
});
ui.stop.addEventListener("click", stopReply);
ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.text.value.trim();
  if (!text || !socket || !socket.open) return;
  ui.text.value = "";
  sendText(text);
});

// What the page did, for people debugging it from the console and for the browser test.
window.vitaPage = {
  stats,
  get playedSamples() {
    return player ? player.playedSamples : 0;
  },
  get queuedSamples() {
    return player ? player.queuedSamples : 0;
  },
  get busy() {
    return player ? player.busy : false;
  },
  get flushes() {
    return player ? player.flushes : 0;
  },
  get framesSent() {
    return camera ? camera.framesSent : 0;
  },
  get contextRate() {
    return context ? context.sampleRate : 0;
  },
  get transcript() {
    return transcript.text;
  },
};
setState("idle");
