// The post-norm residual add (gemma 3): x[t] += RMSNorm(o[t]) * w, the norm's
// sum of squares as the CPU's sum_of_squares (64 lanes, compensated, a tree),
// each value rounded as the CPU's rms_norm_in_place then add_assign round it.
// One workgroup per token.

struct Params {
    cols: u32,
    eps: f32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> o: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> x: array<f32>;

var<workgroup> red: array<vec2<f32>, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let base = wg.x * p.cols;
    var ss = vec2<f32>(0.0, 0.0);
    for (var i = lid; i < p.cols; i += 64u) {
        let v = o[base + i];
        ss = two_sum(ss, v * v);
    }
    red[lid] = ss;
    workgroupBarrier();
    for (var k = 32u; k > 0u; k >>= 1u) {
        if lid < k {
            let r = red[lid + k];
            let a = two_sum(red[lid], r.x);
            red[lid] = vec2<f32>(a.x, a.y + r.y);
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt((red[0].x + red[0].y) / f32(p.cols) + p.eps);
    for (var i = lid; i < p.cols; i += 64u) {
        let normed = o[base + i] * scale * w[i];
        x[base + i] = x[base + i] + normed;
    }
}
