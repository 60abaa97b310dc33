// AudioWorklet processor: microphone (float, at the AudioContext's rate) -> mono PCM16 at 24 kHz, the
// rate the Realtime API's "audio/pcm" input format names. It posts one Int16Array (its buffer
// transferred) per chunk of `chunkMs` to the page, which base64-encodes it into input_audio_buffer.append.

const TARGET_RATE = 24000;
// The anti-aliasing low-pass: flat through the speech band (the server hears 16 kHz audio, so up to
// 8 kHz), and at least 70 dB down from 13.5 kHz (at 44.1 and 48 kHz input), whose images would fold
// below 10.5 kHz.
const CUTOFF_HZ = 10500;
// Taps per kHz of input rate: the transition band keeps its width in Hz at any context rate.
const TAPS_PER_KHZ = 1;

/** Blackman-windowed sinc low-pass, `cutoff` in cycles per input sample, normalised to unit DC gain. */
function lowPass(cutoff, length) {
  const taps = new Float32Array(length);
  const middle = (length - 1) / 2;
  let total = 0;
  for (let k = 0; k < length; k++) {
    const t = k - middle;
    const sinc = t === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * t) / (Math.PI * t);
    const phase = (2 * Math.PI * k) / (length - 1);
    const window = 0.42 - 0.5 * Math.cos(phase) + 0.08 * Math.cos(2 * phase);
    taps[k] = sinc * window;
    total += taps[k];
  }
  for (let k = 0; k < length; k++) taps[k] /= total;
  return taps;
}

class Pcm16Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const chunkMs = (options.processorOptions && options.processorOptions.chunkMs) || 40;
    // Input samples per output sample (2 from a 48 kHz context, 1 at 24 kHz, below 1 when upsampling).
    this.step = sampleRate / TARGET_RATE;
    // Downsampling folds everything above 12 kHz back into the band the model hears: a low-pass
    // (windowed sinc) first. The history is kept twice over, so each dot product reads one straight run.
    const length = Math.round((TAPS_PER_KHZ * sampleRate) / 1000);
    this.taps = this.step > 1 ? lowPass(CUTOFF_HZ / sampleRate, length) : new Float32Array([1]);
    this.history = new Float32Array(2 * this.taps.length);
    this.historyIndex = 0;
    // Where the next output sample falls, in input samples from the start of the next block; -1 means
    // on the last sample of the previous block (kept in `previous`), so blocks join without a seam.
    this.position = 0;
    this.previous = 0;
    this.chunkLength = Math.round((TARGET_RATE * chunkMs) / 1000);
    this.chunk = new Int16Array(this.chunkLength);
    this.filled = 0;
    this.filtered = new Float32Array(128);
    // "stop" from the page ends the processor (returning false lets the browser collect it).
    this.stopped = false;
    this.port.onmessage = ({ data }) => {
      if (data === "stop") this.stopped = true;
    };
  }

  process(inputs) {
    if (this.stopped) return false;
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true; // no source connected yet
    const frames = channels[0].length;
    if (this.filtered.length < frames) this.filtered = new Float32Array(frames);
    const x = this.filtered;
    for (let i = 0; i < frames; i++) {
      let mono = 0;
      for (let c = 0; c < channels.length; c++) mono += channels[c][i];
      x[i] = this.filter(mono / channels.length);
    }
    let t = this.position;
    while (t < frames - 1) {
      const i = Math.floor(t);
      const a = i < 0 ? this.previous : x[i];
      const b = x[i + 1];
      this.push(a + (b - a) * (t - i));
      t += this.step;
    }
    this.position = t - frames;
    this.previous = x[frames - 1];
    return true;
  }

  filter(sample) {
    const taps = this.taps;
    const n = taps.length;
    this.historyIndex = this.historyIndex === 0 ? n - 1 : this.historyIndex - 1;
    this.history[this.historyIndex] = sample;
    this.history[this.historyIndex + n] = sample;
    let sum = 0;
    for (let k = 0, j = this.historyIndex; k < n; k++, j++) sum += taps[k] * this.history[j];
    return sum;
  }

  push(sample) {
    const clipped = Math.max(-1, Math.min(1, sample));
    this.chunk[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
    if (this.filled === this.chunkLength) {
      // Transferred, not copied: the array is unusable here afterwards, so the next chunk is a new one.
      this.port.postMessage(this.chunk, [this.chunk.buffer]);
      this.chunk = new Int16Array(this.chunkLength);
      this.filled = 0;
    }
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
