//! Logits → the next token: greedy at temperature 0, otherwise repetition
//! penalty, temperature, top-k, top-p and min-p, drawn from a seeded RNG so a
//! seed reproduces a sample on every platform.

use crate::error::{Error, Result};

pub mod constraint;
pub mod logprobs;

/// Sampling settings of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// 0 is greedy.
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1 disables top-p.
    pub top_p: f32,
    /// 0 disables min-p.
    pub min_p: f32,
    /// 1 disables the penalty.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// None draws a seed from the platform's randomness.
    pub seed: Option<u64>,
}

/// The one set of defaults of every entry point (JS API, CLI, protocol): no
/// repetition penalty unless asked for, so temperature 0 is plain argmax
/// and the browser's greedy text is the CLI's and llama.cpp's.
impl Default for SamplerConfig {
    fn default() -> Self {
        Self { temperature: 0.7, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 1.0, repeat_last_n: 64, seed: None }
    }
}

impl SamplerConfig {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repeat_penalty: 1.0, repeat_last_n: 64, seed: Some(0) }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::InvalidOption(what.to_string()));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(&format!("temperature must be a number >= 0 (got {})", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(&format!("top_p must be in (0, 1] (got {})", self.top_p));
        }
        if !(self.min_p >= 0.0 && self.min_p < 1.0) {
            return bad(&format!("min_p must be in [0, 1) (got {})", self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad(&format!("repeat_penalty must be a number > 0 (got {})", self.repeat_penalty));
        }
        Ok(())
    }
}

/// xoshiro256** seeded through splitmix64: small, fast and identical everywhere.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self { s: [next(), next(), next(), next()] }
    }

    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // No entropy source: fall back to a fixed seed rather than failing.
        return 0x5EED;
    }
    u64::from_le_bytes(b)
}

/// Picks tokens from logits.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Rng,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Result<Self> {
        cfg.validate()?;
        let seed = cfg.seed.unwrap_or_else(random_seed);
        Ok(Self { cfg, rng: Rng::new(seed), candidates: Vec::new() })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Chooses the next token. `history` is the sequence so far (for the penalty).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.apply_penalty(logits, history);
        self.sample_penalized(logits)
    }

    /// The repetition penalty, in place.
    pub fn apply_penalty(&self, logits: &mut [f32], history: &[u32]) {
        if let Some((ids, penalty)) = self.penalty_ids(history) {
            for id in ids {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
                }
            }
        }
    }

    /// The distinct recent ids the repetition penalty applies to, and the
    /// penalty (None when it is off). The GPU applies it with these.
    pub fn penalty_ids(&self, history: &[u32]) -> Option<(Vec<u32>, f32)> {
        let cfg = self.cfg;
        if cfg.repeat_penalty == 1.0 || cfg.repeat_last_n == 0 {
            return None;
        }
        let start = history.len().saturating_sub(cfg.repeat_last_n);
        let mut seen: Vec<u32> = history[start..].to_vec();
        seen.sort_unstable();
        seen.dedup();
        Some((seen, cfg.repeat_penalty))
    }

    /// [`sample`](Self::sample) for logits the penalty was already applied to.
    pub fn sample_penalized(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature == 0.0 {
            return argmax(logits);
        }
        self.candidates.clear();
        // A masked or banned token (-inf) is never a candidate.
        self.candidates.extend(logits.iter().enumerate().filter(|(_, l)| !l.is_nan() && **l > f32::NEG_INFINITY).map(|(i, &l)| (i as u32, l)));
        self.pick()
    }

    /// Samples from the best `(id, logit)` pairs of penalized logits: exactly
    /// what [`sample`](Self::sample) picks when they include its top-k (the
    /// GPU reads back the top 64 for a top-k of at most 64).
    pub fn sample_candidates(&mut self, candidates: &[(u32, f32)]) -> u32 {
        self.candidates.clear();
        self.candidates.extend(candidates.iter().filter(|(_, l)| !l.is_nan()));
        if self.cfg.temperature == 0.0 {
            let best = self.candidates.iter().fold(None::<(u32, f32)>, |b, &c| match b {
                Some(b) if b.1 > c.1 || (b.1 == c.1 && b.0 < c.0) => Some(b),
                _ => Some(c),
            });
            return best.map(|b| b.0).unwrap_or(0);
        }
        self.pick()
    }

    /// Temperature, top-k, min-p and top-p over `self.candidates`, then a draw.
    fn pick(&mut self) -> u32 {
        let cfg = self.cfg;
        let c = &mut self.candidates;
        if c.is_empty() {
            return 0;
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if cfg.top_k > 0 && cfg.top_k < c.len() {
            c.select_nth_unstable_by(cfg.top_k - 1, by_logit);
            c.truncate(cfg.top_k);
        }
        c.sort_unstable_by(by_logit);
        // Softmax at the temperature.
        let max = c[0].1;
        let mut sum = 0.0f64;
        for e in c.iter_mut() {
            let p = (((e.1 - max) / cfg.temperature) as f64).exp();
            e.1 = p as f32;
            sum += p;
        }
        for e in c.iter_mut() {
            e.1 = (e.1 as f64 / sum) as f32;
        }
        if cfg.min_p > 0.0 {
            let floor = c[0].1 * cfg.min_p;
            let keep = c.iter().take_while(|e| e.1 >= floor).count().max(1);
            c.truncate(keep);
        }
        if cfg.top_p < 1.0 {
            let mut acc = 0.0f32;
            let mut keep = c.len();
            for (i, e) in c.iter().enumerate() {
                acc += e.1;
                if acc >= cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep);
        }
        let total: f64 = c.iter().map(|e| e.1 as f64).sum();
        let mut r = self.rng.next_f64() * total;
        for e in c.iter() {
            r -= e.1 as f64;
            if r < 0.0 {
                return e.0;
            }
        }
        c[c.len() - 1].0
    }
}

/// Index of the largest logit (the first one on ties); NaNs are ignored.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}
