// Token embedding: dequantizes the rows of `ids` (those inside this part of the
// matrix, rows row_start..row_start+rows) into x, times `scale` (gemma's
// sqrt(n_embd); 1 otherwise), in the CPU's arithmetic: four- and five-bit
// values q * d + m, bytes (q * sub) * d. Weights packed as matmul.wgsl reads
// them (QUANTS as there). One workgroup per token.

override QUANTS: u32 = 0u;

struct Params {
    cols: u32,
    row_start: u32,
    rows: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read> qs: array<u32>;
@group(0) @binding(4) var<storage, read> ws: array<u32>;
@group(0) @binding(5) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = wg.x;
    let id = ids[j];
    if id < p.row_start || id >= p.row_start + p.rows {
        return;
    }
    let r = id - p.row_start;
    for (var i = lid; i < p.cols; i += 64u) {
        let wi = (i / 32u) * p.rows + r;
        let v = i % 32u;
        let d = bitcast<f32>(ws[2u * wi]);
        let aux = ws[2u * wi + 1u];
        var y: f32;
        if QUANTS == 2u {
            let word = bitcast<i32>(qs[wi * 8u + v / 4u]);
            let sub = extractBits(bitcast<i32>(aux), 8u * (v / 16u), 8u);
            y = f32(extractBits(word, 8u * (v % 4u), 8u) * sub) * d;
        } else {
            let words = select(4u, 5u, QUANTS == 1u);
            let byte = v % 16u;
            let word = qs[wi * words + byte / 4u];
            var q = (word >> (8u * (byte % 4u) + 4u * (v / 16u))) & 0xfu;
            if QUANTS == 1u {
                q |= ((qs[wi * 5u + 4u] >> v) & 1u) << 4u;
            }
            y = f32(q) * d + bitcast<f32>(aux);
        }
        x[j * p.cols + i] = y * p.scale;
    }
}
