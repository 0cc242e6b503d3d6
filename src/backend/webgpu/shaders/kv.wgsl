// Shared by the two kernels that touch the KV cache (rope_kv.wgsl, attention.wgsl).

// The cache stores f32 (false) or two f16 per u32 (true).
override KV_F16: bool = false;

struct KvParams {
    n_head: u32,
    n_kv: u32,
    hd: u32,
    // Slots per kv head (the window).
    cap: u32,
    // Width of a [q | k | v] row.
    qkv_stride: u32,
    // 1 / sqrt(head_dim).
    scale: f32,
    // The QK-norm's epsilon (rope_kv.wgsl).
    eps: f32,
    _p1: u32,
}
