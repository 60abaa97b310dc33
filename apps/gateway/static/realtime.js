// The WebSocket to the gateway's /v1/realtime, speaking OpenAI's Realtime events (GA names), and the
// base64 helpers those events need.

// Server events whose beta name differs from the GA one, mapped to the GA name, so the page handles one
// set whichever form the server answers in.
const GA_NAMES = {
  "response.audio.delta": "response.output_audio.delta",
  "response.audio.done": "response.output_audio.done",
  "response.audio_transcript.delta": "response.output_audio_transcript.delta",
  "response.audio_transcript.done": "response.output_audio_transcript.done",
  "response.text.delta": "response.output_text.delta",
  "response.text.done": "response.output_text.done",
  "conversation.item.created": "conversation.item.added",
};

/** ws:// on an http page, wss:// on an https one (a browser refuses ws:// from an https page). */
export function realtimeUrl(location, path = "v1/realtime") {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // Relative to the page's directory, so the page also works behind a proxy that serves it under a prefix.
  const base = new URL(path, location.href);
  return `${scheme}//${base.host}${base.pathname}`;
}

export class RealtimeSocket {
  /**
   * A browser cannot set an Authorization header on a WebSocket, so an API key travels as the
   * subprotocol `openai-insecure-api-key.<key>`, as OpenAI's own browser clients send it.
   */
  constructor(url, { apiKey, onEvent, onOpen, onClose }) {
    const protocols = apiKey ? ["realtime", `openai-insecure-api-key.${apiKey}`] : [];
    this.url = url;
    this.socket = new WebSocket(url, protocols);
    this.socket.onopen = () => onOpen();
    this.socket.onclose = (event) => onClose(event);
    this.socket.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return; // the server only sends JSON text frames; anything else is not an event
      }
      if (event && typeof event.type === "string") {
        event.type = GA_NAMES[event.type] || event.type;
        onEvent(event);
      }
    };
  }

  get open() {
    return this.socket.readyState === WebSocket.OPEN;
  }

  /** Bytes queued in the browser, not yet sent: how backed up the connection is. */
  get buffered() {
    return this.socket.bufferedAmount;
  }

  send(event) {
    if (this.open) this.socket.send(JSON.stringify(event));
  }

  close() {
    this.socket.close(1000, "closed by the page");
  }
}

export function bytesToBase64(bytes) {
  let binary = "";
  const STEP = 0x8000; // String.fromCharCode takes its bytes as arguments: keep each call small
  for (let i = 0; i < bytes.length; i += STEP) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + STEP));
  }
  return btoa(binary);
}

export function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
