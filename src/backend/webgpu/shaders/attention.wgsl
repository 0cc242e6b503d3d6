// Grouped-query attention of the chunk's queries over the ring cache, read in
// place: token j attends slots 0..used (its own key included; within a chunk
// that has not wrapped, slot = position, so later tokens are not seen).
// Slots below sink_until hold sinks and meet the sink-rotated query. With an
// f16 cache the queries and the attention weights are rounded to f16 too, as
// the CPU cache (and llama.cpp) do. One workgroup per (head, token); the
// scores go through a storage scratch row of `cap`. Token info .x: where the
// token's sequence starts in kc/vc (batches keep every sequence in one buffer).

@group(0) @binding(0) var<uniform> p: KvParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> tok: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read> q_sink: array<f32>;
@group(0) @binding(5) var<storage, read> kc: array<u32>;
@group(0) @binding(6) var<storage, read> vc: array<u32>;
@group(0) @binding(7) var<storage, read_write> scores: array<f32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 64>;
var<workgroup> qv: array<f32, 256>;
var<workgroup> qsv: array<f32, 256>;

fn kval(i: u32) -> f32 {
    if KV_F16 {
        return f16_value(kc[i / 2u] >> (16u * (i % 2u)));
    }
    return bitcast<f32>(kc[i]);
}

fn vval(i: u32) -> f32 {
    if KV_F16 {
        return f16_value(vc[i / 2u] >> (16u * (i % 2u)));
    }
    return bitcast<f32>(vc[i]);
}

fn round_q(v: f32) -> f32 {
    if KV_F16 {
        return f16r(v);
    }
    return v;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wg.x;
    let j = wg.y;
    let info = tok[j];
    let used = info.z;
    let sink_until = info.w;
    let g = h / (p.n_head / p.n_kv);
    let qd = p.n_head * p.hd;
    for (var d = lid; d < p.hd; d += 64u) {
        qv[d] = round_q(q[j * qd + h * p.hd + d]);
        if sink_until > 0u {
            qsv[d] = round_q(q_sink[j * qd + h * p.hd + d]);
        }
    }
    workgroupBarrier();
    let sbase = (j * p.n_head + h) * p.cap;
    var m = -3.0e38;
    for (var s = lid; s < used; s += 64u) {
        let kb = info.x + (g * p.cap + s) * p.hd;
        // Eight partial sums combined as the CPU's dot product does.
        var l = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let full = p.hd / 8u * 8u;
        let sink = s < sink_until;
        for (var d = 0u; d < full; d += 8u) {
            for (var i = 0u; i < 8u; i++) {
                let qq = select(qv[d + i], qsv[d + i], sink);
                l[i] += qq * kval(kb + d + i);
            }
        }
        var acc = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
        for (var d = full; d < p.hd; d++) {
            acc += select(qv[d], qsv[d], sink) * kval(kb + d);
        }
        let sc = acc * p.scale;
        scores[sbase + s] = sc;
        m = max(m, sc);
    }
    red[lid] = m;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k >>= 1u) {
        if lid < k {
            red[lid] = max(red[lid], red[lid + k]);
        }
        workgroupBarrier();
    }
    let mx = red[0];
    workgroupBarrier();
    for (var s = lid; s < used; s += 64u) {
        scores[sbase + s] = kv_exp(scores[sbase + s] - mx);
    }
    storageBarrier();
    // The sum in the CPU's order: eight lanes over whole groups of eight, then the rest.
    let full = used / 8u * 8u;
    if lid < 8u {
        var acc = 0.0;
        for (var s = lid; s < full; s += 8u) {
            acc += scores[sbase + s];
        }
        red[lid] = acc;
    }
    workgroupBarrier();
    if lid == 0u {
        var rest = 0.0;
        for (var s = full; s < used; s++) {
            rest += scores[sbase + s];
        }
        red[8] = ((red[0] + red[4]) + (red[1] + red[5])) + ((red[2] + red[6]) + (red[3] + red[7])) + rest;
    }
    workgroupBarrier();
    let inv = 1.0 / red[8];
    for (var d = lid; d < p.hd; d += 64u) {
        var o = 0.0;
        for (var s = 0u; s < used; s++) {
            o += round_q(scores[sbase + s] * inv) * vval(info.x + (g * p.cap + s) * p.hd + d);
        }
        out[j * qd + h * p.hd + d] = o;
    }
}
