// The chunk's queries and keys prepared and rotated, and the keys and values
// written into their cache slots. `qkv` rows are [q | k | v]; per block
// variant: BIAS adds `bias` ([q | k | v] wide) first, QK_NORM RMS-normalizes
// each query and key head (`norms`: the query heads' weights, then the key
// heads'), ROPE_HALVES rotates values i and i + hd/2 together (NeoX, qwen2,
// gemma 3) instead of 2i and 2i + 1 (llama). Queries that will meet the sinks
// at in-cache distance (token info .w > 0) are also rotated at the sink query
// position. The cache stores f32 (KV_F16 false) or pairs of f16 in one u32
// (so each thread writes whole pairs). Angles: `cs` row 0 is the sink query
// position, row 1 + j token j; each row is `half` cosines then `half` sines.
// One workgroup per token.

override BIAS: bool = false;
override QK_NORM: bool = false;
override ROPE_HALVES: bool = false;

@group(0) @binding(0) var<uniform> p: KvParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
// Per token: where its sequence's cache starts in kc/vc (in elements; 0 but in
// batches, whose sequences share one buffer), cache slot, slots in use, sink_until.
@group(0) @binding(3) var<storage, read> tok: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> cs: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read> norms: array<f32>;
@group(0) @binding(7) var<storage, read_write> q: array<f32>;
@group(0) @binding(8) var<storage, read_write> q_sink: array<f32>;
@group(0) @binding(9) var<storage, read_write> kc: array<u32>;
@group(0) @binding(10) var<storage, read_write> vc: array<u32>;

var<workgroup> red: array<vec2<f32>, 64>;
// 1 / rms of each query head, then each key head (QK_NORM).
var<workgroup> head_scale: array<f32, 64>;

fn store(i: u32, a: f32, b: f32, is_k: bool) {
    if KV_F16 {
        let packed = f16_bits(a) | (f16_bits(b) << 16u);
        if is_k {
            kc[i / 2u] = packed;
        } else {
            vc[i / 2u] = packed;
        }
    } else {
        if is_k {
            kc[i] = bitcast<u32>(a);
            kc[i + 1u] = bitcast<u32>(b);
        } else {
            vc[i] = bitcast<u32>(a);
            vc[i + 1u] = bitcast<u32>(b);
        }
    }
}

// Element `at` of the row (biased).
fn raw(row: u32, at: u32) -> f32 {
    var v = qkv[row + at];
    if BIAS {
        v += bias[at];
    }
    return v;
}

// Value d of head h: query heads 0..n_head, then the key heads (normed).
fn head_value(row: u32, h: u32, d: u32) -> f32 {
    var v = raw(row, h * p.hd + d);
    if QK_NORM {
        v = v * head_scale[h] * norms[select(0u, p.hd, h >= p.n_head) + d];
    }
    return v;
}

// The RMSNorm scale of every query and key head, summed as the CPU's
// sum_of_squares (64 lanes, compensated, then a tree).
fn head_scales(row: u32, lid: u32) {
    for (var h = 0u; h < p.n_head + p.n_kv; h++) {
        var ss = vec2<f32>(0.0, 0.0);
        for (var i = lid; i < p.hd; i += 64u) {
            let v = raw(row, h * p.hd + i);
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
        if lid == 0u {
            head_scale[h] = 1.0 / sqrt((red[0].x + red[0].y) / f32(p.hd) + p.eps);
        }
        workgroupBarrier();
    }
}

// The rotation of the pair (a, b) by angle k of cs row `c0`.
fn rotate(a: f32, b: f32, c0: u32, k: u32) -> vec2<f32> {
    let half = p.hd / 2u;
    let c = cs[c0 + k];
    let s = cs[c0 + half + k];
    return vec2<f32>(a * c - b * s, a * s + b * c);
}

// Where pair k's two values sit in a head.
fn pair(k: u32) -> vec2<u32> {
    if ROPE_HALVES {
        return vec2<u32>(k, k + p.hd / 2u);
    }
    return vec2<u32>(2u * k, 2u * k + 1u);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = wg.x;
    let info = tok[j];
    let half = p.hd / 2u;
    let row = j * p.qkv_stride;
    let qd = p.n_head * p.hd;
    let kvd = p.n_kv * p.hd;
    let c0 = (1u + j) * 2u * half;
    if QK_NORM {
        head_scales(row, lid);
    }
    for (var i = lid; i < p.n_head * half; i += 64u) {
        let h = i / half;
        let at = pair(i % half);
        let a = head_value(row, h, at.x);
        let b = head_value(row, h, at.y);
        let r = rotate(a, b, c0, i % half);
        q[j * qd + h * p.hd + at.x] = r.x;
        q[j * qd + h * p.hd + at.y] = r.y;
        if info.w > 0u {
            let rs = rotate(a, b, 0u, i % half);
            q_sink[j * qd + h * p.hd + at.x] = rs.x;
            q_sink[j * qd + h * p.hd + at.y] = rs.y;
        }
    }
    // Keys: two pairs per thread, so an f16 cache's words (adjacent values)
    // are written whole by one thread in both layouts.
    for (var i = lid; i < p.n_kv * half / 2u; i += 64u) {
        let g = i / (half / 2u);
        let k0 = 2u * (i % (half / 2u));
        let dst = info.x + (g * p.cap + info.y) * p.hd;
        let h = p.n_head + g;
        let a0 = pair(k0);
        let a1 = pair(k0 + 1u);
        let r0 = rotate(head_value(row, h, a0.x), head_value(row, h, a0.y), c0, k0);
        let r1 = rotate(head_value(row, h, a1.x), head_value(row, h, a1.y), c0, k0 + 1u);
        if ROPE_HALVES {
            store(dst + k0, r0.x, r1.x, true);
            store(dst + k0 + half, r0.y, r1.y, true);
        } else {
            store(dst + 2u * k0, r0.x, r0.y, true);
            store(dst + 2u * k0 + 2u, r1.x, r1.y, true);
        }
    }
    for (var i = lid; i < p.n_kv * half; i += 64u) {
        let g = i / half;
        let at = g * p.hd + 2u * (i % half);
        let dst = info.x + (g * p.cap + info.y) * p.hd + 2u * (i % half);
        store(dst, raw(row, qd + kvd + at), raw(row, qd + kvd + at + 1u), false);
    }
}
