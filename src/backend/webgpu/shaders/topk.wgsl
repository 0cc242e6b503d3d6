// The 64 largest logits of the last output row with their ids (ties: the lower
// id first, as the CPU sampler orders them), so a sampled decode step reads
// back 520 bytes instead of the whole row. Each of 256 threads keeps its best
// four over a strided share of the vocabulary; a bitonic sort of the 1024 kept
// candidates in workgroup memory gives the top 64. If a thread had to drop a
// value while its fourth best still made the top 64, a dropped value might
// belong there too: `result[1]` flags it and the engine reads the whole row.
// result: [count, overflow, id0, bits0, id1, bits1, ...].

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

const L: u32 = 4u;
const N: u32 = 1024u;
const NONE: u32 = 0xffffffffu;

var<workgroup> sv: array<f32, 1024>;
var<workgroup> si: array<u32, 1024>;
var<workgroup> overflow: atomic<u32>;

fn better(av: f32, ai: u32, bv: f32, bi: u32) -> bool {
    if ai == NONE {
        return false;
    }
    if bi == NONE {
        return true;
    }
    return av > bv || (av == bv && ai < bi);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    let base = (step.n_out - 1u) * p.vocab;
    var lv = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    var li = array<u32, 4>(NONE, NONE, NONE, NONE);
    var seen = 0u;
    if lid == 0u {
        atomicStore(&overflow, 0u);
    }
    for (var i = lid; i < p.vocab; i += 256u) {
        let v = logits[base + i];
        if v != v {
            continue; // NaN: never a candidate (the CPU sampler drops them too)
        }
        seen += 1u;
        if better(v, i, lv[L - 1u], li[L - 1u]) {
            var j = L - 1u;
            while j > 0u && better(v, i, lv[j - 1u], li[j - 1u]) {
                lv[j] = lv[j - 1u];
                li[j] = li[j - 1u];
                j -= 1u;
            }
            lv[j] = v;
            li[j] = i;
        }
    }
    for (var k = 0u; k < L; k++) {
        sv[lid * L + k] = lv[k];
        si[lid * L + k] = li[k];
    }
    workgroupBarrier();
    for (var size = 2u; size <= N; size <<= 1u) {
        for (var stride = size >> 1u; stride > 0u; stride >>= 1u) {
            for (var t = lid; t < N / 2u; t += 256u) {
                let i = (t / stride) * 2u * stride + (t % stride);
                let j = i + stride;
                let up = (i & size) == 0u;
                let jb = better(sv[j], si[j], sv[i], si[i]);
                let ib = better(sv[i], si[i], sv[j], si[j]);
                if (up && jb) || (!up && ib) {
                    let v = sv[i];
                    let x = si[i];
                    sv[i] = sv[j];
                    si[i] = si[j];
                    sv[j] = v;
                    si[j] = x;
                }
            }
            workgroupBarrier();
        }
    }
    // Dropped values are worse than this thread's fourth best: harmless unless that one made the top 64.
    if seen > L && !better(sv[63], si[63], lv[L - 1u], li[L - 1u]) {
        atomicOr(&overflow, 1u);
    }
    workgroupBarrier();
    if lid < 64u {
        result[2u + 2u * lid] = si[lid];
        result[3u + 2u * lid] = bitcast<u32>(sv[lid]);
    }
    if lid == 0u {
        var count = 0u;
        for (var k = 0u; k < 64u; k++) {
            if si[k] != NONE {
                count += 1u;
            }
        }
        result[0] = count;
        result[1] = atomicLoad(&overflow);
    }
}
