// Plays the reply's PCM16 (24 kHz mono) through Web Audio as it arrives, each delta scheduled right after
// the one before, and drops everything queued at once on flush() (barge-in, cancel). It counts the
// samples that really played: a chunk counts when it ends, a flushed one by how far it got. Each chunk
// belongs to a reply item, so a flush can say how much of the cut item the user heard.

export const REPLY_RATE = 24000;
// After an underrun (or at the first chunk) playback starts this far ahead, so the next delta can arrive
// before the first one runs out.
const START_LEAD_S = 0.08;
const MAX_TRACKED_ITEMS = 8;

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
    this.lastItem = null; // the item of the latest chunk
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
    this.lastItem = itemId;
    source.onended = () => {
      this.playing.delete(entry);
      this.count(entry, frames);
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
    // Only the latest replies can still be cut; a Map iterates oldest first.
    if (this.heardByItem.size > MAX_TRACKED_ITEMS) this.heardByItem.delete(this.heardByItem.keys().next().value);
  }

  /**
   * Stops what is playing and drops what is queued. Returns the cut items: [{itemId, heardMs}]. With
   * `replyUnfinished`, the item that last got audio counts as cut even when nothing plays right now (its
   * next delta is late): more of it was coming.
   */
  flush(replyUnfinished = false) {
    const now = this.context.currentTime;
    const cut = new Set();
    if (replyUnfinished && this.heardByItem.has(this.lastItem)) cut.add(this.lastItem);
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
    return [...cut].map((itemId) => {
      const heardMs = Math.floor(((this.heardByItem.get(itemId) || 0) * 1000) / REPLY_RATE);
      this.heardByItem.delete(itemId);
      return { itemId, heardMs };
    });
  }
}
