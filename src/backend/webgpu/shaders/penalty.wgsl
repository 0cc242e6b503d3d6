// The repetition penalty on the last output row of logits, as the CPU sampler
// applies it: l / penalty when l > 0, else l * penalty, once per distinct id
// of the recent history (`ids` are distinct, so no two threads touch one logit).

struct Params {
    vocab: u32,
    count: u32,
    penalty: f32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> logits: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = gid.x;
    if k >= p.count {
        return;
    }
    let id = ids[k];
    if id >= p.vocab {
        return;
    }
    let i = (step.n_out - 1u) * p.vocab + id;
    let l = logits[i];
    if l > 0.0 {
        logits[i] = l / p.penalty;
    } else {
        logits[i] = l * p.penalty;
    }
}
