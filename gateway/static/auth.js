// The API key: typed into the page's key field, kept in this browser's localStorage, sent as X-API-Key
// with every request the page makes (none when the field is empty: a gateway without auth needs none).
// Also the one place that turns the gateway's answers into sentences, refusals (401/403/429) included.
const STORAGE_KEY = "vision.apiKey";
const PRINTABLE = /^[\x21-\x7e]+$/; // what an HTTP header can carry; fetch() throws on anything else

function readStored() {
  try {
    return localStorage.getItem(STORAGE_KEY) || "";
  } catch {
    return ""; // storage disabled: the key lasts as long as the page
  }
}

function store(key) {
  try {
    if (key) localStorage.setItem(STORAGE_KEY, key);
    else localStorage.removeItem(STORAGE_KEY);
  } catch {
    // storage disabled or full: the key still works until the page is closed
  }
}

let currentKey = readStored();

/** `options` for fetch() with the X-API-Key header added when there is a key. */
export function withKey(options = {}) {
  if (!currentKey) return options;
  const headers = new Headers(options.headers || {});
  headers.set("X-API-Key", currentKey);
  return { ...options, headers };
}

/** A plain sentence for a refused request: what happened, what to do, the gateway's own message. */
export function refusalMessage(response, body, keySent) {
  const error = body && typeof body === "object" && body.error && typeof body.error === "object" ? body.error : {};
  const detail = typeof error.message === "string" && error.message ? error.message : response.statusText;
  const retry = (response.headers.get("Retry-After") || "").trim();
  const wait = /^\d+$/.test(retry) ? `: try again in ${retry} s` : "";
  let headline = "";
  if (response.status === 401) {
    headline = keySent ? "The API key was refused: check it or ask for a new one" : "This page needs an API key: paste one above";
  } else if (response.status === 403 && error.code === "forbidden") {
    headline = "Your key's role does not allow this";
  } else if (response.status === 429) {
    headline = (error.code === "quota_exceeded" ? "Over your quota" : "Too many requests") + wait;
  }
  const said = detail ? `${headline ? " — " : ""}${detail}` : "";
  return `${headline}${said} (HTTP ${response.status})`;
}

async function send(path, options) {
  try {
    return await fetch(path, withKey(options));
  } catch (err) {
    throw new Error(`The gateway could not be reached (${err.message}).`);
  }
}

/** fetch() a JSON endpoint with the key; the body, or an Error whose message is a plain sentence. */
export async function api(path, options = {}) {
  const keySent = Boolean(currentKey);
  const response = await send(path, options);
  const body = await response.json().catch(() => null);
  if (!response.ok || (body && body.success === false)) throw new Error(refusalMessage(response, body, keySent));
  return body;
}

/** An object URL for an image behind the key (an <img src> cannot send headers); revoke it when done. */
export async function blobUrl(path) {
  const keySent = Boolean(currentKey);
  const response = await send(path, {});
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw new Error(refusalMessage(response, body, keySent));
  }
  return URL.createObjectURL(await response.blob());
}

/** Wire the key field: Enter or leaving the field applies it, Show/Hide reveals it, Clear forgets it.
 * `onChange` runs after the key in use changed (to reload what the old key could not see). */
export function initKeyField(onChange) {
  const input = document.getElementById("api-key");
  const note = document.getElementById("key-note");
  const show = document.getElementById("key-show");
  const describe = () => {
    note.textContent = currentKey ? "sent with every request, kept in this browser" : "";
  };
  const apply = () => {
    const key = input.value.trim();
    if (key && !PRINTABLE.test(key)) {
      note.textContent = "an API key has no spaces or accented letters: check what was pasted";
      return;
    }
    if (key === currentKey) return describe();
    currentKey = key;
    store(key);
    describe();
    onChange();
  };
  input.value = currentKey;
  describe();
  input.addEventListener("change", apply);
  document.getElementById("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    apply();
  });
  show.addEventListener("click", () => {
    const reveal = input.type === "password";
    input.type = reveal ? "text" : "password";
    show.setAttribute("aria-pressed", String(reveal));
    show.textContent = reveal ? "Hide" : "Show";
  });
  document.getElementById("key-clear").addEventListener("click", () => {
    input.value = "";
    apply();
    input.focus();
  });
}
