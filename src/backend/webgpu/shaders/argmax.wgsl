// The largest logit of the last output row and its token id (the lowest id
// among equal maxima, as the CPU sampler picks): a greedy step reads back 8 bytes.

struct Params {
    vocab: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> result: array<u32>;

var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    let base = (step.n_out - 1u) * p.vocab;
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var i = lid; i < p.vocab; i += 256u) {
        let v = logits[base + i];
        if v > bv {
            bv = v;
            bi = i;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {
        if lid < k {
            let ov = best_v[lid + k];
            let oi = best_i[lid + k];
            if ov > best_v[lid] || (ov == best_v[lid] && oi < best_i[lid]) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if lid == 0u {
        result[0] = best_i[0];
        result[1] = bitcast<u32>(best_v[0]);
    }
}
