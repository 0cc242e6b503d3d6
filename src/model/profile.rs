//! Where a token's time goes: the forward pass times each kind of operation
//! when profiling is on (`kvchat bench --profile`, `KvEngine.setProfiling`).

use web_time::Instant;

/// The operation kinds the forward pass reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    MatmulQkv,
    MatmulO,
    MatmulGateUp,
    MatmulDown,
    MatmulOutput,
    Attention,
    /// Choosing and dequantizing cold-tier blocks.
    KvRecall,
    Rope,
    Norm,
    Other,
    Sampling,
}

impl Op {
    pub const ALL: [Op; 11] = [
        Op::MatmulQkv,
        Op::MatmulO,
        Op::MatmulGateUp,
        Op::MatmulDown,
        Op::MatmulOutput,
        Op::Attention,
        Op::KvRecall,
        Op::Rope,
        Op::Norm,
        Op::Other,
        Op::Sampling,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Op::MatmulQkv => "matmul_qkv",
            Op::MatmulO => "matmul_attn_out",
            Op::MatmulGateUp => "matmul_gate_up",
            Op::MatmulDown => "matmul_down",
            Op::MatmulOutput => "matmul_output",
            Op::Attention => "attention",
            Op::KvRecall => "kv_recall",
            Op::Rope => "rope",
            Op::Norm => "rms_norm",
            Op::Other => "embed_silu_other",
            Op::Sampling => "sampling",
        }
    }
}

/// Accumulated seconds per [`Op`] and the tokens they covered.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub secs: [f64; 11],
    pub tokens: usize,
    /// The weights a token's matmuls read, streamed once with no arithmetic
    /// when profiling was switched on: the decode step's memory limit.
    pub plain_read: Option<PlainRead>,
}

/// Every weight byte of the matmuls read once (the faster of two passes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlainRead {
    pub bytes: usize,
    pub secs: f64,
}

impl PlainRead {
    /// Times `read` (which reads every weight once and returns the bytes and
    /// a fold of them, kept from the optimizer) twice and keeps the faster.
    pub fn measure(read: impl Fn() -> (usize, u64)) -> Self {
        let mut best = PlainRead { bytes: 0, secs: f64::INFINITY };
        for _ in 0..2 {
            let t = Instant::now();
            let (bytes, fold) = read();
            std::hint::black_box(fold);
            best = PlainRead { bytes, secs: best.secs.min(t.elapsed().as_secs_f64()) };
        }
        best
    }
}

impl Profile {
    pub fn add(&mut self, op: Op, secs: f64) {
        self.secs[op as usize] += secs;
    }

    /// `(name, milliseconds per token)` for every op, largest first.
    pub fn per_token_ms(&self) -> Vec<(&'static str, f64)> {
        let n = self.tokens.max(1) as f64;
        let mut v: Vec<_> = Op::ALL.iter().map(|&o| (o.name(), self.secs[o as usize] * 1e3 / n)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }
}

/// A stopwatch that charges each lap to an op (a no-op when profiling is off).
pub struct Clock(Option<Instant>);

impl Clock {
    pub fn start(on: bool) -> Self {
        Clock(on.then(Instant::now))
    }
    #[inline]
    pub fn lap(&mut self, profile: &mut Option<Profile>, op: Op) {
        if let (Some(t), Some(p)) = (&mut self.0, profile) {
            let now = Instant::now();
            p.secs[op as usize] += (now - *t).as_secs_f64();
            *t = now;
        }
    }
}
