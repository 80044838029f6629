// Server-Sent Events read with fetch(), because EventSource cannot send the X-API-Key header. It follows
// EventSource's rules: `event:`, `data:`, `id:` and `retry:` lines, an empty line ends an event, a line
// starting with ":" is a comment (keep-alive); a stream that ends normally is reopened after the `retry`
// delay with `Last-Event-ID` (the gateway then sends only what came after); 204 means nothing more will
// come; a dropped connection is retried like an ended stream.
const DEFAULT_RETRY_MS = 2000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Read `url` as an event stream until `close()`, 204, or a refusal that waiting does not cure.
 * `headers()`: the request headers of each attempt (e.g. the API key, read again at every reconnect).
 * `onEvent({type, data, id})` per event; `onDone()` at 204; `onRefused(response, sentHeaders)` for an
 * HTTP error (429 and 503 with Retry-After are retried after it, anything else stops the reader). */
export function openEventStream(url, { headers = () => ({}), onEvent, onDone, onRefused }) {
  const controller = new AbortController();
  const stream = { lastId: "", retryMs: DEFAULT_RETRY_MS, closed: false };
  const close = () => {
    stream.closed = true;
    controller.abort();
  };
  const run = async () => {
    while (!stream.closed) {
      const sent = new Headers(headers());
      sent.set("Accept", "text/event-stream");
      if (stream.lastId) sent.set("Last-Event-ID", stream.lastId);
      let response = null;
      try {
        response = await fetch(url, { headers: sent, cache: "no-store", signal: controller.signal });
        if (response.status === 204) {
          close();
          onDone();
          return;
        }
        if (!response.ok) {
          const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
          const waiting = [429, 503].includes(response.status) && retry >= 0;
          await onRefused(response, sent);
          if (!waiting) return close();
          await sleep(retry * 1000);
          continue;
        }
        await readEvents(response.body, stream, onEvent);
      } catch {
        if (stream.closed) return; // close() aborted the request
        // the connection dropped (or never opened): try again after the retry delay, as EventSource does
      }
      if (!stream.closed) await sleep(stream.retryMs);
    }
  };
  run();
  return { close };
}

async function readEvents(body, stream, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done || stream.closed) return;
    buffer += value;
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (const raw of lines) {
      const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (line === "") {
        if (data.length) onEvent({ type: type || "message", data: data.join("\n"), id: stream.lastId });
        if (stream.closed) return;
        type = "";
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "event") type = text;
      else if (field === "data") data.push(text);
      else if (field === "id" && !text.includes("\0")) stream.lastId = text;
      else if (field === "retry" && /^\d+$/.test(text)) stream.retryMs = Number(text);
    }
  }
}
