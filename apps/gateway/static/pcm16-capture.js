// AudioWorklet processor: microphone (float, at the AudioContext's rate) -> mono PCM16 at 24 kHz, the
// rate the Realtime API's "audio/pcm" input format names. It posts one Int16Array (its buffer
// transferred) per chunk of `chunkMs` to the page, which base64-encodes it into input_audio_buffer.append.

const TARGET_RATE = 24000;

class Pcm16Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const chunkMs = (options.processorOptions && options.processorOptions.chunkMs) || 40;
    // Input samples per output sample (2 from a 48 kHz context, 1 at 24 kHz, below 1 when upsampling).
    this.step = sampleRate / TARGET_RATE;
    // Downsampling by N would fold everything above 12 kHz into the speech band: a moving average over
    // N input samples first is a cheap low-pass whose first null sits at the new Nyquist frequency.
    this.boxLength = Math.max(1, Math.round(this.step));
    this.box = new Float32Array(this.boxLength);
    this.boxIndex = 0;
    this.boxSum = 0;
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
      mono /= channels.length;
      this.boxSum += mono - this.box[this.boxIndex];
      this.box[this.boxIndex] = mono;
      this.boxIndex = (this.boxIndex + 1) % this.boxLength;
      x[i] = this.boxSum / this.boxLength;
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
