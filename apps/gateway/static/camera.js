// The camera: shows the preview and, while started, hands a JPEG data URL of the current frame to
// `onFrame` every `intervalMs`. A frame is skipped while the previous one is still being encoded or
// while `shouldSkip()` says the connection is backed up: a late frame is worth less than the next one.

const MAX_WIDTH = 640;
const JPEG_QUALITY = 0.7;

export class Camera {
  constructor(video, { intervalMs, onFrame, shouldSkip }) {
    this.video = video;
    this.intervalMs = intervalMs;
    this.onFrame = onFrame;
    this.shouldSkip = shouldSkip || (() => false);
    this.canvas = document.createElement("canvas");
    this.timer = null;
    this.encoding = false;
    this.framesSent = 0;
  }

  attach(stream) {
    this.video.srcObject = stream;
    return this.video.play().catch(() => {}); // muted previews may autoplay; a refusal only hides it
  }

  start() {
    if (this.timer === null) this.timer = setInterval(() => this.capture(), this.intervalMs);
  }

  stop() {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** Stops sending and turns the camera off. */
  release() {
    this.stop();
    const stream = this.video.srcObject;
    if (stream) stream.getTracks().forEach((track) => track.stop());
    this.video.srcObject = null;
  }

  capture() {
    const { videoWidth, videoHeight } = this.video;
    if (this.encoding || !videoWidth || !videoHeight || this.shouldSkip()) return;
    const scale = Math.min(1, MAX_WIDTH / videoWidth);
    this.canvas.width = Math.round(videoWidth * scale);
    this.canvas.height = Math.round(videoHeight * scale);
    this.canvas.getContext("2d").drawImage(this.video, 0, 0, this.canvas.width, this.canvas.height);
    this.encoding = true;
    this.canvas.toBlob(
      (blob) => {
        if (!blob || this.timer === null) {
          this.encoding = false;
          return;
        }
        const reader = new FileReader();
        reader.onloadend = () => {
          this.encoding = false;
          if (this.timer === null || typeof reader.result !== "string") return;
          this.framesSent += 1;
          this.onFrame(reader.result);
        };
        reader.readAsDataURL(blob);
      },
      "image/jpeg",
      JPEG_QUALITY,
    );
  }
}
