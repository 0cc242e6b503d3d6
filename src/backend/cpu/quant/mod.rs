//! Quantized dot-product kernels for the weight types small GGUF models ship
//! (Q4_0, Q4_1, Q8_0, Q5_0, Q4_K, Q5_K, Q6_K), with the weights repacked at
//! load into separate scale and quant arrays of 32-value blocks, and the activations quantized once per matmul to Q8 with
//! exactly llama.cpp's rounding (`quantize_row_q8_0` / `quantize_row_q8_1`).
//!
//! The loops are written so LLVM vectorizes them (SSE/AVX natively, simd128 in wasm).
//!
//! This file holds the formats, the layouts, the CPU feature detection and
//! [`QMatrix`] with the dispatch that picks an instruction set; the rest is one
//! file per concern, as candle's `quantized/{k_quants, avx, simd128}.rs`:
//!
//! - `decode.rs`: Q5_0 and K-quant blocks → 32-value blocks (values, scale,
//!   offset, Q6_K's sub-scales);
//! - `repack.rs`: GGUF blocks → [`QMatrix`] in a [`Q4Layout`];
//! - `activations.rs`: [`QActivations`], the Q8 activations every kernel
//!   reads, and the choice of quantizer;
//! - `portable.rs`: the reference every other file is tested against, bit for bit;
//! - `avx2.rs`, `avx512.rs` (x86_64), `simd128.rs`, `relaxed.rs` (wasm32,
//!   relaxed SIMD's Rows4 kernels): the SIMD kernels.
//!
//! The instruction-set files use the same names as `portable.rs`:
//! `matmul(m, rows, t_rows, act, out)` computes the rows it is given, and
//! `quantize(act, x, t_rows, cols)` (portable, AVX2, simd128) fills
//! [`QActivations`] with the same bytes. The SIMD quantizers sit with their
//! instruction set rather than in `activations.rs`: they share its intrinsics
//! and `cfg` gates, and are tested, like the kernels, against the portable one.

use std::ops::Range;

mod activations;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod decode;
mod portable;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128", target_feature = "relaxed-simd"))]
mod relaxed;
mod repack;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128;

pub use activations::QActivations;
pub use decode::{for_each_block32, Block32};
pub use repack::{f16_to_f32, QMatrixBuilder};

pub const QK: usize = 32;

/// Weight formats with a kernel here. Every one is repacked at load into
/// 32-value blocks of one kind the kernels know ([`QFormat::values`],
/// [`QFormat::offset`], [`QFormat::sub_scales`]): unsigned four-bit values
/// (Q4_0, Q4_1, Q4_K), unsigned five-bit values (Q5_0, Q5_K: the four-bit
/// layout plus one word of fifth bits), or signed bytes (Q8_0, Q6_K); one f32
/// scale per block, an f32 offset per block where the format has one, and
/// Q6_K's two integer scales per block (its sub-blocks are 16 values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QFormat {
    Q4_0,
    Q4_1,
    Q8_0,
    Q5_0,
    Q4K,
    Q5K,
    Q6K,
}

/// How a repacked block's 32 values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// 0..16, two per byte in the [`Q4Layout`].
    Four,
    /// 0..32: the low four bits as [`Values::Four`], the fifth bits in one u32
    /// per block (bit `j` for value `j`).
    Five,
    /// Signed bytes, 32 per block.
    Eight,
}

/// The offset term of a block's dot product: `m · Σ(activations)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    None,
    /// Against Q8_1's f16-rounded `s = d·Σq` (Q4_1, as llama.cpp computes it).
    Rounded,
    /// Against the exact `Σq · d` (Q4_0's `-8d`, the K-quants' `-dmin·min`).
    Exact,
}

impl QFormat {
    pub const ALL: [QFormat; 7] = [QFormat::Q4_0, QFormat::Q4_1, QFormat::Q8_0, QFormat::Q5_0, QFormat::Q4K, QFormat::Q5K, QFormat::Q6K];

    /// The format with a kernel here for a GGUF type (the one mapping; CPU and GPU use it).
    pub fn of(dt: candle_core::quantized::GgmlDType) -> Option<Self> {
        use candle_core::quantized::GgmlDType;
        match dt {
            GgmlDType::Q4_0 => Some(QFormat::Q4_0),
            GgmlDType::Q4_1 => Some(QFormat::Q4_1),
            GgmlDType::Q8_0 => Some(QFormat::Q8_0),
            GgmlDType::Q5_0 => Some(QFormat::Q5_0),
            GgmlDType::Q4K => Some(QFormat::Q4K),
            GgmlDType::Q5K => Some(QFormat::Q5K),
            GgmlDType::Q6K => Some(QFormat::Q6K),
            _ => None,
        }
    }

    /// The GGUF type this format reads.
    pub fn ggml(self) -> candle_core::quantized::GgmlDType {
        use candle_core::quantized::GgmlDType;
        match self {
            QFormat::Q4_0 => GgmlDType::Q4_0,
            QFormat::Q4_1 => GgmlDType::Q4_1,
            QFormat::Q8_0 => GgmlDType::Q8_0,
            QFormat::Q5_0 => GgmlDType::Q5_0,
            QFormat::Q4K => GgmlDType::Q4K,
            QFormat::Q5K => GgmlDType::Q5K,
            QFormat::Q6K => GgmlDType::Q6K,
        }
    }

    /// Values in one block of the GGUF file (K-quants: 256-value super-blocks).
    pub fn block_values(self) -> usize {
        match self {
            QFormat::Q4K | QFormat::Q5K | QFormat::Q6K => 256,
            _ => QK,
        }
    }

    /// Bytes of one block in the GGUF file.
    pub fn block_bytes(self) -> usize {
        match self {
            QFormat::Q4_0 => 18,
            QFormat::Q4_1 => 20,
            QFormat::Q8_0 => 34,
            QFormat::Q5_0 => 22,
            QFormat::Q4K => 144,
            QFormat::Q5K => 176,
            QFormat::Q6K => 210,
        }
    }

    /// Bytes `values` weights take once repacked (quants, fifth bits, f32
    /// scale, f32 offset, sub-scales; without the padding of interleaved layouts).
    pub fn repacked_bytes(self, values: usize) -> usize {
        values / QK * self.repacked_block_bytes()
    }

    /// Bytes of one repacked 32-value block: quants, scale, offset, sub-scales.
    pub fn repacked_block_bytes(self) -> usize {
        let quants = match self.values() {
            Values::Four => 16,
            Values::Five => 20,
            Values::Eight => 32,
        };
        quants + 4 + if self.offset() == Offset::None { 0 } else { 4 } + if self.sub_scales() { 2 } else { 0 }
    }

    pub fn values(self) -> Values {
        match self {
            QFormat::Q4_0 | QFormat::Q4_1 | QFormat::Q4K => Values::Four,
            QFormat::Q5_0 | QFormat::Q5K => Values::Five,
            QFormat::Q8_0 | QFormat::Q6K => Values::Eight,
        }
    }

    /// Whether the repacked values are signed bytes (else four- or five-bit, unsigned).
    pub fn bytes(self) -> bool {
        self.values() == Values::Eight
    }

    pub fn offset(self) -> Offset {
        match self {
            QFormat::Q4_1 => Offset::Rounded,
            // Q5_0's `q - 16` as the unsigned value plus `-16d`, as Q4_0's `-8d`.
            QFormat::Q4_0 | QFormat::Q4K | QFormat::Q5_0 | QFormat::Q5K => Offset::Exact,
            QFormat::Q8_0 | QFormat::Q6K => Offset::None,
        }
    }

    /// Whether each 32-value block has two integer scales, one per 16 values (Q6_K).
    pub fn sub_scales(self) -> bool {
        self == QFormat::Q6K
    }

    /// Whether a layout's interleaved kernels read this format (the AVX-512
    /// kernels take the three formats they were written for; every other
    /// format uses the AVX2 layout there).
    fn in_rows16(self) -> bool {
        matches!(self, QFormat::Q4_0 | QFormat::Q4_1 | QFormat::Q8_0)
    }
}

/// How the 32 four-bit values of a block sit in its 16 bytes. In every
/// layout the block scales (of every format) are interleaved by groups of four
/// rows, so one load gives the scales of four rows for the same block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q4Layout {
    /// As in the GGUF file: byte `j` holds values `j` (low nibble) and `j + 16`
    /// (the native AVX2 kernels' layout).
    Ggml,
    /// Eight little-endian u16 lanes; lane `l` holds values `l`, `l + 8`,
    /// `l + 16`, `l + 24` in its four nibbles, so a 16-byte load, a shift and
    /// a mask give eight consecutive values as i16 lanes (wasm simd128's
    /// `i32x4.dot_i16x8_s` then needs no widening of the weights).
    Lanes,
    /// Four rows interleaved per block (relaxed SIMD): the 64 bytes of rows
    /// `4g..4g+4`, block `b` are four vectors; in vector `k`, byte `4j + i`
    /// holds row `4g+j`'s values `8k+i` (low nibble) and `8k+4+i` (high
    /// nibble). One relaxed dot against four activation bytes splatted to
    /// every lane then yields each row's partial sum in its own lane: no
    /// horizontal reduction per block. Q8_0 blocks: eight vectors, byte
    /// `4j + i` of vector `k` is row `4g+j`'s value `4k+i` plus 128 (unsigned,
    /// split into its two nibbles by the kernel: relaxed SIMD's 7-bit operand
    /// cannot hold a byte); Q6_K's byte blocks are stored as in [`Lanes`](Self::Lanes).
    Rows4,
    /// Sixteen rows interleaved per block (AVX-512 VNNI): [`Rows4`](Self::Rows4)'s
    /// scheme over sixteen rows, so one `vpdpbusd` against four activation
    /// bytes broadcast to every lane advances sixteen rows' sums at once. The
    /// 256 bytes of rows `16g..16g+16`, block `b` are four 64-byte vectors; in
    /// vector `k`, byte `4j + i` holds row `16g+j`'s values `8k+i` (low nibble)
    /// and `8k+4+i` (high nibble). Q8 blocks: eight 64-byte vectors, byte
    /// `4j + i` of vector `k` is row `16g+j`'s value `4k+i` plus 128 (unsigned,
    /// as `vpdpbusd` wants; the kernel subtracts `128 Σy`).
    Rows16,
}

impl Q4Layout {
    /// The layout this target's fastest kernel for `format` reads (the
    /// AVX-512 kernels read the three formats they were written for: the others
    /// take the AVX2 layout there).
    pub fn native_for(format: QFormat) -> Self {
        match Self::native() {
            Q4Layout::Rows16 if !format.in_rows16() => Q4Layout::Ggml,
            layout => layout,
        }
    }

    /// The layout this target's fastest kernel reads.
    pub fn native() -> Self {
        #[cfg(target_arch = "x86_64")]
        if avx512_vnni() {
            return Q4Layout::Rows16;
        }
        if cfg!(all(target_arch = "wasm32", target_feature = "relaxed-simd")) {
            Q4Layout::Rows4
        } else if cfg!(target_arch = "wasm32") {
            Q4Layout::Lanes
        } else {
            Q4Layout::Ggml
        }
    }

    /// Whether `format`'s byte blocks are interleaved by groups of rows in this
    /// layout, offset by 128 (Rows16's and Rows4's Q8_0), rather than stored
    /// row by row as 32 signed bytes.
    pub fn interleaves_bytes(self, format: QFormat) -> bool {
        match self {
            Q4Layout::Rows16 => format.bytes(),
            Q4Layout::Rows4 => format == QFormat::Q8_0,
            Q4Layout::Ggml | Q4Layout::Lanes => false,
        }
    }

    /// The bit of a row's fifth-bit word that holds value `j` in the Rows4 layout
    /// (byte `i` holds values `8k + i` at bit `k` and `8k + 4 + i` at bit `4 + k`).
    fn rows4_fifth_bit(j: usize) -> usize {
        let (k, p) = (j / 8, j % 8);
        8 * (p % 4) + if p < 4 { k } else { 4 + k }
    }

    /// Rows whose block scales (and, interleaved, quants) are stored together.
    pub fn group_rows(self) -> usize {
        if self == Q4Layout::Rows16 {
            16
        } else {
            4
        }
    }

    /// Value `j` (0..32) of a block's 16 bytes (layouts that keep a block's bytes together).
    #[inline(always)]
    fn get(self, q: &[u8], j: usize) -> u8 {
        match self {
            Q4Layout::Ggml | Q4Layout::Rows4 | Q4Layout::Rows16 => {
                if j < 16 {
                    q[j] & 0x0F
                } else {
                    q[j - 16] >> 4
                }
            }
            Q4Layout::Lanes => {
                let l = j % 8;
                let lane = q[2 * l] as u16 | (q[2 * l + 1] as u16) << 8;
                ((lane >> (4 * (j / 8))) & 0x0F) as u8
            }
        }
    }
}

/// The AVX-512 kernels' features (F, BW, DQ, VNNI; with `KVCHAT_NO_AVX512`
/// set, the AVX2 kernels are used instead: a switch for comparing the two).
#[cfg(target_arch = "x86_64")]
pub fn avx512_vnni() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vnni")
            && std::env::var_os("KVCHAT_NO_AVX512").is_none()
    })
}

/// The AVX2 kernels' feature (the activation quantization's too).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Chunks of rows per thread a threaded matmul is cut into.
const CHUNKS_PER_THREAD: usize = 4;

/// A weight matrix `[rows, cols]` repacked from GGUF blocks.
#[derive(Debug, Clone)]
pub struct QMatrix {
    pub format: QFormat,
    pub rows: usize,
    pub cols: usize,
    pub layout: Q4Layout,
    /// Per-block scale (f16 widened to f32), `[rows / G][block][G]` with `G`
    /// the layout's [`group_rows`](Q4Layout::group_rows).
    d: Vec<f32>,
    /// Per-block offset term: Q4_1's minimum, Q4_0's `-8 d` (values are stored
    /// unsigned 0..16 and the offset applied through the activations' sums).
    m: Vec<f32>,
    /// Q4: 16 bytes of nibbles per block in `layout` (interleaved layouts pad
    /// the rows to whole groups). Bytes formats: 32 signed bytes per block
    /// (Rows16's and Rows4's Q8_0: 32 offset bytes per block, interleaved).
    qs: Vec<u8>,
    /// Q6_K: the two integer scales of each block (values 0..16, 16..32), `[row][block][2]`.
    sub: Vec<i8>,
    /// Five-bit formats: each block's fifth bits in one word, `[row][block]`
    /// with bit `j` for value `j`; in [`Q4Layout::Rows4`] `[rows / 4][block][4]`
    /// (the four rows' words side by side: one 16-byte load) with bits in the
    /// nibbles' order: byte `i` of a row's word holds values `8k + i` (bit `k`)
    /// and `8k + 4 + i` (bit `4 + k`).
    qh: Vec<u32>,
}

/// The output of a matmul, shared by the threads that each write their own rows.
struct Out(*mut f32);
// SAFETY: threads write disjoint indices (their own rows) of a buffer that outlives them.
unsafe impl Sync for Out {}
unsafe impl Send for Out {}

impl Out {
    /// SAFETY: `i` is inside the output buffer and no other thread writes it.
    #[inline(always)]
    unsafe fn set(&self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }
}

impl QMatrix {
    /// Index of row `r`, block `b` in `d` and `m`.
    #[inline(always)]
    fn sidx(&self, r: usize, b: usize) -> usize {
        let gr = self.layout.group_rows();
        ((r / gr) * (self.cols / QK) + b) * gr + r % gr
    }

    /// Q6_K's integer scales of row `r`, block `b` (values 0..16 and 16..32); 1 for other formats.
    #[inline(always)]
    fn sub_scales(&self, r: usize, b: usize) -> [i32; 2] {
        if self.sub.is_empty() {
            return [1, 1];
        }
        let i = 2 * (r * (self.cols / QK) + b);
        [self.sub[i] as i32, self.sub[i + 1] as i32]
    }

    /// Byte value `j` (0..32) of row `r`, block `b`.
    #[inline(always)]
    fn q8(&self, r: usize, b: usize, j: usize) -> i8 {
        let nb = self.cols / QK;
        if self.layout.interleaves_bytes(self.format) {
            let gr = self.layout.group_rows();
            (self.qs[((r / gr) * nb + b) * 32 * gr + 4 * gr * (j / 4) + 4 * (r % gr) + j % 4] ^ 0x80) as i8
        } else {
            self.qs[(r * nb + b) * 32 + j] as i8
        }
    }

    /// Unsigned value `j` (0..32) of row `r`, block `b` of a four- or five-bit format.
    #[inline(always)]
    fn unsigned(&self, r: usize, b: usize, j: usize) -> u8 {
        let low = self.nibble(r, b, j);
        if self.qh.is_empty() {
            return low;
        }
        let nb = self.cols / QK;
        let (word, bit) = match self.layout {
            Q4Layout::Rows4 => (self.qh[((r / 4) * nb + b) * 4 + r % 4], Q4Layout::rows4_fifth_bit(j)),
            _ => (self.qh[r * nb + b], j),
        };
        low | (((word >> bit) & 1) << 4) as u8
    }

    /// Four-bit value `j` (0..32) of row `r`, block `b`.
    #[inline(always)]
    fn nibble(&self, r: usize, b: usize, j: usize) -> u8 {
        let nb = self.cols / QK;
        match self.layout {
            Q4Layout::Rows4 | Q4Layout::Rows16 => {
                let gr = self.layout.group_rows();
                let (k, p) = (j / 8, j % 8);
                let byte = self.qs[((r / gr) * nb + b) * 16 * gr + 4 * (r % gr) + 4 * gr * k + p % 4];
                if p < 4 {
                    byte & 0x0F
                } else {
                    byte >> 4
                }
            }
            layout => layout.get(&self.qs[(r * nb + b) * 16..(r * nb + b + 1) * 16], j),
        }
    }

    /// `out[t * rows + r] = dot(row r, x row t)` for `x` of `t_rows` rows of `cols`.
    /// With [`set_threads`](super::set_threads) above one, the rows are cut
    /// into [`CHUNKS_PER_THREAD`] chunks per thread that the threads take in
    /// turn (each writes its own rows: no reduction; a descheduled thread
    /// holds up one chunk, not a share).
    pub fn matmul(&self, x: &[f32], t_rows: usize, act: &mut QActivations, out: &mut [f32]) {
        Self::matmul_many([(self, out)], x, t_rows, act);
    }

    /// [`matmul`](Self::matmul) of several matrices of the same `cols` against
    /// the same `x` (Q, K and V; gate and up): the activations quantized once
    /// and, threaded, every matrix's chunks in one parallel pass (one hand-over
    /// to the helpers instead of one per matrix; the same rows, the same bits).
    pub fn matmul_many<const N: usize>(mats: [(&QMatrix, &mut [f32]); N], x: &[f32], t_rows: usize, act: &mut QActivations) {
        let Some(cols) = mats.first().map(|(m, _)| m.cols) else { return };
        debug_assert_eq!(x.len(), t_rows * cols);
        for (m, out) in &mats {
            assert!(m.cols == cols && out.len() == t_rows * m.rows, "matmul_many: shapes differ");
        }
        act.quantize(x, t_rows, cols);
        let act = &*act;
        let outs = mats.map(|(m, out)| (m, Out(out.as_mut_ptr())));
        let n = super::threads();
        let work: usize = outs.iter().map(|(m, _)| m.rows * cols * t_rows).sum();
        if n == 1 || work < 1 << 16 {
            for (m, o) in &outs {
                m.kernel(0..m.rows, t_rows, act, o);
            }
            return;
        }
        // Each matrix cut into contiguous ranges of whole groups of rows; chunk
        // `c` is range `c - first[i]` of the matrix `i` whose chunks hold it.
        let cuts = outs.each_ref().map(|(m, _)| m.cut(n));
        let mut first = [0; N];
        for i in 1..N {
            first[i] = first[i - 1] + cuts[i - 1].0;
        }
        let total = first[N - 1] + cuts[N - 1].0;
        super::par_for(n, total, &|c| {
            let i = first.partition_point(|&f| f <= c) - 1;
            let ((m, o), per_rows) = (&outs[i], cuts[i].1);
            let lo = ((c - first[i]) * per_rows).min(m.rows);
            let hi = (lo + per_rows).min(m.rows);
            if lo < hi {
                m.kernel(lo..hi, t_rows, act, o);
            }
        });
    }

    /// A threaded matmul's chunks of this matrix for `n` threads: `(chunks, rows per chunk)`.
    fn cut(&self, n: usize) -> (usize, usize) {
        let gr = self.layout.group_rows();
        let groups = self.rows.div_ceil(gr);
        let chunks = (n * CHUNKS_PER_THREAD).min(groups).max(1);
        let per = groups.div_ceil(chunks);
        (groups.div_ceil(per), per * gr)
    }

    /// Rows `rows` of the product (`rows.start` a multiple of the layout's group).
    fn kernel(&self, rows: Range<usize>, t_rows: usize, act: &QActivations, out: &Out) {
        #[cfg(target_arch = "x86_64")]
        {
            if self.layout == Q4Layout::Rows16 && avx512_vnni() {
                // SAFETY: the CPU supports the features the function is compiled for.
                unsafe { avx512::matmul(self, rows, t_rows, act, out) };
                return;
            }
            if self.layout == Q4Layout::Ggml && has_avx2() {
                // SAFETY: the CPU supports the features the function is compiled for.
                unsafe { avx2::matmul(self, rows, t_rows, act, out) };
                return;
            }
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        {
            let interleaved = self.layout == Q4Layout::Rows4 && (!self.format.bytes() || self.layout.interleaves_bytes(self.format));
            #[cfg(target_feature = "relaxed-simd")]
            if interleaved {
                relaxed::matmul(self, rows, t_rows, act, out);
                return;
            }
            // Q6_K's byte blocks are stored alike in both layouts (the interleaved
            // Rows4 blocks without relaxed SIMD, which only tests build, take the portable kernel).
            if self.layout == Q4Layout::Lanes || (self.layout == Q4Layout::Rows4 && !interleaved) {
                simd128::matmul(self, rows, t_rows, act, out);
                return;
            }
        }
        #[allow(unreachable_code)]
        portable::matmul(self, rows, t_rows, act, out);
    }

    /// Reads every byte of the matrix once with no arithmetic but an xor
    /// (the plain-read limit a decode step's matmuls are measured against):
    /// `(bytes read, their xor folded to 64 bits)`.
    pub fn read_once(&self) -> (usize, u64) {
        fn fold<T: Copy>(v: &[T], word: impl Fn(&[T]) -> u64, per: usize) -> u64 {
            // Four independent lanes of eight bytes: LLVM turns them into vector xors.
            let mut acc = [0u64; 4];
            let mut chunks = v.chunks_exact(4 * per);
            for c in &mut chunks {
                for (i, a) in acc.iter_mut().enumerate() {
                    *a ^= word(&c[i * per..(i + 1) * per]);
                }
            }
            chunks.remainder().chunks(per).fold(acc[0] ^ acc[1] ^ acc[2] ^ acc[3], |h, c| h ^ word(c))
        }
        let bytes = |c: &[u8]| c.iter().enumerate().fold(0u64, |w, (i, &b)| w | (b as u64) << (8 * i));
        let words = |c: &[u32]| c.iter().enumerate().fold(0u64, |w, (i, &x)| w ^ (x as u64) << (32 * (i % 2)));
        let floats = |c: &[f32]| c.iter().enumerate().fold(0u64, |w, (i, x)| w ^ (x.to_bits() as u64) << (32 * (i % 2)));
        let sub = |c: &[i8]| c.iter().enumerate().fold(0u64, |w, (i, &b)| w | (b as u8 as u64) << (8 * i));
        let h = fold(&self.qs, bytes, 8) ^ fold(&self.d, floats, 2) ^ fold(&self.m, floats, 2) ^ fold(&self.qh, words, 2) ^ fold(&self.sub, sub, 8);
        (self.qs.len() + 4 * (self.d.len() + self.m.len() + self.qh.len()) + self.sub.len(), h)
    }

    /// The portable kernels (the reference the SIMD ones are tested against).
    pub fn matmul_portable(&self, x: &[f32], t_rows: usize, act: &mut QActivations, out: &mut [f32]) {
        assert_eq!(out.len(), t_rows * self.rows);
        act.quantize(x, t_rows, self.cols);
        portable::matmul(self, 0..self.rows, t_rows, act, &Out(out.as_mut_ptr()));
    }

    /// Dequantizes row `r` into `out` (embedding lookups): per value
    /// `(q · sub) · d + m`, the kernels' integer product then their scale.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / QK;
        for b in 0..nb {
            let i = self.sidx(r, b);
            let d = self.d[i];
            let sub = self.sub_scales(r, b);
            let o = &mut out[b * QK..(b + 1) * QK];
            for (j, v) in o.iter_mut().enumerate() {
                *v = match self.format {
                    QFormat::Q4_0 => (self.nibble(r, b, j) as f32 - 8.0) * d,
                    f if !f.bytes() => self.unsigned(r, b, j) as f32 * d + self.m[i],
                    f if f.offset() == Offset::None => (self.q8(r, b, j) as i32 * sub[j / 16]) as f32 * d,
                    _ => self.q8(r, b, j) as f32 * d + self.m[i],
                };
            }
        }
    }
}
