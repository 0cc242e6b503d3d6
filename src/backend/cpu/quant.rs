//! Quantized dot-product kernels for the weight types small GGUF models ship
//! (Q4_0, Q4_1, Q8_0), with the weights repacked at load into separate scale
//! and quant arrays, and the activations quantized once per matmul to Q8 with
//! exactly llama.cpp's rounding (`quantize_row_q8_0` / `quantize_row_q8_1`).
//!
//! The loops are written so LLVM vectorizes them (SSE/AVX natively, simd128 in wasm).

use half::f16;
use std::ops::Range;

pub const QK: usize = 32;

/// Weight formats with a kernel here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QFormat {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl QFormat {
    /// Bytes of one 32-value block in the GGUF file.
    pub fn block_bytes(self) -> usize {
        match self {
            QFormat::Q4_0 => 18,
            QFormat::Q4_1 => 20,
            QFormat::Q8_0 => 34,
        }
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
    /// horizontal reduction per block. Q8 blocks are stored as in
    /// [`Lanes`](Self::Lanes).
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
    /// the rows to whole groups). Q8: 32 signed bytes per block (Rows16: 32
    /// offset bytes per block, interleaved).
    qs: Vec<u8>,
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

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// f16 bits → f32 through a table (256 KiB, built once): loading converts two
/// scales per 32 weights, and the software conversion was half the load time.
pub fn f16_to_f32(bits: u16) -> f32 {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (0..=u16::MAX).map(|b| f16::from_bits(b).to_f32()).collect())[bits as usize]
}

impl QMatrix {
    /// Repacks raw GGUF block data for this target's kernels.
    /// `data.len()` must be `rows * cols / 32 * block_bytes`.
    pub fn from_blocks(format: QFormat, rows: usize, cols: usize, data: &[u8]) -> Option<Self> {
        Self::from_blocks_with_layout(format, rows, cols, data, Q4Layout::native())
    }

    /// As [`from_blocks`](Self::from_blocks) with an explicit Q4 layout (tests compare them).
    pub fn from_blocks_with_layout(format: QFormat, rows: usize, cols: usize, data: &[u8], layout: Q4Layout) -> Option<Self> {
        if cols % QK != 0 {
            return None;
        }
        let nb = rows * cols / QK;
        let bb = format.block_bytes();
        if data.len() != nb * bb {
            return None;
        }
        let qlen = if format == QFormat::Q8_0 { 32 } else { 16 };
        let nbr = cols / QK;
        // Every layout keeps the scales of a group of rows together (`[rows / G][block][G]`,
        // rows padded to whole groups with zero scales): the kernels take a group per pass.
        let gr = layout.group_rows();
        let slots = rows.div_ceil(gr) * gr * nbr;
        let mut d = vec![0f32; slots];
        let mut m = vec![0f32; if format == QFormat::Q8_0 { 0 } else { slots }];
        let padded = layout == Q4Layout::Rows16 || (layout == Q4Layout::Rows4 && format != QFormat::Q8_0);
        // One pass over the file's blocks, each written straight to its place.
        let mut qs = vec![0u8; if padded { slots } else { nb } * qlen];
        for (i, blk) in data.chunks_exact(bb).enumerate() {
            let (r, b) = (i / nbr, i % nbr);
            let at = ((r / gr) * nbr + b) * gr + r % gr;
            let scale = f16_at(blk, 0);
            d[at] = scale;
            let nibbles = match format {
                QFormat::Q4_0 => {
                    m[at] = -8.0 * scale;
                    &blk[2..18]
                }
                QFormat::Q4_1 => {
                    m[at] = f16_at(blk, 2);
                    &blk[4..20]
                }
                QFormat::Q8_0 if layout == Q4Layout::Rows16 => {
                    let base = ((r / 16) * nbr + b) * 512 + 4 * (r % 16);
                    for (j, &v) in blk[2..34].iter().enumerate() {
                        qs[base + 64 * (j / 4) + j % 4] = v ^ 0x80;
                    }
                    continue;
                }
                QFormat::Q8_0 => {
                    qs[i * 32..i * 32 + 32].copy_from_slice(&blk[2..34]);
                    continue;
                }
            };
            let q = &mut qs[i * 16..i * 16 + 16];
            match layout {
                Q4Layout::Ggml => q.copy_from_slice(nibbles),
                Q4Layout::Rows4 | Q4Layout::Rows16 => {
                    // Byte i of vector k: values 8k+i (low) and 8k+4+i (high); GGUF byte
                    // l holds values l (low nibble) and l+16 (high nibble). Vectors are
                    // `4 * gr` bytes.
                    let v = 4 * gr;
                    let base = ((r / gr) * nbr + b) * 16 * gr + 4 * (r % gr);
                    let n = nibbles;
                    for i in 0..4 {
                        qs[base + i] = (n[i] & 0x0F) | (n[4 + i] << 4);
                        qs[base + v + i] = (n[8 + i] & 0x0F) | (n[12 + i] << 4);
                        qs[base + 2 * v + i] = (n[i] >> 4) | (n[4 + i] & 0xF0);
                        qs[base + 3 * v + i] = (n[8 + i] >> 4) | (n[12 + i] & 0xF0);
                    }
                }
                Q4Layout::Lanes => {
                    // Lane l: values l, l+8 (low nibbles of bytes l, l+8), l+16, l+24 (their high nibbles).
                    for l in 0..8 {
                        let (a, b) = (nibbles[l], nibbles[l + 8]);
                        let lane = (a & 0x0F) as u16 | ((b & 0x0F) as u16) << 4 | ((a >> 4) as u16) << 8 | ((b >> 4) as u16) << 12;
                        q[2 * l..2 * l + 2].copy_from_slice(&lane.to_le_bytes());
                    }
                }
            }
        }
        Some(Self { format, rows, cols, layout, d, m, qs })
    }

    /// Index of row `r`, block `b` in `d` and `m`.
    #[inline(always)]
    fn sidx(&self, r: usize, b: usize) -> usize {
        let gr = self.layout.group_rows();
        ((r / gr) * (self.cols / QK) + b) * gr + r % gr
    }

    /// Q8 value `j` (0..32) of row `r`, block `b`.
    #[inline(always)]
    fn q8(&self, r: usize, b: usize, j: usize) -> i8 {
        let nb = self.cols / QK;
        if self.layout == Q4Layout::Rows16 {
            (self.qs[((r / 16) * nb + b) * 512 + 64 * (j / 4) + 4 * (r % 16) + j % 4] ^ 0x80) as i8
        } else {
            self.qs[(r * nb + b) * 32 + j] as i8
        }
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
    /// With [`set_threads`](super::set_threads) above one, the rows are split
    /// among that many rayon threads (each writes its own rows: no reduction).
    pub fn matmul(&self, x: &[f32], t_rows: usize, act: &mut QActivations, out: &mut [f32]) {
        debug_assert_eq!(x.len(), t_rows * self.cols);
        assert_eq!(out.len(), t_rows * self.rows);
        act.quantize(x, t_rows, self.cols);
        let o = Out(out.as_mut_ptr());
        let n = super::threads();
        if n > 1 && self.rows * self.cols * t_rows >= 1 << 16 {
            // Contiguous ranges of whole groups of rows, one per thread.
            let gr = self.layout.group_rows();
            let groups = self.rows.div_ceil(gr);
            let per = groups.div_ceil(n);
            let act = &*act;
            super::par_for(n, &|i| {
                let lo = (i * per * gr).min(self.rows);
                let hi = ((i + 1) * per * gr).min(self.rows);
                if lo < hi {
                    self.kernel(lo..hi, t_rows, act, &o);
                }
            });
        } else {
            self.kernel(0..self.rows, t_rows, act, &o);
        }
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
            if self.layout == Q4Layout::Ggml && std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports the features the function is compiled for.
                unsafe { self.dots_avx2(rows, t_rows, act, out) };
                return;
            }
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        {
            #[cfg(target_feature = "relaxed-simd")]
            if self.layout == Q4Layout::Rows4 && self.format != QFormat::Q8_0 {
                simd128::matmul_rows4(self, rows, t_rows, act, out);
                return;
            }
            // Q8 blocks are stored alike in both layouts (Rows4 Q4 blocks without
            // relaxed SIMD, which only tests build, take the portable kernel).
            if self.layout == Q4Layout::Lanes || (self.layout == Q4Layout::Rows4 && self.format == QFormat::Q8_0) {
                simd128::matmul(self, rows, t_rows, act, out);
                return;
            }
        }
        #[allow(unreachable_code)]
        self.dots(rows, t_rows, act, out);
    }

    /// The portable kernels (the reference the SIMD ones are tested against).
    pub fn matmul_portable(&self, x: &[f32], t_rows: usize, act: &mut QActivations, out: &mut [f32]) {
        assert_eq!(out.len(), t_rows * self.rows);
        act.quantize(x, t_rows, self.cols);
        self.dots(0..self.rows, t_rows, act, &Out(out.as_mut_ptr()));
    }

    /// AVX2 kernels: four rows at a time against one to four tokens, each
    /// block's integer sums reduced across the four rows into one vector, then
    /// the float operations of [`dot_row_portable`](Self::dot_row_portable)
    /// in its order (no fused multiply-adds), so native, wasm and WebGPU
    /// products agree bit for bit.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn dots_avx2(&self, rows: Range<usize>, t_rows: usize, act: &QActivations, out: &Out) {
        let mut r = rows.start;
        while r + 4 <= rows.end {
            let mut t = 0;
            while t + 4 <= t_rows {
                avx2::rows4::<4>(self, r, t, act, out);
                t += 4;
            }
            for t in t..t_rows {
                avx2::rows4::<1>(self, r, t, act, out);
            }
            r += 4;
        }
        for r in r..rows.end {
            for t in 0..t_rows {
                out.set(t * self.rows + r, self.dot_row_portable(r, act.row(t)));
            }
        }
    }

    fn dots(&self, rows: Range<usize>, t_rows: usize, act: &QActivations, out: &Out) {
        for r in rows {
            for t in 0..t_rows {
                // SAFETY: r < self.rows and t < t_rows index the caller's output.
                unsafe { out.set(t * self.rows + r, self.dot_row_portable(r, act.row(t))) };
            }
        }
    }

    /// Row `r` against one activation row with the portable kernel: Q4 values
    /// unsigned 0..16 times the activations plus the offset term (Q4_1's
    /// minimum against the rounded `s`, Q4_0's `-8d` against the exact sum).
    /// The float operations are the SIMD kernels' (and the WebGPU kernel's),
    /// in the same order: per block `acc += isum * (d_w * d_a)`, the offsets
    /// summed apart and added last.
    fn dot_row_portable(&self, r: usize, y: QRow) -> f32 {
        let nb = self.cols / QK;
        let mut acc = 0f32;
        let mut macc = 0f32;
        for b in 0..nb {
            let i = self.sidx(r, b);
            let yb = &y.q[b * 32..b * 32 + 32];
            let blk = r * nb + b;
            let mut sumi = 0i32;
            match self.format {
                QFormat::Q8_0 if self.layout == Q4Layout::Rows16 => {
                    for (j, &v) in yb.iter().enumerate() {
                        sumi += self.q8(r, b, j) as i32 * v as i32;
                    }
                }
                QFormat::Q8_0 => {
                    for (&w, &v) in self.qs[blk * 32..blk * 32 + 32].iter().zip(yb) {
                        sumi += w as i8 as i32 * v as i32;
                    }
                }
                QFormat::Q4_0 | QFormat::Q4_1 => {
                    for (j, &v) in yb.iter().enumerate() {
                        sumi += self.nibble(r, b, j) as i32 * v as i32;
                    }
                }
            }
            acc += sumi as f32 * (self.d[i] * y.d[b]);
            match self.format {
                QFormat::Q4_1 => macc += self.m[i] * y.s[b],
                QFormat::Q4_0 => macc += self.m[i] * y.sx[b],
                QFormat::Q8_0 => {}
            }
        }
        acc + macc
    }

    /// Dequantizes row `r` into `out` (embedding lookups).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / QK;
        for b in 0..nb {
            let d = self.d[self.sidx(r, b)];
            let o = &mut out[b * QK..(b + 1) * QK];
            match self.format {
                QFormat::Q8_0 => {
                    for (j, v) in o.iter_mut().enumerate() {
                        *v = self.q8(r, b, j) as f32 * d;
                    }
                }
                QFormat::Q4_0 | QFormat::Q4_1 => {
                    for (j, v) in o.iter_mut().enumerate() {
                        let n = self.nibble(r, b, j);
                        *v = if self.format == QFormat::Q4_0 { (n as f32 - 8.0) * d } else { n as f32 * d + self.m[self.sidx(r, b)] };
                    }
                }
            }
        }
    }
}

/// Activations quantized to Q8 once per matmul: the bytes (and, in wasm,
/// the same values widened to i16), the scales as stored in f16, Q8_1's
/// `s = d * Σq` rounded to f16 (what Q4_1 uses, as llama.cpp does) and the
/// exact `d * Σq` (what Q4_0's offset uses).
#[derive(Debug, Default, Clone)]
pub struct QActivations {
    cols: usize,
    d: Vec<f32>,
    s: Vec<f32>,
    sx: Vec<f32>,
    /// `Σq` per block (the AVX-512 Q8 kernel's correction for its offset weights).
    qsum: Vec<i32>,
    q: Vec<i8>,
    q16: Vec<i16>,
    /// `d`, `s`, `sx` transposed to `[block][row]` (wasm prefill reads four rows' scales at once).
    dt: Vec<f32>,
    st: Vec<f32>,
    sxt: Vec<f32>,
}

impl QActivations {
    /// The last quantized activations: bytes, scales `d` (f16-rounded), `s`
    /// (f16-rounded `d * Σq`) and `sx` (`Σq * d`), one of each per block.
    pub fn quantized(&self) -> (&[i8], &[f32], &[f32], &[f32]) {
        (&self.q, &self.d, &self.s, &self.sx)
    }

    /// Quantizes `t_rows` rows of `cols` (what every matmul does first), with
    /// this target's SIMD where it has some: the bytes and scales of
    /// [`quantize_portable`](Self::quantize_portable).
    pub fn quantize(&mut self, x: &[f32], t_rows: usize, cols: usize) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            unsafe { self.quantize_avx2(x, t_rows, cols) };
            return;
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        {
            self.quantize_simd128(x, t_rows, cols);
            self.widen(t_rows);
            return;
        }
        #[allow(unreachable_code)]
        self.quantize_portable(x, t_rows, cols);
    }

    /// [`quantize_portable`](Self::quantize_portable) with simd128, four values per
    /// instruction (the same operations as [`quantize_avx2`](Self::quantize_avx2)).
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn quantize_simd128(&mut self, x: &[f32], t_rows: usize, cols: usize) {
        use core::arch::wasm32::*;
        self.resize(t_rows, cols);
        let (half, nhalf) = (f32x4_splat(0.5), f32x4_splat(-0.5));
        for (b, xs) in x.chunks_exact(QK).enumerate() {
            // SAFETY: a chunk is 32 floats.
            let v: [v128; 8] = std::array::from_fn(|i| unsafe { v128_load(xs.as_ptr().add(4 * i) as *const v128) });
            // pmax is exact on magnitudes (no NaN in activations; abs(-0) is +0).
            let a: [v128; 8] = std::array::from_fn(|i| f32x4_abs(v[i]));
            let m = f32x4_pmax(f32x4_pmax(f32x4_pmax(a[0], a[1]), f32x4_pmax(a[2], a[3])), f32x4_pmax(f32x4_pmax(a[4], a[5]), f32x4_pmax(a[6], a[7])));
            let amax = f32x4_extract_lane::<0>(m).max(f32x4_extract_lane::<1>(m)).max(f32x4_extract_lane::<2>(m).max(f32x4_extract_lane::<3>(m)));
            let d = amax / 127.0;
            let id = f32x4_splat(if d != 0.0 { 1.0 / d } else { 0.0 });
            let q: [v128; 8] = std::array::from_fn(|i| {
                let y = f32x4_mul(v[i], id);
                let t = i32x4_trunc_sat_f32x4(y);
                let f = f32x4_sub(y, f32x4_convert_i32x4(t));
                i32x4_add(i32x4_sub(t, f32x4_ge(f, half)), f32x4_le(f, nhalf))
            });
            let lo = i8x16_narrow_i16x8(i16x8_narrow_i32x4(q[0], q[1]), i16x8_narrow_i32x4(q[2], q[3]));
            let hi = i8x16_narrow_i16x8(i16x8_narrow_i32x4(q[4], q[5]), i16x8_narrow_i32x4(q[6], q[7]));
            // SAFETY: the 32 bytes of block b are inside `q` (sized above).
            unsafe {
                v128_store(self.q.as_mut_ptr().add(b * QK) as *mut v128, lo);
                v128_store(self.q.as_mut_ptr().add(b * QK + 16) as *mut v128, hi);
            }
            let s4 = i32x4_add(i32x4_add(i32x4_add(q[0], q[1]), i32x4_add(q[2], q[3])), i32x4_add(i32x4_add(q[4], q[5]), i32x4_add(q[6], q[7])));
            let sum = i32x4_extract_lane::<0>(s4) + i32x4_extract_lane::<1>(s4) + i32x4_extract_lane::<2>(s4) + i32x4_extract_lane::<3>(s4);
            self.set_scales(b, d, sum);
        }
    }

    /// [`quantize_portable`](Self::quantize_portable) with AVX2: the same operations
    /// (the maximum of the magnitudes, `v * (1 / d)`, truncation and the
    /// half-away step, an integer sum), eight values per instruction: the same bytes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn quantize_avx2(&mut self, x: &[f32], t_rows: usize, cols: usize) {
        use std::arch::x86_64::*;
        self.resize(t_rows, cols);
        let sign = _mm256_set1_ps(-0.0);
        let (half, nhalf) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5));
        // packs interleave the two 128-bit halves: this puts the 32 bytes back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (b, xs) in x.chunks_exact(QK).enumerate() {
            let p = xs.as_ptr();
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(p.add(8 * i)));
            let a: [__m256; 4] = std::array::from_fn(|i| _mm256_andnot_ps(sign, v[i]));
            let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            let q: [__m256i; 4] = std::array::from_fn(|i| {
                let y = _mm256_mul_ps(v[i], id);
                let t = _mm256_cvttps_epi32(y);
                let f = _mm256_sub_ps(y, _mm256_cvtepi32_ps(t));
                // The comparison masks are -1 where true: t + (f >= 0.5) - (f <= -0.5).
                let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(f, half));
                let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(f, nhalf));
                _mm256_add_epi32(_mm256_sub_epi32(t, up), down)
            });
            let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            _mm256_storeu_si256(self.q.as_mut_ptr().add(b * QK) as *mut __m256i, _mm256_permutevar8x32_epi32(bytes, order));
            let s8 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
            let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
            let sum = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 1)));
            self.set_scales(b, d, sum);
        }
    }

    /// Sizes the buffers for `t_rows` rows of `cols`; returns the blocks per row.
    fn resize(&mut self, t_rows: usize, cols: usize) -> usize {
        let nb = cols / QK;
        self.cols = cols;
        self.d.resize(t_rows * nb, 0.0);
        self.s.resize(t_rows * nb, 0.0);
        self.sx.resize(t_rows * nb, 0.0);
        self.qsum.resize(t_rows * nb, 0);
        self.q.resize(t_rows * cols, 0);
        nb
    }

    /// Block `b`'s scales from its `d = amax / 127` and `Σq`.
    #[inline(always)]
    fn set_scales(&mut self, b: usize, d: f32, sum: i32) {
        let dh = f16::from_f32(d).to_f32();
        self.d[b] = dh;
        self.s[b] = f16::from_f32(sum as f32 * d).to_f32();
        self.sx[b] = sum as f32 * dh;
        self.qsum[b] = sum;
    }

    /// The scalar quantization (the reference the SIMD ones are tested against):
    /// llama.cpp's `quantize_row_q8_0` / `_q8_1` rounding.
    pub fn quantize_portable(&mut self, x: &[f32], t_rows: usize, cols: usize) {
        self.resize(t_rows, cols);
        for (b, xs) in x.chunks_exact(QK).enumerate() {
            let amax = xs.iter().fold(0f32, |a, &v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let qs = &mut self.q[b * QK..(b + 1) * QK];
            let mut sum = 0i32;
            for (q, &v) in qs.iter_mut().zip(xs) {
                *q = round_half_away(v * id) as i8;
            }
            for &q in qs.iter() {
                sum += q as i32;
            }
            self.set_scales(b, d, sum);
        }
        self.widen(t_rows);
    }

    /// wasm: the bytes widened to i16 and the scales transposed (the simd128 kernels read them).
    fn widen(&mut self, t_rows: usize) {
        let nb = self.cols / QK;
        if cfg!(target_arch = "wasm32") {
            self.q16.clear();
            self.q16.extend(self.q.iter().map(|&v| v as i16));
            for (src, dst) in [(&self.d, &mut self.dt), (&self.s, &mut self.st), (&self.sx, &mut self.sxt)] {
                dst.resize(t_rows * nb, 0.0);
                for t in 0..t_rows {
                    for b in 0..nb {
                        dst[b * t_rows + t] = src[t * nb + b];
                    }
                }
            }
        }
    }

    fn row(&self, t: usize) -> QRow<'_> {
        let nb = self.cols / QK;
        let (bs, vs) = (t * nb..(t + 1) * nb, t * self.cols..(t + 1) * self.cols);
        QRow { d: &self.d[bs.clone()], s: &self.s[bs.clone()], sx: &self.sx[bs], q: &self.q[vs.clone()], q16: self.q16.get(vs).unwrap_or(&[]) }
    }
}

/// C's `roundf` (half away from zero) for |x| <= 127, without a libm call
/// so the quantization loop vectorizes (truncate, then step by the fraction).
#[inline(always)]
fn round_half_away(x: f32) -> i32 {
    let t = x as i32;
    let f = x - t as f32;
    t + (f >= 0.5) as i32 - (f <= -0.5) as i32
}

#[derive(Clone, Copy)]
struct QRow<'a> {
    d: &'a [f32],
    s: &'a [f32],
    sx: &'a [f32],
    q: &'a [i8],
    #[allow(dead_code)]
    q16: &'a [i16],
}

/// AVX-512 VNNI kernels over the [`Q4Layout::Rows16`] layout: sixteen rows
/// per pass, each lane one row, so a block needs eight `vpdpbusd` against
/// broadcast activation bytes and no horizontal reduction; up to eight tokens
/// share each unpacked block. The float operations are the other kernels', in
/// their order, lane by lane.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Out, QActivations, QFormat, QMatrix, QK};
    use std::arch::x86_64::*;
    use std::ops::Range;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn matmul(m: &QMatrix, rows: Range<usize>, t_rows: usize, act: &QActivations, out: &Out) {
        for g in rows.start / 16..rows.end.div_ceil(16) {
            let valid = (rows.end - 16 * g).min(16);
            let mut t = 0;
            // Fewer than eight tokens: token 0 alone first (streaming the group from
            // memory at decode speed), then the rest from cache: +12% at four tokens;
            // at eight, one pass with every token was faster (measured).
            if t_rows > 1 && t_rows < 8 {
                group::<1>(m, g, 0, valid, act, out);
                t = 1;
            }
            while t + 8 <= t_rows {
                group::<8>(m, g, t, valid, act, out);
                t += 8;
            }
            match t_rows - t {
                7 => group::<7>(m, g, t, valid, act, out),
                6 => group::<6>(m, g, t, valid, act, out),
                5 => group::<5>(m, g, t, valid, act, out),
                4 => group::<4>(m, g, t, valid, act, out),
                3 => group::<3>(m, g, t, valid, act, out),
                2 => group::<2>(m, g, t, valid, act, out),
                1 => group::<1>(m, g, t, valid, act, out),
                _ => {}
            }
        }
    }

    /// Σ over one block: lane `j` = row `16g+j`'s integer dot with the 32
    /// activation bytes at `y` (the block's eight weight vectors in `w`).
    #[inline(always)]
    unsafe fn block(w: &[__m512i; 8], y: *const i8) -> __m512i {
        let b = |k: usize| _mm512_set1_epi32(std::ptr::read_unaligned(y.add(4 * k) as *const i32));
        let a = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], b(0)), w[2], b(2)), w[4], b(4)), w[6], b(6));
        let c = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], b(1)), w[3], b(3)), w[5], b(5)), w[7], b(7));
        _mm512_add_epi32(a, c)
    }

    /// Rows `16g..16g+valid` against tokens `t0..t0+T`.
    #[inline(always)]
    unsafe fn group<const T: usize>(m: &QMatrix, g: usize, t0: usize, valid: usize, act: &QActivations, out: &Out) {
        let nb = m.cols / QK;
        let q8 = m.format == QFormat::Q8_0;
        let w = m.qs.as_ptr().add(g * nb * if q8 { 512 } else { 256 });
        let d16 = m.d.as_ptr().add(g * nb * 16);
        let mask = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let wv: [__m512i; 8] = if q8 {
                let wb = w.add(b * 512);
                std::array::from_fn(|k| _mm512_loadu_si512(wb.add(64 * k) as *const _))
            } else {
                let wb = w.add(b * 256);
                let v: [__m512i; 4] = std::array::from_fn(|k| _mm512_loadu_si512(wb.add(64 * k) as *const _));
                std::array::from_fn(|k| if k % 2 == 0 { _mm512_and_si512(v[k / 2], mask) } else { _mm512_and_si512(_mm512_srli_epi16(v[k / 2], 4), mask) })
            };
            let dw = _mm512_loadu_ps(d16.add(b * 16));
            for (i, a) in acc.iter_mut().enumerate() {
                let t = t0 + i;
                let mut s = block(&wv, act.q.as_ptr().add(t * m.cols + b * QK));
                if q8 {
                    // The weights were stored plus 128.
                    s = _mm512_sub_epi32(s, _mm512_set1_epi32(128 * *act.qsum.get_unchecked(t * nb + b)));
                }
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*act.d.get_unchecked(t * nb + b)));
                *a = _mm512_add_ps(*a, _mm512_mul_ps(_mm512_cvtepi32_ps(s), scale));
            }
        }
        let ys = if m.format == QFormat::Q4_1 { &act.s } else { &act.sx };
        let m16 = m.m.as_ptr().add(g * nb * 16);
        let keep: __mmask16 = if valid == 16 { 0xFFFF } else { (1u16 << valid) - 1 };
        for (i, a) in acc.into_iter().enumerate() {
            let t = t0 + i;
            let r = if q8 {
                a
            } else {
                let mut macc = _mm512_setzero_ps();
                for b in 0..nb {
                    macc = _mm512_add_ps(macc, _mm512_mul_ps(_mm512_loadu_ps(m16.add(b * 16)), _mm512_set1_ps(*ys.get_unchecked(t * nb + b))));
                }
                _mm512_add_ps(a, macc)
            };
            _mm512_mask_storeu_ps(out.0.add(t * m.rows + 16 * g), keep, r);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Out, QActivations, QFormat, QMatrix, QK};
    use std::arch::x86_64::*;

    /// 16 bytes of nibbles → 32 bytes: low nibbles first, then high nibbles (values 0..32 in order).
    #[inline(always)]
    unsafe fn nibbles(q: *const u8) -> __m256i {
        let b = _mm_loadu_si128(q as *const __m128i);
        let m = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(b, m);
        let hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
        _mm256_set_m128i(hi, lo)
    }

    /// Σ x·y over 32 bytes in eight i32 lanes: `x` unsigned (Q4 values 0..16)
    /// or, with `signed`, both signed (Q8; the sign moved onto `y`, as ggml does).
    #[inline(always)]
    unsafe fn dot32(x: __m256i, y: __m256i, signed: bool) -> __m256i {
        let (ux, sy) = if signed { (_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x)) } else { (x, y) };
        _mm256_madd_epi16(_mm256_maddubs_epi16(ux, sy), _mm256_set1_epi16(1))
    }

    /// `[Σa, Σb, Σc, Σd]` of four vectors of eight i32 lanes (exact).
    #[inline(always)]
    unsafe fn reduce4(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m128i {
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
        _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1))
    }

    /// Rows `r..r+4` (Ggml layout) against tokens `t0..t0+T`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn rows4<const T: usize>(m: &QMatrix, r: usize, t0: usize, act: &QActivations, out: &Out) {
        let nb = m.cols / QK;
        let q8 = m.format == QFormat::Q8_0;
        let bw = if q8 { 32 } else { 16 };
        let w = |i: usize| m.qs.as_ptr().add((r + i) * nb * bw);
        let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
        // The four rows' scales of a block are adjacent (see `sidx`); r is a multiple of four.
        let sc = |v: &[f32], b: usize| _mm_loadu_ps(v.as_ptr().add(((r / 4) * nb + b) * 4));
        let ys = if m.format == QFormat::Q4_1 { &act.s } else { &act.sx };
        let mut acc = [_mm_setzero_ps(); T];
        let mut macc = [_mm_setzero_ps(); T];
        for b in 0..nb {
            let load = |p: *const u8| if q8 { _mm256_loadu_si256(p.add(b * 32) as *const __m256i) } else { nibbles(p.add(b * 16)) };
            let (x0, x1, x2, x3) = (load(w0), load(w1), load(w2), load(w3));
            let dw = sc(&m.d, b);
            for i in 0..T {
                let t = t0 + i;
                let y = _mm256_loadu_si256(act.q.as_ptr().add(t * m.cols + b * QK) as *const __m256i);
                let s = reduce4(dot32(x0, y, q8), dot32(x1, y, q8), dot32(x2, y, q8), dot32(x3, y, q8));
                let scale = _mm_mul_ps(dw, _mm_set1_ps(*act.d.get_unchecked(t * nb + b)));
                acc[i] = _mm_add_ps(acc[i], _mm_mul_ps(_mm_cvtepi32_ps(s), scale));
                if !q8 {
                    macc[i] = _mm_add_ps(macc[i], _mm_mul_ps(sc(&m.m, b), _mm_set1_ps(*ys.get_unchecked(t * nb + b))));
                }
            }
        }
        for i in 0..T {
            let mut v = [0f32; 4];
            _mm_storeu_ps(v.as_mut_ptr(), _mm_add_ps(acc[i], macc[i]));
            for (j, x) in v.into_iter().enumerate() {
                out.set((t0 + i) * m.rows + r + j, x);
            }
        }
    }
}

/// wasm simd128 kernels. Over the [`Q4Layout::Lanes`] layout (and Q8 blocks):
/// decode passes take four weight rows against one token, prefill passes one
/// weight row against four tokens, so every unpacked weight vector or loaded
/// activation vector is used four times; the four integer block sums are
/// reduced into one vector and scaled with one multiply. With relaxed SIMD, Q4
/// blocks in the [`Q4Layout::Rows4`] layout use `i16x8.relaxed_dot_i8x16_i7x16_s`
/// (the nibbles are the 7-bit operand: pmaddubsw on x86, sdot on ARM): no
/// widening and no horizontal reduction, four rows per vector.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128 {
    use super::{Out, QActivations, QFormat, QMatrix, QK};
    use core::arch::wasm32::*;
    use std::ops::Range;

    #[inline(always)]
    unsafe fn ld<T>(p: *const T) -> v128 {
        v128_load(p as *const v128)
    }

    /// `[Σa, Σb, Σc, Σd]` (shufps-shaped shuffles only).
    #[inline(always)]
    fn reduce4(a: v128, b: v128, c: v128, d: v128) -> v128 {
        let ab = i32x4_add(i32x4_shuffle::<0, 2, 4, 6>(a, b), i32x4_shuffle::<1, 3, 5, 7>(a, b));
        let cd = i32x4_add(i32x4_shuffle::<0, 2, 4, 6>(c, d), i32x4_shuffle::<1, 3, 5, 7>(c, d));
        i32x4_add(i32x4_shuffle::<0, 2, 4, 6>(ab, cd), i32x4_shuffle::<1, 3, 5, 7>(ab, cd))
    }

    /// A Q4 block unpacked once, used against several activation rows.
    type Q4 = [v128; 4];

    /// The eight u16 lanes of a [`Q4Layout::Lanes`](super::Q4Layout::Lanes) block → 32 values as i16.
    #[inline(always)]
    unsafe fn unpack_q4(w: *const u8) -> Q4 {
        let v = ld(w);
        let mask = u16x8_splat(0x0F);
        [v128_and(v, mask), v128_and(u16x8_shr(v, 4), mask), v128_and(u16x8_shr(v, 8), mask), u16x8_shr(v, 12)]
    }

    /// Integer dot of an unpacked Q4 block with activation row `t`, block `b` (4 partial lanes).
    #[inline(always)]
    unsafe fn dot_q4(w: &Q4, act: &QActivations, at: usize) -> v128 {
        dot16(w, act.q16.as_ptr().add(at))
    }

    #[inline(always)]
    unsafe fn unpack_q8(w: *const u8) -> [v128; 4] {
        let (a, b) = (ld(w), ld(w.add(16)));
        [i16x8_extend_low_i8x16(a), i16x8_extend_high_i8x16(a), i16x8_extend_low_i8x16(b), i16x8_extend_high_i8x16(b)]
    }

    /// Σ w·y over 32 i16 lanes (4 partial lanes).
    #[inline(always)]
    unsafe fn dot16(w: &[v128; 4], y: *const i16) -> v128 {
        i32x4_add(
            i32x4_add(i32x4_dot_i16x8(w[0], ld(y)), i32x4_dot_i16x8(w[1], ld(y.add(8)))),
            i32x4_add(i32x4_dot_i16x8(w[2], ld(y.add(16))), i32x4_dot_i16x8(w[3], ld(y.add(24)))),
        )
    }

    /// `rows` cut into blocks of whole groups of four rows of about 64 KiB of
    /// weights, so that with more than four tokens (prefill, batched decode)
    /// each block is read from memory once and stays in cache for every token
    /// pass (the 28 MiB output projection was otherwise streamed once per four tokens).
    fn row_blocks(m: &QMatrix, rows: Range<usize>, t_rows: usize) -> impl Iterator<Item = Range<usize>> {
        let nb = m.cols / QK;
        let row_bytes = nb * (if m.format == QFormat::Q8_0 { 36 } else { 24 });
        let step = if t_rows <= 1 { rows.len().max(1) } else { ((64 << 10) / row_bytes.max(1)).max(4) / 4 * 4 };
        (rows.start..rows.end).step_by(step).map(move |r0| r0..(r0 + step).min(rows.end))
    }

    pub fn matmul(m: &QMatrix, rows: Range<usize>, t_rows: usize, act: &QActivations, out: &Out) {
        for block in row_blocks(m, rows, t_rows) {
            matmul_block(m, block, t_rows, act, out);
        }
    }

    /// Token passes over one row block. With several tokens the first pass takes
    /// token 0 alone: a one-token pass stays as fast as decode while it streams
    /// the block from memory, and the four-token passes then read it from cache
    /// (four-token passes that also streamed it ran at about half their speed).
    fn matmul_block(m: &QMatrix, rows: Range<usize>, t_rows: usize, act: &QActivations, out: &Out) {
        let mut t = 0;
        if t_rows > 1 {
            one_token(m, rows.clone(), 0, act, out);
            t = 1;
        }
        while t + 4 <= t_rows {
            for r in rows.clone() {
                // SAFETY: r < rows, t + 4 <= t_rows: every pointer stays inside the buffers.
                unsafe { row_x4(m, r, t, t_rows, act, out) };
            }
            t += 4;
        }
        while t < t_rows {
            one_token(m, rows.clone(), t, act, out);
            t += 1;
        }
    }

    fn one_token(m: &QMatrix, rows: Range<usize>, t: usize, act: &QActivations, out: &Out) {
        let mut r = rows.start;
        while r + 4 <= rows.end && r % 4 == 0 {
            // SAFETY: r + 3 < rows, t < t_rows.
            unsafe { rows4_x1(m, r / 4, t, act, out) };
            r += 4;
        }
        for r in r..rows.end {
            // SAFETY: as above.
            unsafe { out.set(t * m.rows + r, m.dot_row_portable(r, act.row(t))) };
        }
    }

    /// Q4 rows in the [`Q4Layout::Rows4`](super::Q4Layout::Rows4) layout: groups
    /// of four rows against four tokens at a time, then one token at a time.
    #[cfg(target_feature = "relaxed-simd")]
    pub fn matmul_rows4(m: &QMatrix, rows: Range<usize>, t_rows: usize, act: &QActivations, out: &Out) {
        for block in row_blocks(m, rows, t_rows) {
            rows4_block_pass(m, block, t_rows, act, out);
        }
    }

    #[cfg(target_feature = "relaxed-simd")]
    fn rows4_block_pass(m: &QMatrix, rows: Range<usize>, t_rows: usize, act: &QActivations, out: &Out) {
        let groups = rows.start / 4..rows.end.div_ceil(4);
        // Token 0 alone first (see `matmul_block`), then four tokens per pass, then the rest at once.
        let mut t = 0;
        if t_rows > 1 {
            for g in groups.clone() {
                // SAFETY: g < rows.div_ceil(4) (the layout pads to whole groups), t < t_rows.
                unsafe { g4_xn::<1>(m, g, 0, act, out) };
            }
            t = 1;
        }
        while t + 4 <= t_rows {
            for g in groups.clone() {
                // SAFETY: as above, t + 4 <= t_rows.
                unsafe { g4_xn::<4>(m, g, t, act, out) };
            }
            t += 4;
        }
        for g in groups {
            // SAFETY: as above; each arm's tokens are below t_rows.
            unsafe {
                match t_rows - t {
                    3 => g4_xn::<3>(m, g, t, act, out),
                    2 => g4_xn::<2>(m, g, t, act, out),
                    1 => g4_xn::<1>(m, g, t, act, out),
                    _ => {}
                }
            }
        }
    }

    /// Σ over one Rows4 block: lane `j` = row `4g+j`'s integer dot with the 32
    /// activation bytes at `y`. The 16 pair sums per i16 lane stay below
    /// 16 · 15 · 127 < 2^15: no overflow.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    unsafe fn rows4_block(w: &[v128; 8], y: *const i8) -> v128 {
        let sp = |o: usize| v128_load32_splat(y.add(o) as *const u32);
        let dot = |k: usize, acc: v128| i32x4_relaxed_dot_i8x16_i7x16_add(sp(4 * k), w[k], acc);
        let z = i32x4_splat(0);
        let a = dot(6, dot(4, dot(2, dot(0, z))));
        let b = dot(7, dot(5, dot(3, dot(1, z))));
        i32x4_add(a, b)
    }

    /// The four vectors of a Rows4 block → eight vectors of values 0..16 (low, high nibbles).
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    unsafe fn rows4_unpack(w: *const u8) -> [v128; 8] {
        let mask = u8x16_splat(0x0F);
        let nib = |k: usize| {
            let v = ld(w.add(16 * k));
            (v128_and(v, mask), v128_and(u16x8_shr(v, 4), mask))
        };
        let ((a, b), (c, d), (e, f), (g, h)) = (nib(0), nib(1), nib(2), nib(3));
        [a, b, c, d, e, f, g, h]
    }

    /// Stores rows `4g..4g+4` of token `t` (fewer past the last row).
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    unsafe fn store4(m: &QMatrix, g: usize, t: usize, v: v128, out: &Out) {
        let at = t * m.rows + 4 * g;
        if 4 * g + 4 <= m.rows {
            v128_store(out.0.add(at) as *mut v128, v);
        } else {
            let lanes: [f32; 4] = core::mem::transmute(v);
            for (j, x) in lanes.into_iter().enumerate().take(m.rows - 4 * g) {
                out.set(at + j, x);
            }
        }
    }

    /// The offset term of rows `4g..4g+4` for token `t`: Σ_b m · s (Q4_1's
    /// rounded `s`, Q4_0's exact `Σq·d`), summed in block order as the other kernels do.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    unsafe fn rows4_offset(m: &QMatrix, g: usize, t: usize, act: &QActivations) -> v128 {
        let nb = m.cols / QK;
        let m4 = m.m.as_ptr().add(g * nb * 4);
        let ys = if m.format == QFormat::Q4_1 { act.s.as_ptr() } else { act.sx.as_ptr() }.add(t * nb);
        let mut macc = f32x4_splat(0.0);
        for b in 0..nb {
            macc = f32x4_add(macc, f32x4_mul(ld(m4.add(b * 4)), f32x4_splat(*ys.add(b))));
        }
        macc
    }

    /// Rows `4g..4g+4` (Rows4 layout) against tokens `t0..t0+T` (T = 4 in prefill
    /// and batched passes, 1 for the rest): each block unpacked once for all T.
    #[cfg(target_feature = "relaxed-simd")]
    #[inline(always)]
    unsafe fn g4_xn<const T: usize>(m: &QMatrix, g: usize, t0: usize, act: &QActivations, out: &Out) {
        let nb = m.cols / QK;
        let w = m.qs.as_ptr().add(g * nb * 64);
        let d4 = m.d.as_ptr().add(g * nb * 4);
        let y = act.q.as_ptr().add(t0 * m.cols);
        let yd = act.d.as_ptr().add(t0 * nb);
        let mut acc = [f32x4_splat(0.0); T];
        for b in 0..nb {
            let wv = rows4_unpack(w.add(b * 64));
            let dw = ld(d4.add(b * 4));
            for (i, a) in acc.iter_mut().enumerate() {
                let v = rows4_block(&wv, y.add(i * m.cols + b * QK));
                *a = f32x4_add(*a, f32x4_mul(f32x4_convert_i32x4(v), f32x4_mul(dw, f32x4_splat(*yd.add(i * nb + b)))));
            }
        }
        for (i, a) in acc.into_iter().enumerate() {
            store4(m, g, t0 + i, f32x4_add(a, rows4_offset(m, g, t0 + i, act)), out);
        }
    }

    /// Rows `4g..4g+4` against token `t`.
    #[inline(always)]
    unsafe fn rows4_x1(m: &QMatrix, g: usize, t: usize, act: &QActivations, out: &Out) {
        let nb = m.cols / QK;
        let q8 = m.format == QFormat::Q8_0;
        let bw = if q8 { 32 } else { 16 };
        let w = m.qs.as_ptr();
        let d4 = m.d.as_ptr().add(g * nb * 4);
        let (yd, ys) = (act.d.as_ptr().add(t * nb), if m.format == QFormat::Q4_1 { act.s.as_ptr() } else { act.sx.as_ptr() }.add(t * nb));
        let mut acc = f32x4_splat(0.0);
        let mut macc = f32x4_splat(0.0);
        let row = |i: usize| w.add((4 * g + i) * nb * bw);
        let (w0, w1, w2, w3) = (row(0), row(1), row(2), row(3));
        for b in 0..nb {
            let at = t * m.cols + b * QK;
            let o = b * bw;
            let v = if q8 {
                let y = act.q16.as_ptr().add(at);
                reduce4(dot16(&unpack_q8(w0.add(o)), y), dot16(&unpack_q8(w1.add(o)), y), dot16(&unpack_q8(w2.add(o)), y), dot16(&unpack_q8(w3.add(o)), y))
            } else {
                reduce4(
                    dot_q4(&unpack_q4(w0.add(o)), act, at),
                    dot_q4(&unpack_q4(w1.add(o)), act, at),
                    dot_q4(&unpack_q4(w2.add(o)), act, at),
                    dot_q4(&unpack_q4(w3.add(o)), act, at),
                )
            };
            let scale = f32x4_mul(ld(d4.add(b * 4)), f32x4_splat(*yd.add(b)));
            acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(v), scale));
            if !q8 {
                macc = f32x4_add(macc, f32x4_mul(ld(m.m.as_ptr().add((g * nb + b) * 4)), f32x4_splat(*ys.add(b))));
            }
        }
        let r = f32x4_add(acc, macc);
        v128_store(out.0.add(t * m.rows + 4 * g) as *mut v128, r);
    }

    /// Row `r` against tokens `t0..t0+4` (of `t_rows`).
    #[inline(always)]
    unsafe fn row_x4(m: &QMatrix, r: usize, t0: usize, t_rows: usize, act: &QActivations, out: &Out) {
        let nb = m.cols / QK;
        let q8 = m.format == QFormat::Q8_0;
        let bw = if q8 { 32 } else { 16 };
        let w = m.qs.as_ptr().add(r * nb * bw);
        let st = if m.format == QFormat::Q4_1 { act.st.as_ptr() } else { act.sxt.as_ptr() };
        let mut acc = f32x4_splat(0.0);
        let mut macc = f32x4_splat(0.0);
        for b in 0..nb {
            let at = t0 * m.cols + b * QK;
            let v = if q8 {
                let wv = unpack_q8(w.add(b * 32));
                let y = act.q16.as_ptr().add(at);
                reduce4(dot16(&wv, y), dot16(&wv, y.add(m.cols)), dot16(&wv, y.add(2 * m.cols)), dot16(&wv, y.add(3 * m.cols)))
            } else {
                let wv = unpack_q4(w.add(b * 16));
                reduce4(dot_q4(&wv, act, at), dot_q4(&wv, act, at + m.cols), dot_q4(&wv, act, at + 2 * m.cols), dot_q4(&wv, act, at + 3 * m.cols))
            };
            let i = m.sidx(r, b);
            let scale = f32x4_mul(ld(act.dt.as_ptr().add(b * t_rows + t0)), f32x4_splat(*m.d.get_unchecked(i)));
            acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(v), scale));
            if !q8 {
                macc = f32x4_add(macc, f32x4_mul(ld(st.add(b * t_rows + t0)), f32x4_splat(*m.m.get_unchecked(i))));
            }
        }
        let res = f32x4_add(acc, macc);
        out.set(t0 * m.rows + r, f32x4_extract_lane::<0>(res));
        out.set((t0 + 1) * m.rows + r, f32x4_extract_lane::<1>(res));
        out.set((t0 + 2) * m.rows + r, f32x4_extract_lane::<2>(res));
        out.set((t0 + 3) * m.rows + r, f32x4_extract_lane::<3>(res));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_half_away_is_c_roundf_on_the_quantization_range() {
        let mut x = -127.0f32;
        while x <= 127.0 {
            for v in [x, x.next_up(), x.next_down()] {
                if v.abs() <= 127.0 {
                    assert_eq!(super::round_half_away(v), v.round() as i32, "{v}");
                }
            }
            x += 0.25;
        }
        for v in [0.49999997f32, -0.49999997, 0.5, -0.5, 1.5, -2.5, 126.5, -126.5, 0.0, -0.0] {
            assert_eq!(super::round_half_away(v), v.round() as i32, "{v}");
        }
    }
}
