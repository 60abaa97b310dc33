// The transcript: one line per user turn, assistant reply and notice, newest at the bottom.

export class Transcript {
  constructor(element) {
    this.element = element;
    this.replies = new Map(); // response id -> its line
    this.speaking = null; // the user line of the speech in progress
  }

  add(role, text) {
    const line = document.createElement("div");
    line.className = `line ${role}`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = { user: "You", assistant: "Assistant", notice: "·" }[role] || role;
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    line.append(who, body);
    this.element.append(line);
    this.element.scrollTop = this.element.scrollHeight;
    return line;
  }

  speechStarted() {
    this.speaking = this.add("user", "speaking…");
    this.speaking.classList.add("pending");
  }

  speechStopped() {
    if (!this.speaking) this.speechStarted();
    this.speaking.querySelector(".text").textContent = "(spoken)";
    this.speaking.classList.remove("pending");
    this.lastSpoken = this.speaking;
    this.speaking = null;
  }

  /** A transcription of the user's speech, when the server sends one. */
  userTranscript(text) {
    const line = this.lastSpoken || this.add("user", "");
    line.querySelector(".text").textContent = text;
  }

  replyDelta(responseId, delta) {
    let line = this.replies.get(responseId);
    if (!line) {
      line = this.add("assistant", "");
      line.classList.add("pending");
      this.replies.set(responseId, line);
    }
    line.querySelector(".text").textContent += delta;
    this.element.scrollTop = this.element.scrollHeight;
  }

  replyDone(responseId, status) {
    const line = this.replies.get(responseId);
    if (!line) return;
    line.classList.remove("pending");
    if (status && status !== "completed") line.classList.add(status);
    if (!line.querySelector(".text").textContent) line.querySelector(".text").textContent = `(${status || "no text"})`;
    this.replies.delete(responseId);
  }

  get text() {
    return this.element.innerText;
  }
}
