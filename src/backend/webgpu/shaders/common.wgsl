// Shared by every kvchat kernel (prepended to each shader at load).

// Values that change with every submitted chunk.
struct Step {
    // Tokens in this chunk.
    t: u32,
    // First row whose logits are wanted (t - 1, or 0 for all rows).
    first_out: u32,
    // Rows whose logits are wanted.
    n_out: u32,
    _pad: u32,
}

// The four signed bytes of `a` and `b` multiplied pairwise and summed.
fn dot4(a: u32, b: u32) -> i32 {
    let x = bitcast<i32>(a);
    let y = bitcast<i32>(b);
    return extractBits(x, 0u, 8u) * extractBits(y, 0u, 8u)
         + extractBits(x, 8u, 8u) * extractBits(y, 8u, 8u)
         + extractBits(x, 16u, 8u) * extractBits(y, 16u, 8u)
         + extractBits(x, 24u, 8u) * extractBits(y, 24u, 8u);
}

// `v` rounded to the nearest f16 (how an f16 KV cache and llama.cpp's Q8 scales store it).
fn f16r(v: f32) -> f32 {
    return unpack2x16float(pack2x16float(vec2<f32>(v, 0.0))).x;
}

// e^x exactly as the CPU backend computes it (Cephes' expf, ops::exp), so the
// softmax and SiLU round the same way on both backends.
fn kv_exp(v: f32) -> f32 {
    let x = clamp(v, -87.33654, 88.72283);
    let n = round(x * 1.442695041);
    let r = x - n * 0.6933594 - n * -2.1219444e-4;
    let p = ((((1.9875691e-4 * r + 1.3981999e-3) * r + 8.333452e-3) * r + 4.1665796e-2) * r + 1.6666665e-1) * r + 5.0000001e-1;
    // Grouped as compilers regroup it (Mesa's NIR turns (a + r) + 1.0 into
    // a + (r + 1.0)), so the result does not depend on the optimizer.
    let e = p * r * r + (r + 1.0);
    let ni = i32(n);
    let h = ni >> 1u;
    return e * bitcast<f32>(u32(h + 127) << 23u) * bitcast<f32>(u32(ni - h + 127) << 23u);
}

// Neumaier's compensated sum: (hi, lo) += v.
fn two_sum(acc: vec2<f32>, v: f32) -> vec2<f32> {
    let t = acc.x + v;
    var lo = acc.y;
    if abs(acc.x) >= abs(v) {
        lo += (acc.x - t) + v;
    } else {
        lo += (v - t) + acc.x;
    }
    return vec2<f32>(t, lo);
}
