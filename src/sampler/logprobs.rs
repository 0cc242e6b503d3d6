//! Log-probabilities of chosen tokens and their best alternatives (OpenAI's
//! `logprobs` / `top_logprobs`), and what an OpenAI-style request adds to the
//! logits first: its logit bias and its frequency and presence penalties.
//!
//! They are read from the distribution the token is drawn from before its
//! temperature and truncation: the model's logits after the repetition
//! penalty, the logit bias and the grammar mask, at temperature 1 (as
//! llama.cpp's server and OpenAI report them). A masked token has no
//! probability and never appears among the alternatives.

use crate::error::{Error, Result};

/// The most alternatives a request may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A token with its log-probability at one step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Alternative {
    pub token: u32,
    /// What it prints (a control token: its text).
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// One chosen token's log-probability and the best alternatives at its step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenLogprob {
    pub chosen: Alternative,
    /// The `n` most likely tokens at this step, most likely first (ties by id).
    pub top: Vec<Alternative>,
}

/// `log(sum(exp(logits)))` over the finite logits (-inf when none is).
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().filter(|l| l.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = logits.iter().filter(|l| l.is_finite()).map(|&l| ((l - max) as f64).exp()).sum();
    max as f64 + sum.ln()
}

/// The log-probability of `token` and of the `n` most likely tokens under
/// `logits` (`bytes` names a token's text).
pub fn token_logprob(logits: &[f32], token: u32, n: usize, bytes: impl Fn(u32) -> Vec<u8>) -> TokenLogprob {
    let lse = log_sum_exp(logits);
    let lp = |l: f32| if l.is_finite() { (l as f64 - lse) as f32 } else { f32::NEG_INFINITY };
    let mut top: Vec<(u32, f32)> = Vec::new();
    if n > 0 {
        let mut finite: Vec<(u32, f32)> = logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l)).collect();
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if n < finite.len() {
            finite.select_nth_unstable_by(n - 1, by_logit);
            finite.truncate(n);
        }
        finite.sort_unstable_by(by_logit);
        top = finite.into_iter().map(|(i, l)| (i, lp(l))).collect();
    }
    let logprob = logits.get(token as usize).map_or(f32::NEG_INFINITY, |&l| lp(l));
    let alternative = |(token, logprob): (u32, f32)| Alternative { token, bytes: bytes(token), logprob };
    TokenLogprob { chosen: alternative((token, logprob)), top: top.into_iter().map(alternative).collect() }
}

/// A request's additions to the logits: `(token, bias)` pairs, checked
/// against the vocabulary (OpenAI's range, -100 to 100: -100 bans a token).
pub fn check_logit_bias(bias: &[(u32, f32)], vocab_size: usize) -> Result<()> {
    for &(id, b) in bias {
        if id as usize >= vocab_size {
            return Err(Error::InvalidOption(format!("logit_bias names token {id}, past the vocabulary of {vocab_size}")));
        }
        if !(b.is_finite() && (-100.0..=100.0).contains(&b)) {
            return Err(Error::InvalidOption(format!("logit_bias for token {id} must be in [-100, 100] (got {b})")));
        }
    }
    Ok(())
}

/// Adds the bias to the logits (a bias of -100 bans the token outright).
pub fn apply_logit_bias(logits: &mut [f32], bias: &[(u32, f32)]) {
    for &(id, b) in bias {
        if let Some(l) = logits.get_mut(id as usize) {
            *l = if b <= -100.0 { f32::NEG_INFINITY } else { *l + b };
        }
    }
}

/// OpenAI's frequency and presence penalties over the tokens generated so far.
pub fn apply_occurrence_penalties(logits: &mut [f32], generated: &[u32], frequency: f32, presence: f32) {
    if (frequency == 0.0 && presence == 0.0) || generated.is_empty() {
        return;
    }
    let mut counts: Vec<u32> = generated.to_vec();
    counts.sort_unstable();
    for run in counts.chunk_by(|a, b| a == b) {
        if let Some(l) = logits.get_mut(run[0] as usize) {
            *l -= frequency * run.len() as f32 + presence;
        }
    }
}

/// The penalties' range (OpenAI's).
pub fn check_occurrence_penalties(frequency: f32, presence: f32) -> Result<()> {
    for (name, v) in [("frequency_penalty", frequency), ("presence_penalty", presence)] {
        if !(v.is_finite() && (-2.0..=2.0).contains(&v)) {
            return Err(Error::InvalidOption(format!("{name} must be in [-2, 2] (got {v})")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_and_skip_masked_tokens() {
        let logits = [1.0f32, 3.0, f32::NEG_INFINITY, 2.0];
        let named = |id: u32| vec![b'a' + id as u8];
        let t = token_logprob(&logits, 3, 5, named);
        let z = (1f64.exp() + 3f64.exp() + 2f64.exp()).ln();
        assert!((t.chosen.logprob as f64 - (2.0 - z)).abs() < 1e-6);
        assert_eq!(t.chosen.bytes, b"d");
        assert_eq!(t.top.iter().map(|x| x.token).collect::<Vec<_>>(), vec![1, 3, 0]);
        let total: f64 = t.top.iter().map(|x| (x.logprob as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(token_logprob(&logits, 2, 0, named).chosen.logprob, f32::NEG_INFINITY);
    }

    #[test]
    fn logit_bias_is_checked_and_bans_at_minus_100() {
        assert!(check_logit_bias(&[(9, 1.0)], 4).is_err());
        assert!(check_logit_bias(&[(1, 101.0)], 4).is_err());
        let mut l = [0.0f32, 1.0];
        apply_logit_bias(&mut l, &[(0, 2.0), (1, -100.0)]);
        assert_eq!(l, [2.0, f32::NEG_INFINITY]);
    }

    #[test]
    fn occurrence_penalties_count_generated_tokens() {
        let mut l = [0.0f32; 3];
        apply_occurrence_penalties(&mut l, &[2, 0, 2], 0.5, 1.0);
        assert_eq!(l, [-1.5, 0.0, -2.0]);
        assert!(check_occurrence_penalties(2.5, 0.0).is_err());
    }
}
