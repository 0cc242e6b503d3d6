// Test-only: common.wgsl's functions applied element-wise, so tests can hold
// them to the CPU's (probe.rs). Not part of the forward pass.
// FUNC 0: kv_exp; 1: f16r (round to f16 and back).

override FUNC: u32 = 0u;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y * 65535u * 64u + gid.x;
    if i < arrayLength(&x) {
        if FUNC == 0u {
            y[i] = kv_exp(x[i]);
        } else {
            y[i] = f16r(x[i]);
        }
    }
}
