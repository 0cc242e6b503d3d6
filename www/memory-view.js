// The Memory tab: the conversation as the KV cache holds it, token by token, each token colored by
// where its keys and values live: sinks, the window, the cold tier (compressed), the cold tier's open
// block (compressed once full), or dropped. The cold blocks that the last generated token recalled
// are outlined, brighter the more layers and KV heads chose them: with a cold tier on, a visitor sees
// the model reach back to the fact it needs. All text is inserted with textContent.

const TIER_NAMES = { sink: 'sink', window: 'window', cold: 'cold tier', pending: 'cold tier (open block)', dropped: 'dropped' };

/** @param {HTMLElement} root the tab's element (holds `.memory-summary` and `.memory-text`) */
export function createMemoryView(root) {
  const summary = root.querySelector('.memory-summary');
  const text = root.querySelector('.memory-text');
  let inFlight = false;
  let latest = null; // the engine the newest refresh asked about (null once cleared)
  let stale = false; // a refresh was asked for since the last request went out

  /** Asks the engine for its memory and redraws (skipped while hidden; one request at a time, the newest redone). */
  async function refresh(llm) {
    if (!llm || root.hidden) return;
    latest = llm;
    stale = true;
    if (inFlight) return;
    inFlight = true;
    while (stale && latest) {
      stale = false;
      const asked = latest;
      try {
        const view = await asked.memoryView();
        if (asked === latest) render(view);
      } catch (e) {
        if (asked === latest) clear(`memory unavailable: ${e.message}`);
      }
    }
    inFlight = false;
  }

  /** Forgets what was drawn (another model is loading, or the engine crashed). */
  function clear(why = '–') {
    latest = null;
    stale = false;
    text.replaceChildren();
    summary.textContent = why;
  }

  /** @param {import('./kvchat.js').MemoryView} view */
  function render({ pieces, tiers, recalled }) {
    const strength = recallStrength(pieces.length, recalled);
    const atBottom = text.scrollTop + text.clientHeight >= text.scrollHeight - 8;
    const spans = pieces.map((piece, i) => {
      const span = document.createElement('span');
      span.className = `tok ${tiers[i]}`;
      span.textContent = piece;
      span.title = `#${i} · ${TIER_NAMES[tiers[i]] ?? tiers[i]}${strength[i] ? ` · recalled by ${Math.round(strength[i] * 100)}% of layer heads` : ''}`;
      if (strength[i]) {
        span.classList.add('recalled');
        span.style.setProperty('--recall', String(0.35 + 0.65 * strength[i]));
      }
      return span;
    });
    text.replaceChildren(...spans);
    if (atBottom) text.scrollTop = text.scrollHeight;
    summary.textContent = describe(tiers, recalled);
  }

  return { root, refresh, clear };
}

/** Per position, the share of (layer, KV head) pairs that recalled its block at the last step (0: none). */
function recallStrength(n, recalled) {
  const out = new Float32Array(n);
  const most = Math.max(1, ...recalled.map((b) => b.heads));
  for (const b of recalled) {
    for (let p = b.start; p < Math.min(n, b.start + b.tokens); p++) out[p] = b.heads / most;
  }
  return out;
}

function describe(tiers, recalled) {
  const counts = {};
  for (const t of tiers) counts[t] = (counts[t] ?? 0) + 1;
  const parts = Object.keys(TIER_NAMES).filter((t) => counts[t]).map((t) => `${counts[t]} ${TIER_NAMES[t]}`);
  const blocks = recalled.length
    ? `the last token recalled ${recalled.length} cold block${recalled.length > 1 ? 's' : ''} (${recalled.map((b) => `${b.start}–${b.start + b.tokens - 1}`).join(', ')})`
    : 'nothing recalled at the last token';
  return `${tiers.length} tokens: ${parts.join(' · ') || 'none yet'}. ${blocks}.`;
}
