"use strict";
// bilayer live (docs/serve.md): a photo becomes an avatar on the server; camera frames go to it over
// a WebSocket as JPEG, one at a time (the next only when the previous answer has arrived), and its
// renders come back as JPEG; a driving video is rendered as a job whose mp4 is played here.
// window.bilayerStats: {frames, latency_ms_p50, latency_ms_p99, fps}, from camera frame to drawn render.

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const MAX_SIDE = 640; // camera frames are scaled down to this longest side before they are sent
const JPEG_QUALITY = 0.8;
const LATENCY_WINDOW = 300; // frames in the latency percentiles
const FPS_WINDOW_MS = 2000;

window.bilayerStats = { frames: 0, latency_ms_p50: 0, latency_ms_p99: 0, fps: 0 };

let avatar = null; // Promise of the current photo's avatar {id, size, crop}
let camera = null; // the camera's MediaStream
let live = null; // the open stream: {socket, sentAt, newFrame}
const latencies = [];
const drawnAt = [];

function withToken(url) {
  return token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;
}

function authHeaders() {
  return token ? { Authorization: "Bearer " + token } : {};
}

function say(element, text, error = false) {
  element.textContent = text;
  element.classList.toggle("error", error);
}

async function api(method, url, body) {
  const response = await fetch(url, { method, body, headers: authHeaders() });
  const data = await response.json().catch(() => ({})); // a 204 has no body
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

// Query options of the stream and of video jobs; pasted back, the photo is the background.
function renderOptions() {
  const options = new URLSearchParams({
    side_by_side: $("side-by-side").checked ? "1" : "0",
    paste_back: $("paste-back").checked ? "1" : "0",
  });
  if (!$("paste-back").checked) options.set("background", $("background").value);
  return options;
}

$("paste-back").addEventListener("change", () => {
  $("background").disabled = $("paste-back").checked;
});

// ---- the photo ------------------------------------------------------------------------------------

$("photo").addEventListener("change", () => {
  const file = $("photo").files[0];
  if (!file) return;
  const previous = avatar;
  const form = new FormData();
  form.append("photo", file);
  say($("photo-status"), "creating the avatar…");
  avatar = api("POST", "/api/avatars", form);
  avatar.then((made) => {
    $("source").src = made.crop;
    $("source").hidden = false;
    say($("photo-status"), `avatar ready (${made.size} x ${made.size} px)`);
    if (previous) previous.then((old) => api("DELETE", `/api/avatars/${old.id}`)).catch(() => {});
    if (live) openStream(made.id);
  }, (error) => say($("photo-status"), error.message, true));
});

// ---- the camera -----------------------------------------------------------------------------------

async function currentAvatar(status) {
  if (!avatar) {
    say(status, "choose a photo first", true);
    return null;
  }
  try {
    return await avatar;
  } catch (error) {
    say(status, "no avatar: " + error.message, true);
    return null;
  }
}

$("start-camera").addEventListener("click", async () => {
  const status = $("live-status");
  const made = await currentAvatar(status);
  if (!made) return;
  try {
    camera = camera || (await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false }));
  } catch (error) {
    say(status, "no camera: " + error.message, true);
    return;
  }
  $("camera").srcObject = camera;
  await $("camera").play();
  watchFrames($("camera"));
  openStream(made.id);
  $("stop-camera").disabled = false;
});

$("stop-camera").addEventListener("click", () => {
  closeStream();
  if (camera) camera.getTracks().forEach((track) => track.stop());
  camera = null;
  $("stop-camera").disabled = true;
  say($("live-status"), "stopped");
});

for (const id of ["background", "side-by-side", "paste-back"]) {
  $(id).addEventListener("change", async () => {
    if (live) openStream((await avatar).id);
  });
}

function openStream(avatarId) {
  closeStream();
  const url = new URL(`/api/avatars/${avatarId}/drive?${renderOptions()}`, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const state = { socket: new WebSocket(withToken(url.href)), sentAt: null, newFrame: false };
  state.socket.binaryType = "blob";
  state.socket.onopen = () => {
    say($("live-status"), "live");
    sendFrame(state);
  };
  state.socket.onmessage = (event) => receive(state, event.data);
  state.socket.onclose = (event) => {
    if (live === state) {
      live = null;
      say($("live-status"), "the stream closed" + (event.reason ? ": " + event.reason : ""), event.code !== 1000);
    }
  };
  live = state;
}

function closeStream() {
  if (live) {
    const socket = live.socket;
    live = null;
    socket.close(1000);
  }
}

// Each new camera frame marks the stream as having something to send; it is sent when the previous
// answer has arrived (one frame in flight: a queue of frames would only add latency).
function watchFrames(video) {
  if (video.watching) return;
  video.watching = true;
  const onFrame = (now, metadata) => {
    if (live) {
      live.newFrame = true;
      live.frameTime = metadata && (metadata.captureTime || metadata.presentationTime);
      sendFrame(live);
    }
    video.requestVideoFrameCallback(onFrame);
  };
  if (video.requestVideoFrameCallback) {
    video.requestVideoFrameCallback(onFrame);
  } else { // without per-frame callbacks: poll the video's time
    let last = -1;
    const poll = () => {
      if (video.currentTime !== last) {
        last = video.currentTime;
        onFrame(performance.now(), null);
      }
      requestAnimationFrame(poll);
    };
    requestAnimationFrame(poll);
  }
}

const grabber = document.createElement("canvas");

function sendFrame(state) {
  const video = $("camera");
  if (state.sentAt !== null || !state.newFrame || state.socket.readyState !== WebSocket.OPEN || !video.videoWidth) return;
  const start = state.frameTime || performance.now();
  const scale = Math.min(1, MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
  grabber.width = Math.round(video.videoWidth * scale);
  grabber.height = Math.round(video.videoHeight * scale);
  grabber.getContext("2d").drawImage(video, 0, 0, grabber.width, grabber.height);
  state.newFrame = false;
  state.sentAt = start;
  grabber.toBlob((blob) => {
    if (state.socket.readyState === WebSocket.OPEN) state.socket.send(blob);
  }, "image/jpeg", JPEG_QUALITY);
}

async function receive(state, data) {
  const sentAt = state.sentAt;
  if (typeof data === "string") { // a problem with that frame: {"error": ...}
    say($("live-status"), JSON.parse(data).error, true);
  } else {
    const bitmap = await createImageBitmap(data);
    const canvas = $("avatar");
    if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
    }
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    record(performance.now(), sentAt);
  }
  state.sentAt = null;
  if (live === state) sendFrame(state);
}

function percentile(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] : 0;
}

function record(now, sentAt) {
  latencies.push(now - sentAt);
  if (latencies.length > LATENCY_WINDOW) latencies.shift();
  drawnAt.push(now);
  while (drawnAt.length && drawnAt[0] < now - FPS_WINDOW_MS) drawnAt.shift();
  const sorted = [...latencies].sort((a, b) => a - b);
  const span = drawnAt.length > 1 ? drawnAt[drawnAt.length - 1] - drawnAt[0] : 0;
  window.bilayerStats = {
    frames: window.bilayerStats.frames + 1,
    latency_ms_p50: percentile(sorted, 50),
    latency_ms_p99: percentile(sorted, 99),
    fps: span > 0 ? (1000 * (drawnAt.length - 1)) / span : 0,
  };
  const s = window.bilayerStats;
  say($("live-status"), `live: ${s.fps.toFixed(1)} fps, latency ${s.latency_ms_p50.toFixed(0)} ms (p50), ` +
    `${s.latency_ms_p99.toFixed(0)} ms (p99), ${s.frames} frames`);
}

// ---- a driving video ------------------------------------------------------------------------------

$("animate").addEventListener("click", async () => {
  const status = $("job-status");
  const file = $("video").files[0];
  if (!file) return say(status, "choose a video first", true);
  const made = await currentAvatar(status);
  if (!made) return;
  const progress = $("job-progress");
  progress.hidden = false;
  $("result").hidden = $("download").hidden = true;
  const form = new FormData();
  form.append("video", file);
  const request = new XMLHttpRequest(); // fetch reports no upload progress
  request.open("POST", `/api/avatars/${made.id}/jobs?${renderOptions()}`);
  for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
  request.upload.onprogress = (event) => {
    if (event.lengthComputable) {
      progress.value = event.loaded / event.total;
      say(status, `uploading: ${Math.round(100 * progress.value)} %`);
    }
  };
  request.onerror = () => say(status, "upload failed", true);
  request.onload = () => {
    const job = JSON.parse(request.responseText || "{}");
    if (request.status !== 202) {
      progress.hidden = true;
      return say(status, job.error || `upload failed (${request.status})`, true);
    }
    follow(job.id);
  };
  say(status, "uploading…");
  request.send(form);
});

async function follow(jobId) {
  const status = $("job-status");
  const progress = $("job-progress");
  progress.removeAttribute("value"); // rendering: indeterminate
  for (;;) {
    let job;
    try {
      job = await api("GET", `/api/jobs/${jobId}`);
    } catch (error) {
      progress.hidden = true;
      return say(status, error.message, true);
    }
    if (job.state === "done") {
      progress.hidden = true;
      say(status, `done: ${job.frames} frames at ${job.fps} fps${job.has_audio ? ", with audio" : ""}, ` +
        `in ${job.elapsed_s} s`);
      $("result").src = withToken(job.video);
      $("result").hidden = false;
      $("download").href = withToken(job.video + "?download=1");
      $("download").hidden = false;
      return;
    }
    if (job.state === "failed") {
      progress.hidden = true;
      return say(status, job.error, true);
    }
    if (job.state === "running" && job.total_frames) {
      progress.value = job.done_frames / job.total_frames;
      say(status, `rendering: frame ${job.done_frames} of ${job.total_frames}, ${job.elapsed_s} s`);
    } else {
      const frames = job.done_frames ? `: frame ${job.done_frames}` : "";
      say(status, `${job.state === "queued" ? "waiting for the server" : "rendering" + frames}… ${job.elapsed_s} s`);
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}
