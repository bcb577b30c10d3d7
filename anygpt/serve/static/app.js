/* The chat page of `anygpt serve`.
 *
 * It talks to the server only through the OpenAI-compatible API: GET /v1/models, POST
 * /v1/chat/completions (streamed server-sent events) and POST /v1/images/generations.  The
 * conversation lives in the page and is sent whole with every turn, as OpenAI clients do.
 * Plain script, no dependencies and no build step.
 */
"use strict";

(() => {
  const API = "/v1";
  const INPUT_RATE = 16000; // microphone recordings are sent as 16 kHz mono wav
  const PCM16_RATE = 24000; // OpenAI's rate for headerless "pcm16" audio

  const $ = (id) => document.getElementById(id);
  const ui = {
    model: $("model"),
    modelNote: $("model-note"),
    clear: $("clear"),
    empty: $("empty"),
    conversation: $("conversation"),
    composer: $("composer"),
    attachments: $("attachments"),
    message: $("message"),
    send: $("send"),
    mic: $("mic"),
    micNote: $("mic-note"),
    attach: $("attach"),
    file: $("file"),
    voice: $("voice"),
    voiceAdd: $("voice-add"),
    voiceFile: $("voice-file"),
    maxTokens: $("max-tokens"),
    progress: $("progress"),
    progressText: $("progress-text"),
    stop: $("stop"),
    status: $("status"),
    dropZone: $("drop-zone"),
  };

  /** The page's state: OpenAI messages sent so far, pending attachments, custom voices. */
  const state = {
    history: [],
    attachments: [],
    voices: new Map(),
    busy: null, // {controller, timer} while a request runs
    recordings: 0,
  };

  // ------------------------------------------------------------------ small helpers
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function announce(text) {
    ui.status.textContent = text;
  }

  function bytesToBase64(bytes) {
    let binary = "";
    const step = 0x8000;
    for (let i = 0; i < bytes.length; i += step) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + step));
    }
    return btoa(binary);
  }

  function base64ToBytes(b64) {
    const binary = atob(b64);
    const out = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
    return out;
  }

  function readAsDataURL(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error || new Error("could not read the file"));
      reader.readAsDataURL(blob);
    });
  }

  function dataUrlBase64(dataUrl) {
    return dataUrl.slice(dataUrl.indexOf(",") + 1);
  }

  function scrollToEnd() {
    const last = ui.conversation.lastElementChild;
    if (last) last.scrollIntoView({ block: "end" });
  }

  // ------------------------------------------------------------------ wav encoding and decoding
  /** A 16-bit PCM wav file of mono float samples in [-1, 1]. */
  function encodeWav(samples, rate) {
    const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
    const text = (offset, s) => {
      for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i));
    };
    text(0, "RIFF");
    view.setUint32(4, 36 + samples.length * 2, true);
    text(8, "WAVE");
    text(12, "fmt ");
    view.setUint32(16, 16, true);
    view.setUint16(20, 1, true); // PCM
    view.setUint16(22, 1, true); // mono
    view.setUint32(24, rate, true);
    view.setUint32(28, rate * 2, true);
    view.setUint16(32, 2, true);
    view.setUint16(34, 16, true);
    text(36, "data");
    view.setUint32(40, samples.length * 2, true);
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      view.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    }
    return new Uint8Array(view.buffer);
  }

  /** A wav file of interleaved 16-bit PCM bytes. */
  function pcm16ToWav(pcm, rate, channels) {
    const out = new Uint8Array(44 + pcm.length);
    const view = new DataView(out.buffer);
    const text = (offset, s) => {
      for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i));
    };
    text(0, "RIFF");
    view.setUint32(4, 36 + pcm.length, true);
    text(8, "WAVE");
    text(12, "fmt ");
    view.setUint32(16, 16, true);
    view.setUint16(20, 1, true);
    view.setUint16(22, channels, true);
    view.setUint32(24, rate, true);
    view.setUint32(28, rate * 2 * channels, true);
    view.setUint16(32, 2 * channels, true);
    view.setUint16(34, 16, true);
    text(36, "data");
    view.setUint32(40, pcm.length, true);
    out.set(pcm, 44);
    return out;
  }

  const isRiff = (b) => b.length >= 4 && b[0] === 0x52 && b[1] === 0x49 && b[2] === 0x46 && b[3] === 0x46;

  /** {rate, channels, bits, dataOffset} of a wav header, or null while more bytes are needed. */
  function parseWavHeader(bytes) {
    if (bytes.length < 12) return null;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let pos = 12;
    let fmt = null;
    while (pos + 8 <= bytes.length) {
      const id = String.fromCharCode(bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]);
      const size = view.getUint32(pos + 4, true);
      if (id === "fmt " && pos + 24 <= bytes.length) {
        fmt = {
          format: view.getUint16(pos + 8, true),
          channels: view.getUint16(pos + 10, true),
          rate: view.getUint32(pos + 12, true),
          bits: view.getUint16(pos + 22, true),
        };
      }
      if (id === "data") {
        if (!fmt) throw new Error("wav audio without a format chunk");
        return { ...fmt, dataOffset: pos + 8 };
      }
      pos += 8 + size + (size % 2);
    }
    return null;
  }

  let sharedAudioContext = null;
  /** One AudioContext for the page, made (or resumed) inside a user gesture. */
  function audioContext() {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return null;
    if (!sharedAudioContext) {
      try {
        sharedAudioContext = new Ctx();
      } catch (_) {
        return null;
      }
    }
    if (sharedAudioContext.state === "suspended") sharedAudioContext.resume().catch(() => {});
    return sharedAudioContext;
  }

  /** Mono samples at `rate` of any audio the browser can decode. */
  async function decodeToMono(bytes, rate) {
    const ctx = audioContext();
    if (!ctx) throw new Error("this browser cannot decode audio");
    const decoded = await ctx.decodeAudioData(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    return resampleMono(decoded, rate);
  }

  async function resampleMono(buffer, rate) {
    const length = Math.max(1, Math.ceil((buffer.duration || 0) * rate));
    const offline = new OfflineAudioContext(1, length, rate);
    const source = offline.createBufferSource();
    source.buffer = buffer;
    source.connect(offline.destination); // the destination mixes the channels down to mono
    source.start();
    const rendered = await offline.startRendering();
    return rendered.getChannelData(0);
  }

  // ------------------------------------------------------------------ streamed audio playback
  /**
   * Plays audio as it arrives: each base64 chunk of a streamed reply is scheduled on the Web
   * Audio clock right after the previous one.  A stream is a wav header followed by raw 16-bit
   * PCM, whole wav files, or headerless PCM16 (OpenAI's "pcm16", 24 kHz).  When the stream ends,
   * the whole reply becomes an ordinary <audio> player to replay or save.
   */
  class StreamPlayer {
    constructor(container, label) {
      this.container = container;
      this.label = label;
      this.pending = new Uint8Array(0);
      this.header = null; // parsed header of the current wav, or {raw: true}
      this.pcm = [];
      this.pcmBytes = 0;
      this.rate = PCM16_RATE;
      this.channels = 1;
      this.chunks = 0;
      this.sources = [];
      this.nextTime = 0;
      this.ctx = audioContext();
      this.root = el("div", { class: "audio-reply", "data-state": "waiting" });
      this.live = el("p", { class: "live", text: `${label}: waiting for audio…` });
      this.stopButton = el("button", {
        type: "button",
        class: "small",
        text: "Stop playing",
        onclick: () => this.silence(),
      });
      this.root.append(this.live, this.stopButton);
      container.append(this.root);
    }

    /** Adds one base64 chunk; `sampleRate` is the rate of headerless PCM (the server says it). */
    push(b64, sampleRate) {
      let bytes;
      try {
        bytes = base64ToBytes(b64);
      } catch (_) {
        throw new Error("the server sent audio that is not base64");
      }
      this.chunks += 1;
      if (isRiff(bytes) && this.header) {
        this.header = null; // a new whole wav file
        this.pending = new Uint8Array(0);
      }
      let buf = this.pending.length ? concat(this.pending, bytes) : bytes;
      if (!this.header) {
        if (isRiff(buf)) {
          const header = parseWavHeader(buf);
          if (!header) {
            this.pending = buf;
            return;
          }
          if (header.format !== 1 || header.bits !== 16) {
            throw new Error(`unsupported wav encoding (format ${header.format}, ${header.bits} bits)`);
          }
          this.header = header;
          this.rate = header.rate;
          this.channels = header.channels;
          buf = buf.subarray(header.dataOffset);
        } else {
          this.header = { raw: true };
          if (sampleRate > 0 && !this.pcmBytes) this.rate = sampleRate;
        }
      }
      const frame = 2 * this.channels;
      const usable = buf.length - (buf.length % frame);
      this.pending = buf.slice(usable);
      if (usable > 0) this.play(buf.slice(0, usable));
    }

    play(pcm) {
      this.pcm.push(pcm);
      this.pcmBytes += pcm.length;
      const seconds = this.pcmBytes / (2 * this.channels * this.rate);
      if (this.root.dataset.state === "waiting") {
        this.root.dataset.state = "playing";
        this.root.dataset.startedAtChunk = String(this.chunks);
        this.startedAt = performance.now();
      }
      this.root.dataset.chunks = String(this.chunks);
      this.live.textContent = `${this.label}: playing as it arrives (${seconds.toFixed(1)} s so far)`;
      if (!this.ctx) return;
      const frames = pcm.length / (2 * this.channels);
      const view = new DataView(pcm.buffer, pcm.byteOffset, pcm.byteLength);
      const buffer = this.ctx.createBuffer(this.channels, frames, this.rate);
      for (let c = 0; c < this.channels; c++) {
        const data = buffer.getChannelData(c);
        for (let i = 0; i < frames; i++) {
          data[i] = view.getInt16((i * this.channels + c) * 2, true) / 32768;
        }
      }
      const source = this.ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(this.ctx.destination);
      const start = Math.max(this.nextTime, this.ctx.currentTime + 0.05);
      source.start(start);
      StreamPlayer.active.add(this);
      this.root.dataset.clock = this.ctx.state; // "running" when the sound really plays
      this.nextTime = start + buffer.duration;
      this.sources.push(source);
    }

    silence() {
      StreamPlayer.active.delete(this);
      for (const source of this.sources) {
        try {
          source.stop();
        } catch (_) {
          /* already ended */
        }
      }
      this.sources = [];
      this.stopButton.remove();
    }

    /** The whole reply as a wav player; false when no audio came.  `streamEnd`: when the
     *  response ended (performance.now()), to record how long before it playing began. */
    finish(streamEnd) {
      this.stopButton.remove();
      if (this.startedAt !== undefined) {
        this.root.dataset.startedBeforeEndMs = (streamEnd - this.startedAt).toFixed(1);
      }
      if (!this.pcmBytes) {
        this.root.remove();
        return false;
      }
      const wav = pcm16ToWav(concat(...this.pcm), this.rate, this.channels);
      const url = URL.createObjectURL(new Blob([wav], { type: "audio/wav" }));
      const seconds = this.pcmBytes / (2 * this.channels * this.rate);
      const player = el("audio", { controls: true, preload: "auto", src: url, "aria-label": this.label });
      const save = el("a", { href: url, download: `${this.label.replace(/\W+/g, "-")}.wav`, text: "save" });
      this.live.textContent = `${this.label} (${seconds.toFixed(1)} s)`;
      this.root.dataset.state = "done";
      this.root.dataset.seconds = seconds.toFixed(2);
      this.root.append(player, " ", save);
      return true;
    }
  }

  StreamPlayer.active = new Set(); // players with sound scheduled, silenced by Clear

  function concat(...parts) {
    const total = parts.reduce((n, p) => n + p.length, 0);
    const out = new Uint8Array(total);
    let pos = 0;
    for (const part of parts) {
      out.set(part, pos);
      pos += part.length;
    }
    return out;
  }

  // ------------------------------------------------------------------ talking to the server
  class ServerError extends Error {}

  /** The plain message of a failed response: OpenAI's {"error": {"message"}} or the body. */
  async function responseError(response) {
    let detail = "";
    try {
      const body = await response.text();
      try {
        const parsed = JSON.parse(body);
        detail = errorText(parsed) || body;
      } catch (_) {
        detail = body;
      }
    } catch (_) {
      /* no body */
    }
    detail = detail.trim().slice(0, 500) || response.statusText || "no details";
    return new ServerError(`The server answered ${response.status}: ${detail}`);
  }

  function errorText(parsed) {
    if (!parsed || typeof parsed !== "object") return "";
    const err = parsed.error;
    if (typeof err === "string") return err;
    if (err && typeof err.message === "string") return err.message;
    if (typeof parsed.detail === "string") return parsed.detail;
    if (Array.isArray(parsed.detail)) return parsed.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    return "";
  }

  async function post(path, body, signal) {
    let response;
    try {
      response = await fetch(API + path, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json, text/event-stream" },
        body: JSON.stringify(body),
        signal,
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ServerError(`Could not reach the server (${err.message}).`);
    }
    if (!response.ok) throw await responseError(response);
    return response;
  }

  /** Calls onEvent(json) for each server-sent event of a streamed response until [DONE]. */
  async function readEvents(response, onEvent) {
    const type = response.headers.get("content-type") || "";
    if (!type.includes("text/event-stream")) {
      onEvent(await response.json(), true); // a server that answered without streaming
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(0), { stream: !done });
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        const data = block
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        if (data.trim() === "[DONE]") return;
        let parsed;
        try {
          parsed = JSON.parse(data);
        } catch (_) {
          throw new ServerError(`The server sent an event that is not JSON: ${data.slice(0, 200)}`);
        }
        onEvent(parsed, false);
      }
      if (done) return;
    }
  }

  /** Image URLs in a chat message or delta, in the shapes OpenAI-compatible servers use. */
  function imagesOf(part) {
    const urls = [];
    const add = (item) => {
      if (!item) return;
      if (typeof item === "string") urls.push(item);
      else if (item.image_url) urls.push(typeof item.image_url === "string" ? item.image_url : item.image_url.url);
      else if (item.b64_json) urls.push(`data:image/png;base64,${item.b64_json}`);
      else if (item.url) urls.push(item.url);
    };
    if (Array.isArray(part.images)) part.images.forEach(add);
    if (Array.isArray(part.content)) part.content.filter((c) => c && c.type === "image_url").forEach(add);
    return urls.filter(Boolean);
  }

  function textOf(content) {
    if (typeof content === "string") return content;
    if (Array.isArray(content)) {
      return content
        .filter((c) => c && (c.type === "text" || c.type === "output_text"))
        .map((c) => c.text)
        .join("");
    }
    return "";
  }

  /** Markdown images with data or http URLs in reply text become pictures of their own. */
  function splitMarkdownImages(text) {
    const urls = [];
    const rest = text.replace(/!\[[^\]]*\]\(((?:data:image\/|https?:\/\/|\/)[^)\s]+)\)/g, (_, url) => {
      urls.push(url);
      return "";
    });
    return { text: rest, urls };
  }

  // ------------------------------------------------------------------ the conversation view
  function addTurn(role, label) {
    ui.empty.hidden = true;
    const body = el("div", { class: "body" });
    const item = el("li", { class: `turn ${role}` }, el("p", { class: "who", text: label }), body);
    ui.conversation.append(item);
    scrollToEnd();
    return { item, body };
  }

  function showImage(container, url, alt) {
    const img = el("img", { src: url, alt, class: "picture" });
    img.addEventListener("load", scrollToEnd, { once: true }); // its height is known now
    container.append(el("figure", {}, img));
    scrollToEnd();
    return img;
  }

  function showError(message, container = null) {
    const line = el("p", { class: "error", role: "alert", text: message });
    if (container) container.append(line);
    else addTurn("error", "Error").body.append(line);
    announce(message);
    scrollToEnd();
  }

  function showUserTurn(text, attachments) {
    const turn = addTurn("user", "You");
    if (text) turn.body.append(el("p", { class: "text", text }));
    for (const a of attachments) {
      if (a.kind === "image") showImage(turn.body, a.dataUrl, `attached picture ${a.name}`);
      else turn.body.append(el("p", { class: "attached-audio" }, `${a.name} `, audioElement(a)));
    }
    return turn;
  }

  function audioElement(attachment) {
    if (!attachment.url) attachment.url = URL.createObjectURL(new Blob([attachment.bytes], { type: attachment.mime }));
    return el("audio", { controls: true, preload: "metadata", src: attachment.url, "aria-label": attachment.name });
  }

  // ------------------------------------------------------------------ attachments
  const AUDIO_FORMATS = { wav: "wav", wave: "wav", "x-wav": "wav", mp3: "mp3", mpeg: "mp3", flac: "flac", "x-flac": "flac" };

  function audioFormat(file) {
    const ext = (file.name.split(".").pop() || "").toLowerCase();
    const sub = (file.type.split("/")[1] || "").toLowerCase();
    return AUDIO_FORMATS[ext] || AUDIO_FORMATS[sub] || null;
  }

  function kindOf(file) {
    if (file.type.startsWith("image/")) return "image";
    if (file.type.startsWith("audio/")) return "audio";
    const ext = (file.name.split(".").pop() || "").toLowerCase();
    if (["png", "jpg", "jpeg", "gif", "webp", "bmp"].includes(ext)) return "image";
    if (["wav", "mp3", "flac", "ogg", "oga", "opus", "m4a", "webm", "aac"].includes(ext)) return "audio";
    return null;
  }

  /** An attachment ready to send: {kind, name, part, ...}; audio other than wav/mp3/flac is
   *  decoded here and sent as 16 kHz wav. */
  async function prepareFile(file) {
    const kind = kindOf(file);
    if (!kind) throw new Error(`${file.name} is neither an image nor audio, so it cannot be attached.`);
    if (kind === "image") {
      const dataUrl = await readAsDataURL(file);
      return { kind, name: file.name, dataUrl, part: { type: "image_url", image_url: { url: dataUrl } } };
    }
    let bytes = new Uint8Array(await file.arrayBuffer());
    let format = audioFormat(file);
    let mime = file.type || "audio/wav";
    if (!format) {
      try {
        bytes = encodeWav(await decodeToMono(bytes, INPUT_RATE), INPUT_RATE);
      } catch (_) {
        throw new Error(`${file.name} could not be read as audio by this browser; try a wav file.`);
      }
      format = "wav";
      mime = "audio/wav";
    }
    return audioAttachment(file.name, bytes, format, mime);
  }

  function audioAttachment(name, bytes, format, mime) {
    return {
      kind: "audio",
      name,
      bytes,
      mime,
      part: { type: "input_audio", input_audio: { data: bytesToBase64(bytes), format } },
    };
  }

  async function addFiles(files) {
    for (const file of files) {
      try {
        addAttachment(await prepareFile(file));
      } catch (err) {
        ui.micNote.textContent = err.message;
        announce(err.message);
      }
    }
  }

  function addAttachment(attachment) {
    state.attachments.push(attachment);
    renderAttachments();
    announce(`attached ${attachment.name}`);
  }

  function renderAttachments() {
    ui.attachments.replaceChildren(
      ...state.attachments.map((a, index) => {
        const preview = a.kind === "image"
          ? el("img", { src: a.dataUrl, alt: "", class: "thumb" })
          : el("span", { class: "badge", text: "audio" });
        const remove = el("button", {
          type: "button",
          class: "small",
          "aria-label": `Remove ${a.name}`,
          text: "×",
          onclick: () => {
            state.attachments.splice(index, 1);
            renderAttachments();
            ui.message.focus();
          },
        });
        return el("li", { class: "chip", "data-kind": a.kind }, preview, el("span", { text: a.name }), remove);
      }),
    );
  }

  // ------------------------------------------------------------------ voice prompts
  async function addVoice(file) {
    try {
      let attachment = await prepareFile(file);
      if (attachment.kind !== "audio") throw new Error(`${file.name} is not audio; a voice prompt is a recording of the voice.`);
      if (attachment.part.input_audio.format !== "wav") {
        // the server reads a voice prompt as wav
        const wav = encodeWav(await decodeToMono(attachment.bytes, INPUT_RATE), INPUT_RATE);
        attachment = audioAttachment(file.name, wav, "wav", "audio/wav");
      }
      const id = `voice-${state.voices.size + 1}`;
      state.voices.set(id, attachment);
      const option = el("option", { value: id, text: `voice of ${file.name}` });
      ui.voice.append(option);
      ui.voice.value = id;
      announce(`voice prompt ${file.name} chosen`);
    } catch (err) {
      ui.micNote.textContent = err.message;
    }
  }

  /** The `audio` object of a spoken reply: OpenAI's fields, and the server's `voice_prompt`
   *  (base64 audio of the voice to speak in) when one is chosen. */
  function speechAudioOptions() {
    const options = { voice: "default", format: "pcm16" }; // streamed audio is pcm16
    const voice = state.voices.get(ui.voice.value);
    if (voice) options.voice_prompt = voice.part.input_audio.data;
    return options;
  }

  // ------------------------------------------------------------------ push to talk
  const recorder = { active: false, starting: false, stream: null, nodes: null, chunks: [], rate: 0, began: 0, ticker: null };

  async function startRecording() {
    if (recorder.active || recorder.starting) return;
    if (state.busy) {
      ui.micNote.textContent = "Wait for the reply (or stop it) before you speak again.";
      return;
    }
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      micUnavailable("this page has no microphone access here (browsers allow it on https or localhost)");
      return;
    }
    const ctx = audioContext();
    if (!ctx) {
      micUnavailable("this browser cannot record audio");
      return;
    }
    recorder.starting = true;
    recorder.cancelled = false;
    let processor;
    try {
      recorder.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true } });
      recorder.chunks = [];
      recorder.rate = ctx.sampleRate;
      processor = await tapNode(ctx, (samples) => recorder.chunks.push(samples));
    } catch (err) {
      recorder.starting = false;
      stopTracks();
      micUnavailable(err.name === "NotAllowedError" ? "permission was refused" : `${err.name || "error"}: ${err.message}`);
      return;
    }
    const source = ctx.createMediaStreamSource(recorder.stream);
    source.connect(processor);
    recorder.nodes = { source, processor };
    recorder.starting = false;
    recorder.active = true;
    recorder.began = performance.now();
    ui.mic.classList.remove("unavailable");
    ui.mic.removeAttribute("aria-disabled");
    if (recorder.cancelled) {
      stopRecording(); // released while the microphone was opening: too short to send
      return;
    }
    ui.mic.setAttribute("aria-pressed", "true");
    ui.mic.classList.add("recording");
    const tick = () => {
      ui.micNote.textContent = `Recording… ${((performance.now() - recorder.began) / 1000).toFixed(1)} s (release to send)`;
    };
    tick();
    recorder.ticker = setInterval(tick, 100);
  }

  // An audio worklet that hands each block of microphone samples to the page.
  const TAP_WORKLET = `registerProcessor("anygpt-tap", class extends AudioWorkletProcessor {
    process(inputs) {
      const channel = inputs[0] && inputs[0][0];
      if (channel) this.port.postMessage(channel.slice(0));
      return true;
    }
  });`;

  /** A node that calls onSamples(Float32Array) with the mono samples it is fed. */
  async function tapNode(ctx, onSamples) {
    if (ctx.audioWorklet && window.AudioWorkletNode) {
      if (!ctx.anygptTapLoaded) {
        const url = URL.createObjectURL(new Blob([TAP_WORKLET], { type: "text/javascript" }));
        await ctx.audioWorklet.addModule(url);
        ctx.anygptTapLoaded = true;
      }
      const node = new AudioWorkletNode(ctx, "anygpt-tap", { numberOfInputs: 1, numberOfOutputs: 0, channelCount: 1, channelCountMode: "explicit" });
      node.port.onmessage = (event) => onSamples(event.data);
      return node;
    }
    const node = ctx.createScriptProcessor(4096, 1, 1); // older browsers
    node.onaudioprocess = (event) => onSamples(new Float32Array(event.inputBuffer.getChannelData(0)));
    node.connect(ctx.destination); // silent: the output buffer is left at zero
    return node;
  }

  function stopTracks() {
    if (recorder.stream) recorder.stream.getTracks().forEach((t) => t.stop());
    recorder.stream = null;
  }

  async function stopRecording() {
    if (recorder.starting) {
      recorder.cancelled = true; // startRecording stops once the microphone is open
      return;
    }
    if (!recorder.active) return;
    recorder.active = false;
    clearInterval(recorder.ticker);
    recorder.nodes.source.disconnect();
    recorder.nodes.processor.disconnect();
    stopTracks();
    ui.mic.setAttribute("aria-pressed", "false");
    ui.mic.classList.remove("recording");
    const length = recorder.chunks.reduce((n, c) => n + c.length, 0);
    if (length < recorder.rate * 0.3) {
      ui.micNote.textContent = "Too short: hold the button while you speak.";
      return;
    }
    const samples = new Float32Array(length);
    let pos = 0;
    for (const c of recorder.chunks) {
      samples.set(c, pos);
      pos += c.length;
    }
    const buffer = new AudioBuffer({ length, numberOfChannels: 1, sampleRate: recorder.rate });
    buffer.copyToChannel(samples, 0);
    const mono16k = await resampleMono(buffer, INPUT_RATE);
    state.recordings += 1;
    const name = `recording ${state.recordings}.wav`;
    ui.micNote.textContent = "";
    addAttachment(audioAttachment(name, encodeWav(mono16k, INPUT_RATE), "wav", "audio/wav"));
    send();
  }

  function micUnavailable(reason) {
    ui.mic.classList.add("unavailable");
    ui.mic.setAttribute("aria-disabled", "true");
    ui.micNote.textContent = `Microphone unavailable: ${reason}. You can still type, or attach an audio file.`;
    announce(ui.micNote.textContent);
  }

  // ------------------------------------------------------------------ sending a turn
  function replyModality() {
    const checked = ui.composer.querySelector('input[name="reply"]:checked');
    return checked ? checked.value : "text";
  }

  /** The request fields that ask for a reply modality. */
  function replyFields(modality) {
    if (modality === "speech") return { modalities: ["text", "audio"], audio: speechAudioOptions() };
    if (modality === "music") return { modalities: ["text", "music"], audio: { format: "pcm16" } };
    if (modality === "image") return { modalities: ["text", "image"] };
    return { modalities: ["text"] };
  }

  function startProgress(controller) {
    const began = performance.now();
    ui.progress.hidden = false;
    ui.send.disabled = true;
    ui.composer.setAttribute("aria-busy", "true");
    const busy = { controller, began, phase: "Waiting for the reply" };
    const tick = () => {
      ui.progressText.textContent = `${busy.phase}… ${((performance.now() - began) / 1000).toFixed(1)} s`;
    };
    tick();
    busy.timer = setInterval(tick, 100);
    state.busy = busy;
    announce("waiting for the reply");
    return busy;
  }

  function endProgress() {
    if (!state.busy) return;
    clearInterval(state.busy.timer);
    state.busy = null;
    ui.progress.hidden = true;
    ui.send.disabled = false;
    ui.composer.removeAttribute("aria-busy");
  }

  async function send() {
    if (state.busy) return;
    const text = ui.message.value.trim();
    const attachments = state.attachments.slice();
    if (!text && !attachments.length) {
      ui.micNote.textContent = "Type a message, record, or attach a file first.";
      ui.message.focus();
      return;
    }
    audioContext(); // inside the user's gesture, so that the reply may play
    const content = [];
    if (text) content.push({ type: "text", text });
    for (const a of attachments) content.push(a.part);
    const userMessage = { role: "user", content };
    ui.message.value = "";
    state.attachments = [];
    renderAttachments();
    ui.micNote.textContent = ui.mic.classList.contains("unavailable") ? ui.micNote.textContent : "";
    showUserTurn(text, attachments);

    const modality = replyModality();
    const controller = new AbortController();
    const busy = startProgress(controller);
    const turn = addTurn("assistant", "AnyGPT");
    turn.item.dataset.modality = modality;
    turn.item.setAttribute("aria-busy", "true");
    try {
      let replyText;
      if (modality === "image" && useImageEndpoint(text, attachments)) {
        replyText = await imageReply(text, turn, controller.signal);
      } else {
        replyText = await chatReply(userMessage, modality, turn, busy, controller.signal);
      }
      state.history.push(userMessage, { role: "assistant", content: replyText });
      turn.item.dataset.done = "true";
      announce(`AnyGPT replied: ${turn.body.innerText.trim().slice(0, 300) || replyText}`);
    } catch (err) {
      turn.item.classList.add("failed");
      if (turn.player) {
        // what came stays to replay; nothing more is played
        turn.player.silence();
        turn.player.finish(performance.now());
      }
      if (err.name === "AbortError") {
        turn.body.append(el("p", { class: "note", text: "Stopped." }));
        announce("stopped");
      } else {
        showError(err instanceof ServerError ? err.message : `Something went wrong: ${err.message}`, turn.body);
      }
    } finally {
      turn.item.removeAttribute("aria-busy");
      endProgress();
      ui.message.focus();
    }
  }

  /** A picture asked for with nothing to see or hear goes to /v1/images/generations. */
  function useImageEndpoint(text, attachments) {
    return Boolean(text) && attachments.length === 0 && state.history.length === 0;
  }

  async function imageReply(prompt, turn, signal) {
    const response = await post("/images/generations", { model: ui.model.value || undefined, prompt, n: 1, response_format: "b64_json" }, signal);
    const result = await response.json();
    const images = (result.data || []).map((d) => (d.b64_json ? `data:image/png;base64,${d.b64_json}` : d.url)).filter(Boolean);
    if (!images.length) throw new ServerError("The server answered without a picture.");
    for (const url of images) showImage(turn.body, url, `picture of: ${prompt}`);
    const revised = (result.data || []).map((d) => d.revised_prompt).filter(Boolean).join(" ");
    if (revised) turn.body.append(el("p", { class: "note", text: revised }));
    return revised || "[image]";
  }

  /** The reply length the person set (tokens), or undefined for the model's own limit. */
  function maxTokens() {
    const value = Number.parseInt(ui.maxTokens.value, 10);
    return value > 0 ? value : undefined;
  }

  async function chatReply(userMessage, modality, turn, busy, signal) {
    const body = {
      model: ui.model.value || "anygpt",
      messages: [...state.history, userMessage],
      stream: true,
      max_tokens: maxTokens(),
      ...replyFields(modality),
    };
    const response = await post("/chat/completions", body, signal);
    const textLine = el("p", { class: "text" });
    turn.body.append(textLine);
    let text = "";
    let transcript = "";
    let player = null;
    const shownImages = new Set();
    const label = modality === "music" ? "music reply" : "spoken reply";
    const render = () => {
      const shown = splitMarkdownImages(text || transcript);
      textLine.textContent = shown.text.trim();
      for (const url of shown.urls) addImage(url);
      scrollToEnd();
    };
    const addImage = (url) => {
      if (shownImages.has(url)) return;
      shownImages.add(url);
      showImage(turn.body, url, "picture from the model");
    };
    await readEvents(response, (event, whole) => {
      if (event.error) throw new ServerError(`The server reported an error: ${errorText(event) || JSON.stringify(event.error)}`);
      if (Array.isArray(event.choices)) {
        const failed = event.choices.find((c) => c && (c.delta || c.message || {}).error);
        if (failed) throw new ServerError(`The model could not answer: ${(failed.delta || failed.message).error}`);
      }
      busy.phase = "Receiving the reply";
      for (const choice of event.choices || []) {
        if ((choice.index || 0) !== 0) continue;
        const part = whole ? choice.message || {} : choice.delta || {};
        const piece = textOf(part.content);
        if (piece) text = whole ? piece : text + piece;
        if (part.audio) {
          if (part.audio.transcript) transcript += part.audio.transcript;
          if (part.audio.data) {
            if (!player) player = turn.player = new StreamPlayer(turn.body, label);
            player.push(part.audio.data, Number(part.audio.sample_rate) || 0);
          }
        }
        imagesOf(part).forEach(addImage);
      }
      render();
    });
    const played = player ? player.finish(performance.now()) : false;
    // the reply text marks where media stood ("[speech]"); the media itself is shown instead
    let shown = splitMarkdownImages(text || transcript).text;
    if (played) shown = shown.replace(/\[(speech|music|audio)\]/g, " ");
    if (shownImages.size) shown = shown.replace(/\[image\]/g, " ");
    shown = shown.replace(/[ \t]{2,}/g, " ").trim();
    textLine.textContent = shown;
    scrollToEnd();
    if (!shown) textLine.remove();
    if (!shown && !player && !shownImages.size) {
      turn.body.append(el("p", { class: "note", text: "(the model answered with nothing)" }));
    }
    return shown || (player ? `[${modality}]` : "") || (shownImages.size ? "[image]" : "");
  }

  // ------------------------------------------------------------------ models
  async function loadModels() {
    try {
      const response = await fetch(`${API}/models`);
      if (!response.ok) throw await responseError(response);
      const models = (await response.json()).data || [];
      ui.model.replaceChildren(...models.map((m) => el("option", { value: m.id, text: m.id })));
      ui.modelNote.textContent = models.length ? "" : "the server lists no model";
    } catch (err) {
      ui.modelNote.textContent = "";
      showError(err instanceof ServerError ? err.message : `Could not list the models: ${err.message}`);
    }
  }

  // ------------------------------------------------------------------ wiring
  function clearConversation() {
    if (state.busy) state.busy.controller.abort();
    for (const player of StreamPlayer.active) player.silence();
    state.history = [];
    state.attachments = [];
    renderAttachments();
    ui.conversation.replaceChildren();
    ui.empty.hidden = false;
    announce("conversation cleared");
    ui.message.focus();
  }

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  ui.message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.busy) state.busy.controller.abort();
  });
  ui.stop.addEventListener("click", () => state.busy && state.busy.controller.abort());
  ui.clear.addEventListener("click", clearConversation);
  ui.attach.addEventListener("click", () => ui.file.click());
  ui.file.addEventListener("change", async () => {
    await addFiles([...ui.file.files]);
    ui.file.value = "";
  });
  ui.voiceAdd.addEventListener("click", () => ui.voiceFile.click());
  ui.voiceFile.addEventListener("change", async () => {
    if (ui.voiceFile.files[0]) await addVoice(ui.voiceFile.files[0]);
    ui.voiceFile.value = "";
  });

  // push to talk: pointer held down, or Space / Enter held on the focused button
  ui.mic.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    ui.mic.setPointerCapture(event.pointerId);
    startRecording();
  });
  for (const name of ["pointerup", "pointercancel"]) ui.mic.addEventListener(name, () => stopRecording());
  ui.mic.addEventListener("keydown", (event) => {
    if (event.key === " " || event.key === "Enter") {
      event.preventDefault();
      if (!event.repeat) startRecording();
    }
  });
  ui.mic.addEventListener("keyup", (event) => {
    if (event.key === " " || event.key === "Enter") {
      event.preventDefault();
      stopRecording();
    }
  });
  ui.mic.addEventListener("blur", () => stopRecording());
  ui.mic.addEventListener("click", (event) => event.preventDefault());
  ui.mic.addEventListener("contextmenu", (event) => event.preventDefault()); // a long touch

  // dropping files anywhere on the page attaches them
  let dragDepth = 0;
  const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    dragDepth += 1;
    ui.dropZone.hidden = false;
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) ui.dropZone.hidden = true;
  });
  document.addEventListener("dragover", (event) => {
    if (hasFiles(event)) event.preventDefault();
  });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    ui.dropZone.hidden = true;
    addFiles([...event.dataTransfer.files]);
  });

  loadModels();
  ui.message.focus();
})();
