//! The element-wise and reduction kernels of the forward pass, over plain
//! `f32` slices (no tensors, no allocation): RMSNorm, RoPE, SwiGLU, softmax,
//! and the dot/axpy used by attention. Loops keep eight independent partial
//! sums so LLVM turns them into SIMD (simd128 in wasm, SSE/AVX natively).

/// `out = x / rms(x) * w`, the mean of squares summed in f64 as ggml does.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let scale = 1.0 / ((sum / x.len() as f64) as f32 + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// Rotates the adjacent pairs `(x[2i], x[2i+1])` of one head by the angles
/// whose cosines and sines are given (llama.cpp's `LLAMA_ROPE_TYPE_NORM`).
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    for ((pair, &c), &s) in x.chunks_exact_mut(2).zip(cos).zip(sin) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * c - b * s;
        pair[1] = a * s + b * c;
    }
}

/// `g = silu(g) * u`.
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    for (a, &b) in g.iter_mut().zip(u) {
        *a = *a / (1.0 + (-*a).exp()) * b;
    }
}

/// `y += x`.
pub fn add_assign(y: &mut [f32], x: &[f32]) {
    for (a, &b) in y.iter_mut().zip(x) {
        *a += b;
    }
}

/// Σ a·b with eight partial sums (vectorizes; deterministic order).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `y += a * x`.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Σ log-softmax(x)[target] without materializing the softmax.
pub fn log_softmax_at(x: &[f32], target: usize) -> f64 {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = x.iter().map(|&v| ((v - max) as f64).exp()).sum();
    (x[target] - max) as f64 - sum.ln()
}

/// Rounds every value to the nearest f16 (what an f16 KV cache stores).
pub fn round_f16(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = half::f16::from_f32(*v).to_f32();
    }
}
