// RoPE (adjacent pairs, llama.cpp's LLAMA_ROPE_TYPE_NORM) on the chunk's
// queries and keys, and the keys and values written into their cache slots.
// `qkv` rows are [q | k | v]. Queries that will meet the sinks at in-cache
// distance (token info .w > 0) are also rotated at the sink query position.
// The cache stores f32 (KV_F16 false) or pairs of f16 in one u32.
// Angles: `cs` row 0 is the sink query position, row 1 + j token j; each row is
// `half` cosines then `half` sines. One workgroup per token.

@group(0) @binding(0) var<uniform> p: KvParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
// Per token: where its sequence's cache starts in kc/vc (in elements; 0 but in
// batches, whose sequences share one buffer), cache slot, slots in use, sink_until.
@group(0) @binding(3) var<storage, read> tok: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> cs: array<f32>;
@group(0) @binding(5) var<storage, read_write> q: array<f32>;
@group(0) @binding(6) var<storage, read_write> q_sink: array<f32>;
@group(0) @binding(7) var<storage, read_write> kc: array<u32>;
@group(0) @binding(8) var<storage, read_write> vc: array<u32>;

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

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = wg.x;
    let info = tok[j];
    let half = p.hd / 2u;
    let row = j * p.qkv_stride;
    let qd = p.n_head * p.hd;
    let kvd = p.n_kv * p.hd;
    let c0 = (1u + j) * 2u * half;
    for (var i = lid; i < p.n_head * half; i += 64u) {
        let h = i / half;
        let k = i % half;
        let at = h * p.hd + 2u * k;
        let a = qkv[row + at];
        let b = qkv[row + at + 1u];
        let c = cs[c0 + k];
        let s = cs[c0 + half + k];
        q[j * qd + at] = a * c - b * s;
        q[j * qd + at + 1u] = a * s + b * c;
        if info.w > 0u {
            let cz = cs[k];
            let sz = cs[half + k];
            q_sink[j * qd + at] = a * cz - b * sz;
            q_sink[j * qd + at + 1u] = a * sz + b * cz;
        }
    }
    for (var i = lid; i < p.n_kv * half; i += 64u) {
        let g = i / half;
        let k = i % half;
        let at = g * p.hd + 2u * k;
        let dst = info.x + (g * p.cap + info.y) * p.hd + 2u * k;
        let a = qkv[row + qd + at];
        let b = qkv[row + qd + at + 1u];
        let c = cs[c0 + k];
        let s = cs[c0 + half + k];
        store(dst, a * c - b * s, a * s + b * c, true);
        store(dst, qkv[row + qd + kvd + at], qkv[row + qd + kvd + at + 1u], false);
    }
}
