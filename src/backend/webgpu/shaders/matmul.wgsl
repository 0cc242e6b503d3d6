// out[t][r] (+)= dot(weight row r, activation row t) for blocks of 32 packed
// by matrix.rs. QUANTS 0: four-bit (4 words of nibbles, byte j = values j |
// j+16 << 4), 1: five-bit (those and a word of fifth bits, bit j for value j),
// 2: signed bytes (8 words). `ws` holds two words per block: the scale d (f32
// bits) and the offset m (f32 bits) or, for bytes, the integer sub-scales of
// values 0..16 and 16..32 (bytes 0 and 1). OFFSET 0: none, 1: m against the
// activations' f16-rounded s (Q4_1), 2: m against their exact sum * d. Both
// arrays block-major (block b of row r at b * rows + r) so neighbouring
// threads (rows) read neighbouring memory.
// Activations: Q8 blocks from quantize.wgsl. Integer dot products per block,
// then acc += isum * (d_w * d_a) and the offsets summed apart, added last, as
// the CPU kernels do. One thread per weight row and four tokens (the weights
// are read once for all four).

override QUANTS: u32 = 0u;
override OFFSET: u32 = 0u;
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
@group(0) @binding(3) var<storage, read> ws: array<u32>;
@group(0) @binding(4) var<storage, read> aq: array<u32>;
@group(0) @binding(5) var<storage, read> asc: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

// The fifth bits h (bits 0..3) of four values, moved to bit 4 of each byte.
fn spread_fifth(h: u32) -> u32 {
    return ((h & 1u) << 4u) | ((h & 2u) << 11u) | ((h & 4u) << 18u) | ((h & 8u) << 25u);
}

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
        let dw = bitcast<f32>(ws[2u * wi]);
        let aux = ws[2u * wi + 1u];
        // Word k holds values 4k..4k+3.
        var w: array<u32, 8>;
        if QUANTS == 2u {
            for (var k = 0u; k < 8u; k++) {
                w[k] = qs[wi * 8u + k];
            }
        } else {
            let words = select(4u, 5u, QUANTS == 1u);
            for (var k = 0u; k < 4u; k++) {
                let word = qs[wi * words + k];
                w[k] = word & 0x0f0f0f0fu;
                w[k + 4u] = (word >> 4u) & 0x0f0f0f0fu;
            }
            if QUANTS == 1u {
                let fifth = qs[wi * 5u + 4u];
                for (var k = 0u; k < 8u; k++) {
                    w[k] |= spread_fifth((fifth >> (4u * k)) & 0xfu);
                }
            }
        }
        let sub = bitcast<i32>(aux);
        for (var tt = 0u; tt < nt; tt++) {
            let ai = (t0 + tt) * nb + b;
            var lo = 0i;
            var hi = 0i;
            for (var k = 0u; k < 4u; k++) {
                lo += dot4(w[k], aq[ai * 8u + k]);
                hi += dot4(w[k + 4u], aq[ai * 8u + k + 4u]);
            }
            var isum = lo + hi;
            if QUANTS == 2u {
                isum = lo * extractBits(sub, 0u, 8u) + hi * extractBits(sub, 8u, 8u);
            }
            acc[tt] += f32(isum) * (dw * asc[ai * 3u]);
            if OFFSET == 1u {
                macc[tt] += bitcast<f32>(aux) * asc[ai * 3u + 1u];
            } else if OFFSET == 2u {
                macc[tt] += bitcast<f32>(aux) * asc[ai * 3u + 2u];
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
