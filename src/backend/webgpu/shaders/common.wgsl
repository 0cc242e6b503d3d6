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

// f32 -> f16 bits, rounded to nearest even, overflow to infinity: the `half`
// crate's conversion, in integer operations. (pack2x16float leaves values
// outside f16's range undefined and may flush f16 subnormals, which small
// activation scales and cache entries are.)
fn f16_bits(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    let sign = (x >> 16u) & 0x8000u;
    let a = x & 0x7fffffffu;
    if a > 0x7f800000u {
        return sign | 0x7e00u;
    }
    // 65520 and above round to infinity.
    if a >= 0x477ff000u {
        return sign | 0x7c00u;
    }
    // Normal f16 (2^-14 and above): drop 13 mantissa bits, ties to even.
    if a >= 0x38800000u {
        let r = a + 0xfffu + ((a >> 13u) & 1u);
        return sign | ((r - 0x38000000u) >> 13u);
    }
    // 2^-25 and below round to zero.
    if a <= 0x33000000u {
        return sign;
    }
    // Subnormal f16: the value in units of 2^-24, ties to even.
    let m = (a & 0x7fffffu) | 0x800000u;
    let drop = 126u - (a >> 23u);
    let q = m >> drop;
    let rem = m & ((1u << drop) - 1u);
    let half = 1u << (drop - 1u);
    return sign | select(q, q + 1u, rem > half || (rem == half && (q & 1u) == 1u));
}

// f16 bits (the low 16 of `h`) -> f32, subnormals included.
fn f16_value(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if e == 0u {
        // m * 2^-24, exact.
        return bitcast<f32>(sign | bitcast<u32>(f32(m) * 5.9604644775390625e-8));
    }
    if e == 31u {
        return bitcast<f32>(sign | 0x7f800000u | (m << 13u));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

// `v` rounded to the nearest f16 (how an f16 KV cache and llama.cpp's Q8 scales store it).
fn f16r(v: f32) -> f32 {
    return f16_value(f16_bits(v));
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
