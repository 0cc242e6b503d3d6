// out[t][r] (+)= dot(weight row r, activation row t) for GGUF blocks of 32:
// FORMAT 0 Q4_0, 1 Q4_1, 2 Q8_0. Weights: `qs` holds each block's quants as in
// the file (Q4: 16 bytes, byte j = values j | j+16 << 4; Q8: 32 signed bytes),
// `ws` its scale d and offset m (Q4_0: -8 d; Q4_1: the minimum) as f32; both
// block-major (block b of row r at b * rows + r) so neighbouring threads (rows)
// read neighbouring memory.
// Activations: Q8 blocks from quantize.wgsl. Integer dot products per block,
// then acc += isum * (d_w * d_a) and the offset through the activations' sums,
// as llama.cpp's vec_dot_q4_1_q8_1 does. One thread per weight row and four
// tokens (the weights are read once for all four).

override FORMAT: u32 = 0u;
override ACC: bool = false;

struct Params {
    rows: u32,
    nb: u32,
    out_stride: u32,
    out_offset: u32,
    // 1: multiply the step's output rows (the output projection), 0: every token.
    out_rows: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> qs: array<u32>;
@group(0) @binding(3) var<storage, read> ws: array<f32>;
@group(0) @binding(4) var<storage, read> aq: array<u32>;
@group(0) @binding(5) var<storage, read> asc: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    var n = step.t;
    if p.out_rows == 1u {
        n = step.n_out;
    }
    let t0 = gid.y * 4u;
    if r >= p.rows || t0 >= n {
        return;
    }
    let nt = min(4u, n - t0);
    let nb = p.nb;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    var macc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var b = 0u; b < nb; b++) {
        let wi = b * p.rows + r;
        let dw = ws[2u * wi];
        let mw = ws[2u * wi + 1u];
        var w: array<u32, 8>;
        if FORMAT == 2u {
            for (var k = 0u; k < 8u; k++) {
                w[k] = qs[wi * 8u + k];
            }
        } else {
            for (var k = 0u; k < 4u; k++) {
                let word = qs[wi * 4u + k];
                w[k] = word & 0x0f0f0f0fu;
                w[k + 4u] = (word >> 4u) & 0x0f0f0f0fu;
            }
        }
        for (var tt = 0u; tt < nt; tt++) {
            let ai = (t0 + tt) * nb + b;
            var isum = 0i;
            for (var k = 0u; k < 8u; k++) {
                isum += dot4(w[k], aq[ai * 8u + k]);
            }
            acc[tt] += f32(isum) * (dw * asc[ai * 3u]);
            if FORMAT == 1u {
                macc[tt] += mw * asc[ai * 3u + 1u];
            } else if FORMAT == 0u {
                macc[tt] += mw * asc[ai * 3u + 2u];
            }
        }
    }
    for (var tt = 0u; tt < nt; tt++) {
        let i = (t0 + tt) * p.out_stride + p.out_offset + r;
        let v = acc[tt] + macc[tt];
        if ACC {
            out[i] = out[i] + v;
        } else {
            out[i] = v;
        }
    }
}
