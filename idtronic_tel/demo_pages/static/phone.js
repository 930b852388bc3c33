"use strict";
// The handset simulator, live: polls /demo/phone/state every second (a 429 or 503 waits as long as its
// Retry-After asks), shows the call's progress and the new SMS, and sends the keypad's keys (buttons
// and keyboard) without reloading the page, one after the other in the order they were keyed.

const STATE_MS = 1000;
let sending = Promise.resolve();
let timer = null;

// The next look at the state, in `ms` (sooner after an action of the user's).
function schedule(ms) {
  clearTimeout(timer);
  timer = setTimeout(follow, ms);
}

function phone() {
  return document.getElementById("phone");
}

function post(form, extra) {
  const body = new URLSearchParams(new FormData(form));
  for (const [name, value] of Object.entries(extra || {})) body.set(name, value);
  return fetch(form.action, { method: "POST", body, redirect: "manual", cache: "no-store" });
}

function key(digit) {
  const form = document.getElementById("keys-form");
  if (!form || form.hidden) return;
  sending = sending.then(() => post(form, { keys: digit })).catch(() => undefined);
  sending.then(() => schedule(150));
}

function setText(id, text) {
  const element = document.getElementById(id);
  if (element && element.textContent !== text) element.textContent = text;
}

function showCall(call) {
  const panel = document.getElementById("call");
  if (!panel) return;
  const state = call ? call.state : "";
  panel.dataset.state = state;
  panel.dataset.call = call ? call.id : "";
  panel.className = state === "ringing" ? "call ringing" : "call";
  for (const input of panel.querySelectorAll("input[name=call]")) input.value = call ? call.id : "";
  setText("call-status", call ? call.label : "Aucun appel.");
  setText("call-prompt", call ? call.prompt : "");
  setText("call-listening", call && call.listening ? "Le service écoute : tapez maintenant." : "");
  setText("call-keyed", call ? call.keyed : "");
  const shown = { "answer-form": "ringing", "decline-form": "ringing", "keys-form": "connected",
                  "hangup-form": "connected" };
  for (const [id, when] of Object.entries(shown)) {
    const form = document.getElementById(id);
    if (form) form.hidden = state !== when;
  }
}

function showSms(messages) {
  const list = document.getElementById("sms-list");
  if (!list) return;
  const known = Array.from(list.children).map((item) => item.dataset.id).join(",");
  if (known === messages.map((m) => m.id).join(",")) return;
  list.replaceChildren(...messages.map((m) => {
    const item = document.createElement("li");
    item.className = "sms";
    item.dataset.id = m.id;
    const time = document.createElement("time");
    time.textContent = "reçu à " + m.at;
    const text = document.createElement("span");
    text.textContent = m.text;
    item.append(time, text);
    return item;
  }));
  const none = document.getElementById("no-sms");
  if (none) none.hidden = messages.length > 0;
}

async function follow() {
  const here = phone();
  let wait = STATE_MS;
  try {
    const query = here.dataset.number ? "?numero=" + encodeURIComponent(here.dataset.number) : "";
    const response = await fetch("/demo/phone/state" + query, { cache: "no-store" });
    if (response.status === 429 || response.status === 503) {
      wait = Math.max(STATE_MS, (Number(response.headers.get("Retry-After")) || 0) * 1000);
    } else if (response.ok) {
      const data = await response.json();
      if (data.number !== here.dataset.number || data.numbers.join(",") !== here.dataset.numbers) {
        // A first call or SMS, or a new number: the page shows the phone it belongs to.
        if (!data.numbers.includes(here.dataset.number) || !here.dataset.number) {
          window.location.assign("/demo/phone" + (data.number ? "?numero=" + data.number : ""));
          return;
        }
        here.dataset.numbers = data.numbers.join(",");
      }
      if (String(data.version) !== here.dataset.version) {
        here.dataset.version = String(data.version);
        showCall(data.call);
        showSms(data.sms);
      }
    }
  } catch (error) {
    // the daemon could not be reached: try again later
  }
  schedule(wait);
}

document.addEventListener("DOMContentLoaded", () => {
  const here = phone();
  if (!here) return;
  const keys = document.getElementById("keys-form");
  if (keys) {
    keys.addEventListener("submit", (event) => {
      event.preventDefault();
      if (event.submitter && event.submitter.value) key(event.submitter.value);
    });
  }
  for (const id of ["answer-form", "decline-form", "hangup-form"]) {
    const form = document.getElementById(id);
    if (form) {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        post(form).catch(() => undefined).then(() => schedule(150));
      });
    }
  }
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA")) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (/^[0-9*#]$/.test(event.key)) {
      event.preventDefault();
      key(event.key);
    }
  });
  schedule(STATE_MS);
});
