// Plays the reply's PCM16 (24 kHz mono) through Web Audio as it arrives, each delta scheduled right after
// the one before, and drops everything queued at once on flush() (barge-in, cancel). It counts the
// samples that really played: a chunk counts when it ends, a flushed one by how far it got. Each chunk
// belongs to a reply item, so a flush can say how much of the cut item the user heard.

export const REPLY_RATE = 24000;
// After an underrun (or at the first chunk) playback starts this far ahead, so the next delta can arrive
// before the first one runs out.
const START_LEAD_S = 0.08;

export class Player {
  constructor(context) {
    this.context = context;
    this.output = context.createGain();
    this.output.connect(context.destination);
    this.playing = new Set(); // {source, startsAt, frames}
    this.playhead = 0; // context time at which the next chunk starts
    this.playedSamples = 0;
    this.queuedSamples = 0;
    this.flushes = 0;
    this.pendingByte = null; // a delta may end inside a sample
    this.heardByItem = new Map(); // item id -> samples of it played so far
  }

  /** Queues PCM16 little-endian bytes (Uint8Array) of reply item `itemId`. */
  enqueue(bytes, itemId = "") {
    if (this.pendingByte !== null) {
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = this.pendingByte;
      joined.set(bytes, 1);
      bytes = joined;
      this.pendingByte = null;
    }
    if (bytes.length % 2 === 1) {
      this.pendingByte = bytes[bytes.length - 1];
      bytes = bytes.subarray(0, bytes.length - 1);
    }
    const frames = bytes.length / 2;
    if (frames === 0) return;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    const buffer = this.context.createBuffer(1, frames, REPLY_RATE);
    const samples = buffer.getChannelData(0);
    for (let i = 0; i < frames; i++) samples[i] = view.getInt16(2 * i, true) / 0x8000;

    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.output);
    const now = this.context.currentTime;
    const startsAt = this.playhead > now ? this.playhead : now + START_LEAD_S;
    const entry = { source, startsAt, frames, itemId };
    source.onended = () => {
      this.playing.delete(entry);
      this.count(entry, frames);
      if (this.playing.size === 0) this.heardByItem.clear(); // all heard: no item can be cut any more
    };
    source.start(startsAt);
    this.playhead = startsAt + buffer.duration;
    this.playing.add(entry);
    this.queuedSamples += frames;
  }

  /** True while queued audio has not finished playing. */
  get busy() {
    return this.playing.size > 0;
  }

  count(entry, samples) {
    this.playedSamples += samples;
    this.heardByItem.set(entry.itemId, (this.heardByItem.get(entry.itemId) || 0) + samples);
  }

  /** Stops what is playing and drops what is queued. Returns the cut items: [{itemId, heardMs}]. */
  flush() {
    const now = this.context.currentTime;
    const cut = new Set();
    for (const entry of this.playing) {
      entry.source.onended = null;
      const heard = Math.round((now - entry.startsAt) * REPLY_RATE);
      this.count(entry, Math.max(0, Math.min(entry.frames, heard)));
      entry.source.stop();
      entry.source.disconnect();
      cut.add(entry.itemId);
    }
    if (this.playing.size > 0) this.flushes += 1;
    this.playing.clear();
    this.playhead = 0;
    this.pendingByte = null;
    const heard = [...cut].map((itemId) => ({
      itemId,
      heardMs: Math.floor(((this.heardByItem.get(itemId) || 0) * 1000) / REPLY_RATE),
    }));
    this.heardByItem.clear();
    return heard;
  }
}
