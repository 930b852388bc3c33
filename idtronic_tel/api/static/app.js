"use strict";
// The cardholder pages: plain fetch() calls to the JSON API, nothing stored in the browser but the
// personal-section session, kept in memory only (a reload asks for a new code).

async function api(method, path, body, session) {
  const headers = { "content-type": "application/json" };
  if (session) headers.authorization = "Session " + session;
  const response = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const data = response.status === 204 ? {} : await response.json();
  return { status: response.status, data, retryAfter: Number(response.headers.get("Retry-After")) || 0 };
}

function describe(error) {
  if (!error) return "Erreur inattendue.";
  if (error.fields && !Array.isArray(error.fields)) {
    return Object.entries(error.fields).map(([k, v]) => k + " : " + v).join(" ; ");
  }
  return error.message || error.error;
}

// Field errors of a 422 next to their inputs (aria-invalid + a message under the field); returns the
// text for the form's own error line: what could not be put next to a field, or a pointer to the fields.
function showErrors(form, error) {
  for (const old of form.querySelectorAll(".field-error")) old.remove();
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  if (!error) return "";
  if (!error.fields || Array.isArray(error.fields)) return describe(error);
  const rest = {};
  let shown = 0;
  for (const [name, problem] of Object.entries(error.fields)) {
    const input = form.elements[name];
    if (!input || !input.closest) {
      rest[name] = problem;
      continue;
    }
    input.setAttribute("aria-invalid", "true");
    const note = document.createElement("span");
    note.className = "field-error";
    note.dataset.field = name;
    note.textContent = problem;
    input.closest("label").appendChild(note);
    shown += 1;
  }
  if (Object.keys(rest).length) return describe({ fields: rest });
  return shown ? "Vérifiez les champs signalés." : describe(error);
}

async function showNotice() {
  const box = document.getElementById("notice");
  const { data } = await api("GET", "/v1/notice");
  if (data.suspended) {
    box.textContent = data.notice || "Le service est momentanément suspendu.";
    box.hidden = false;
  }
  return data.suspended;
}

function formData(form) {
  const out = {};
  for (const [key, value] of new FormData(form).entries()) if (value !== "") out[key] = value;
  return out;
}

const STATUS = {
  awaiting_callback: "nous allons vous appeler",
  calling: "appel en cours",
  active: "actif",
  failed: "échec de la vérification",
};

const POLL_MS = 3000;

async function refreshEnrollment(identifier) {
  const { status, data, retryAfter } = await api("GET", "/v1/enrollments/" + identifier);
  if (status === 429 || status === 503) {
    // Too many requests, or suspended for a while: keep following, as late as Retry-After asks.
    setTimeout(() => refreshEnrollment(identifier), Math.max(POLL_MS, retryAfter * 1000));
    return;
  }
  if (status !== 200) return;
  document.getElementById("enroll-status").textContent = STATUS[data.status] || data.status;
  document.getElementById("new-callback").hidden = data.status !== "failed";
  if (data.status !== "active" && data.status !== "failed") setTimeout(() => refreshEnrollment(identifier), POLL_MS);
}

function setupEnrollment() {
  const form = document.getElementById("enroll-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const { status, data } = await api("POST", "/v1/enrollments", formData(form));
    if (status !== 201) {
      document.getElementById("enroll-error").textContent = showErrors(form, data);
      return;
    }
    showErrors(form, null);
    document.getElementById("enroll-error").textContent = "";
    form.reset();
    form.hidden = true;
    document.getElementById("identifier").textContent = data.identifier;
    document.getElementById("enroll-result").hidden = false;
    refreshEnrollment(data.identifier);
    document.getElementById("new-callback").onclick = async () => {
      await api("POST", "/v1/enrollments/" + data.identifier + "/callback");
      refreshEnrollment(data.identifier);
    };
  });
  form.hidden = false;  // only now: a submit before this line would be a native GET with the card digits
}

function setupProfile() {
  const challenge = document.getElementById("challenge-form");
  if (!challenge) return;
  let identifier = null;
  let session = null;
  const sessionForm = document.getElementById("session-form");
  const profileForm = document.getElementById("profile-form");

  function fill(profile) {
    for (const name of ["last_name", "first_name", "birth_date", "mobile"]) profileForm.elements[name].value = profile[name] || "";
    document.getElementById("card").textContent = profile.card || "";
    const pending = document.getElementById("pending");
    pending.hidden = !profile.mobile_pending;
    pending.textContent = profile.mobile_pending
      ? "Nouveau numéro " + profile.mobile_pending + " : nous allons l'appeler pour le vérifier."
      : "";
  }

  challenge.addEventListener("submit", async (event) => {
    event.preventDefault();
    identifier = formData(challenge).identifier;
    await api("POST", "/v1/profile/challenges", { identifier });
    sessionForm.hidden = false;
  });
  sessionForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const { status, data } = await api("POST", "/v1/profile/sessions", { identifier, token: formData(sessionForm).token });
    if (status !== 201) {
      document.getElementById("session-error").textContent = describe(data);
      return;
    }
    session = data.session;
    sessionForm.hidden = true;
    challenge.hidden = true;
    const profile = await api("GET", "/v1/profile", null, session);
    fill(profile.data);
    profileForm.hidden = false;
  });
  profileForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const saved = document.getElementById("profile-saved");
    saved.textContent = "";
    const { status, data } = await api("PATCH", "/v1/profile", formData(profileForm), session);
    document.getElementById("profile-error").textContent = status === 200 ? "" : showErrors(profileForm, data);
    if (status === 200) {
      showErrors(profileForm, null);
      fill(data);
      saved.textContent = "Modifications enregistrées.";
    }
  });
  challenge.hidden = false;
}

document.addEventListener("DOMContentLoaded", async () => {
  let suspended = false;
  try {
    suspended = await showNotice();
  } catch (error) {
    // the notice could not be read: the forms still work, and the API answers 503 if suspended
  }
  if (suspended) {
    for (const form of document.querySelectorAll("form")) form.hidden = true;
    return;
  }
  setupEnrollment();
  setupProfile();
});
