// tvd dashboard: the live audit feed and in-browser checkpoint
// verification. No dependencies; WebCrypto does SHA-256 and Ed25519.
"use strict";

const enc = new TextEncoder();

function b64(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function hex(b) {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function concat(...parts) {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

async function sha256(b) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", b));
}

// hashChildren is RFC 6962's interior node hash.
async function hashChildren(l, r) {
  return sha256(concat(new Uint8Array([1]), l, r));
}

// parseVerifierKey reads a note verifier key: NAME+HASH+BASE64(0x01||KEY).
function parseVerifierKey(vk) {
  const i = vk.indexOf("+"), j = vk.indexOf("+", i + 1);
  if (i < 0 || j < 0) throw new Error("verifier key: want name+hash+key");
  const name = vk.slice(0, i), hash = vk.slice(i + 1, j), key = b64(vk.slice(j + 1));
  if (key.length !== 33 || key[0] !== 1) throw new Error("verifier key: not an Ed25519 note key");
  if (!/^[0-9a-f]{8}$/.test(hash)) throw new Error("verifier key: bad key hash");
  return { name, hash, pub: key.slice(1), raw: key };
}

// verifyNote checks a signed note (golang.org/x/mod/sumdb/note) with the
// key and returns its text.
async function verifyNote(signed, vk) {
  const key = parseVerifierKey(vk);
  const split = signed.lastIndexOf("\n\n");
  if (split < 0) throw new Error("checkpoint: no signature block");
  const text = signed.slice(0, split + 1);
  const sigs = signed.slice(split + 2).split("\n").filter((l) => l !== "");
  const want = await sha256(concat(enc.encode(key.name + "\n"), key.raw));
  const pubKey = await crypto.subtle.importKey("raw", key.pub, { name: "Ed25519" }, false, ["verify"]);
  for (const line of sigs) {
    const m = /^\u2014 (\S+) (\S+)$/.exec(line);
    if (!m || m[1] !== key.name) continue;
    const sig = b64(m[2]);
    if (sig.length !== 68 || !equal(sig.slice(0, 4), want.slice(0, 4))) continue;
    if (await crypto.subtle.verify({ name: "Ed25519" }, pubKey, sig.slice(4), enc.encode(text))) {
      return text;
    }
    throw new Error("checkpoint: the signature does not verify");
  }
  throw new Error("checkpoint: no signature by " + key.name);
}

function parseCheckpoint(text) {
  const lines = text.split("\n");
  if (lines.length < 4 || !/^(0|[1-9][0-9]*)$/.test(lines[1])) throw new Error("checkpoint: malformed body");
  const root = b64(lines[2]);
  if (root.length !== 32) throw new Error("checkpoint: root hash is not 32 bytes");
  return { origin: lines[0], size: Number(lines[1]), root };
}

// verifyConsistency is RFC 9162 section 2.1.4.2.
async function verifyConsistency(size1, size2, root1, root2, proof) {
  if (size1 === size2) {
    if (proof.length !== 0) throw new Error("consistency: proof for equal sizes must be empty");
    if (!equal(root1, root2)) throw new Error("consistency: same size, different roots");
    return;
  }
  if (size1 === 0) return;
  if (size1 > size2) throw new Error("consistency: the log shrank");
  if (proof.length === 0) throw new Error("consistency: empty proof");
  let path = proof.slice();
  if ((size1 & (size1 - 1)) === 0) path.unshift(root1);
  let fn = size1 - 1, sn = size2 - 1;
  while (fn & 1) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
  let fr = path[0], sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0) throw new Error("consistency: proof too long");
    if ((fn & 1) || fn === sn) {
      fr = await hashChildren(c, fr);
      sr = await hashChildren(c, sr);
      if (!(fn & 1)) {
        while (!(fn & 1) && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
      }
    } else {
      sr = await hashChildren(sr, c);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  if (sn !== 0) throw new Error("consistency: proof too short");
  if (!equal(fr, root1)) throw new Error("consistency: does not match the earlier root");
  if (!equal(sr, root2)) throw new Error("consistency: does not match the new root");
}

const store = {
  get(k) { try { return JSON.parse(localStorage.getItem("tvd." + k)); } catch (e) { return null; } },
  set(k, v) { localStorage.setItem("tvd." + k, JSON.stringify(v)); },
};

async function verifyLatest() {
  const out = document.getElementById("checkpoint-result");
  const body = document.getElementById("checkpoint-body");
  out.className = "result";
  out.textContent = "verifying…";
  try {
    const prev = store.get("checkpoint");
    const q = prev ? "?old=" + prev.size : "";
    const resp = await fetch("/ui/api/checkpoint" + q, { credentials: "same-origin" });
    if (!resp.ok) throw new Error("fetch checkpoint: " + resp.status);
    const cp = await resp.json();
    const pinned = store.get("verifierKey");
    if (pinned && pinned !== cp.verifierKey) {
      throw new Error("the log's verifier key changed from the pinned " + pinned + " to " + cp.verifierKey);
    }
    const text = await verifyNote(cp.signed, pinned || cp.verifierKey);
    const c = parseCheckpoint(text);
    let how = "signature verified";
    if (prev && prev.size > 0) {
      if (prev.size > c.size) throw new Error("the log shrank from " + prev.size + " to " + c.size);
      if (prev.size < c.size && cp.oldSize !== prev.size) throw new Error("the server sent no consistency proof from " + prev.size);
      await verifyConsistency(prev.size, c.size, b64(prev.root), c.root, (cp.consistency || []).map(b64));
      how += "; consistent with the checkpoint verified before (size " + prev.size + ")";
    }
    if (!pinned) store.set("verifierKey", cp.verifierKey);
    store.set("checkpoint", { size: c.size, root: btoa(String.fromCharCode(...c.root)) });
    document.getElementById("pinned-key").textContent = store.get("verifierKey");
    body.textContent = text;
    out.className = "result ok";
    out.textContent = "checkpoint verified: size " + c.size + ", root " + hex(c.root).slice(0, 16) + "… (" + how + ")";
  } catch (e) {
    out.className = "result bad";
    out.textContent = "checkpoint NOT verified: " + e.message;
  }
}

let lastEvent = -1;

async function pollEvents() {
  const list = document.getElementById("events");
  if (!list) return;
  const dom = list.dataset.domain || "";
  try {
    const resp = await fetch("/ui/api/events?limit=50&after=" + lastEvent + "&domain=" + encodeURIComponent(dom), { credentials: "same-origin" });
    if (resp.ok) {
      for (const ev of await resp.json()) {
        lastEvent = Math.max(lastEvent, ev.index);
        const li = document.createElement("li");
        li.className = "kind-" + ev.kind;
        li.value = ev.index;
        const detail = ev.detail ? Object.entries(ev.detail).map(([k, v]) => k + "=" + v).join(" ") : "";
        li.textContent = ev.time.slice(0, 19) + "Z " + ev.kind + " " + (ev.domain || "-") + " " + (ev.subject || "") + " " + detail;
        list.insertBefore(li, list.firstChild);
      }
      while (list.children.length > 200) list.removeChild(list.lastChild);
    }
  } catch (e) {
    // The controller may be restarting; try again at the next tick.
  }
  setTimeout(pollEvents, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  const btn = document.getElementById("verify-checkpoint");
  if (btn) {
    btn.addEventListener("click", verifyLatest);
    document.getElementById("pinned-key").textContent = store.get("verifierKey") || "none";
    if (document.getElementById("checkpoint").dataset.auto === "1") verifyLatest();
  }
  pollEvents();
});
