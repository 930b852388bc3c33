"use strict";
// What the server-rendered pages add with a script: the first error is focused (screen readers read
// it), and the enrollment result page follows the callback live. Every form works without this file.

const POLL_MS = 3000;

function camel(status) {
  return status.replace(/(^|_)([a-z])/g, (_, __, letter) => letter.toUpperCase());
}

// GET /v1/enrollments/{identifier} every 3 s until the enrollment is active or failed; a 429 or 503
// (too many requests, or suspended) waits as long as its Retry-After asks, then goes on.
async function followEnrollment(live) {
  let wait = POLL_MS;
  try {
    const response = await fetch("/v1/enrollments/" + live.dataset.identifier, { cache: "no-store" });
    if (response.status === 429 || response.status === 503) {
      wait = Math.max(POLL_MS, (Number(response.headers.get("Retry-After")) || 0) * 1000);
    } else if (response.ok) {
      const data = await response.json();
      if (data.status !== live.dataset.status) {
        live.dataset.status = data.status;
        const key = camel(data.status);
        document.getElementById("enroll-status").textContent = live.dataset["label" + key] || data.status;
        document.getElementById("enroll-help").textContent = live.dataset["help" + key] || "";
        const again = document.getElementById("callback-form");
        if (again && !document.getElementById("notice")) again.hidden = data.status !== "failed";
      }
      if (data.status === "active" || data.status === "failed") return;
    } else {
      return; // unknown enrollment: nothing to follow
    }
  } catch (error) {
    // the daemon could not be reached: try again later
  }
  setTimeout(() => followEnrollment(live), wait);
}

document.addEventListener("DOMContentLoaded", () => {
  const problem = document.querySelector("[role=alert]");
  if (problem) problem.focus();
  const live = document.getElementById("enroll-live");
  if (live) setTimeout(() => followEnrollment(live), POLL_MS);
});
