// Activation rows -> Q8 blocks of 32 with llama.cpp's rounding
// (quantize_row_q8_0 / quantize_row_q8_1): d = amax / 127, q = roundf(x / d),
// d stored as f16, s = d * sum(q) as f16 (Q4_1's offset) and sum(q) * d_f16 (Q4_0's).
// MODE 0: RMSNorm first (x * scale * w); 1: the rows as they are; 2: SiLU(gate) * up
// from rows that hold gate then up; 3: GELU(gate) * up (tanh approximation, as
// x * sigmoid(2t): the CPU's ops::gelu_mul). One workgroup per row.

override MODE: u32 = 0u;

struct Params {
    cols: u32,
    in_stride: u32,
    // Offset of `up` inside a row (MODE 2).
    up_offset: u32,
    // 1: the rows are the step's output rows (final norm), 0: every token.
    out_rows: u32,
    eps: f32,
    // 127.0, from the host: a division by a literal may be compiled as a
    // multiplication by its rounded reciprocal (SwiftShader does), which
    // changes d = amax / 127 in the last bit for 1 value in 20.
    q8_max: f32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> q: array<u32>;
@group(0) @binding(5) var<storage, read_write> sc: array<f32>;

var<workgroup> red: array<vec2<f32>, 64>;

fn value(base: u32, i: u32, scale: f32) -> f32 {
    if MODE == 0u {
        return x[base + i] * scale * w[i];
    }
    if MODE == 2u {
        let g = x[base + i];
        return g / (1.0 + kv_exp(-g)) * x[base + p.up_offset + i];
    }
    if MODE == 3u {
        let g = x[base + i];
        let t = 0.7978846 * (g + 0.044715 * g * g * g);
        return g / (1.0 + kv_exp(-2.0 * t)) * x[base + p.up_offset + i];
    }
    return x[base + i];
}

fn round_half_away(v: f32) -> i32 {
    let t = i32(v);
    let f = v - f32(t);
    return t + select(0, 1, f >= 0.5) - select(0, 1, f <= -0.5);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wg.x;
    var src = row;
    if p.out_rows == 1u {
        src = step.first_out + row;
    }
    let base = src * p.in_stride;
    var scale = 1.0;
    if MODE == 0u {
        // A compensated sum: the CPU sums these squares in f64.
        var ss = vec2<f32>(0.0, 0.0);
        for (var i = lid; i < p.cols; i += 64u) {
            let v = x[base + i];
            ss = two_sum(ss, v * v);
        }
        red[lid] = ss;
        workgroupBarrier();
        for (var k = 32u; k > 0u; k >>= 1u) {
            if lid < k {
                let o = red[lid + k];
                let a = two_sum(red[lid], o.x);
                red[lid] = vec2<f32>(a.x, a.y + o.y);
            }
            workgroupBarrier();
        }
        let total = red[0].x + red[0].y;
        scale = 1.0 / sqrt(total / f32(p.cols) + p.eps);
    }
    let nb = p.cols / 32u;
    for (var b = lid; b < nb; b += 64u) {
        var amax = 0.0;
        for (var i = 0u; i < 32u; i++) {
            amax = max(amax, abs(value(base, b * 32u + i, scale)));
        }
        let d = amax / p.q8_max;
        var id = 0.0;
        if d != 0.0 {
            id = 1.0 / d;
        }
        var sum = 0i;
        for (var k = 0u; k < 8u; k++) {
            var word = 0u;
            for (var i = 0u; i < 4u; i++) {
                let v = round_half_away(value(base, b * 32u + k * 4u + i, scale) * id);
                sum += v;
                word |= (bitcast<u32>(v) & 0xffu) << (8u * i);
            }
            q[(row * nb + b) * 8u + k] = word;
        }
        let dh = f16r(d);
        let o = (row * nb + b) * 3u;
        sc[o] = dh;
        sc[o + 1u] = f16r(f32(sum) * d);
        sc[o + 2u] = f32(sum) * dh;
    }
}
