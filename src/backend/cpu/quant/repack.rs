//! Repacking at load: GGUF blocks → a [`QMatrix`]'s scale, offset and quant
//! arrays, the quants shuffled into the [`Q4Layout`] the kernels read.

use super::decode::{self, Block32};
use super::{Offset, Q4Layout, QFormat, QMatrix, Values, QK};
use half::f16;

/// f16 bits → f32 through a table (256 KiB, built once): loading converts two
/// scales per 32 weights, and the software conversion was half the load time.
pub fn f16_to_f32(bits: u16) -> f32 {
    f16_table()[bits as usize]
}

/// The table of [`f16_to_f32`], every u16 (its length lets indexing by a u16 skip the bounds check).
fn f16_table() -> &'static [f32; 65536] {
    static TABLE: std::sync::OnceLock<Box<[f32; 65536]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0f32; 65536]);
        for (b, x) in t.iter_mut().enumerate() {
            *x = f16::from_bits(b as u16).to_f32();
        }
        t
    })
}

impl QMatrix {
    /// Repacks raw GGUF block data for this target's kernels.
    /// `data.len()` must be `rows * cols / block_values * block_bytes`.
    pub fn from_blocks(format: QFormat, rows: usize, cols: usize, data: &[u8]) -> Option<Self> {
        Self::from_blocks_with_layout(format, rows, cols, data, Q4Layout::native_for(format))
    }

    /// As [`from_blocks`](Self::from_blocks) with an explicit Q4 layout (tests
    /// compare them); `None` for a format the layout's kernels do not read.
    pub fn from_blocks_with_layout(format: QFormat, rows: usize, cols: usize, data: &[u8], layout: Q4Layout) -> Option<Self> {
        let mut builder = QMatrixBuilder::with_layout(format, rows, cols, layout)?;
        builder.add_rows(0, data).then_some(())?;
        builder.finish()
    }

    /// A matrix filled from its GGUF blocks in pieces of whole rows, so the
    /// file's bytes need not be held whole (`None` as for `from_blocks`).
    pub fn builder(format: QFormat, rows: usize, cols: usize) -> Option<QMatrixBuilder> {
        QMatrixBuilder::with_layout(format, rows, cols, Q4Layout::native_for(format))
    }
}

/// A [`QMatrix`] being repacked piece by piece (see [`QMatrix::builder`]).
pub struct QMatrixBuilder {
    format: QFormat,
    rows: usize,
    cols: usize,
    packer: Packer,
    /// Rows given so far (pieces come in order).
    filled: usize,
}

impl QMatrixBuilder {
    fn with_layout(format: QFormat, rows: usize, cols: usize, layout: Q4Layout) -> Option<Self> {
        if !cols.is_multiple_of(format.block_values()) || (layout == Q4Layout::Rows16 && !format.in_rows16()) {
            return None;
        }
        rows.checked_mul(cols)?;
        Some(Self { format, rows, cols, packer: Packer::new(format, rows, cols, layout), filled: 0 })
    }

    /// The file's blocks of rows `first_row..`, whole rows following the last
    /// piece; false (and nothing stored) for a piece out of order or not whole rows.
    pub fn add_rows(&mut self, first_row: usize, data: &[u8]) -> bool {
        let format = self.format;
        let row_bytes = self.cols / format.block_values() * format.block_bytes();
        if first_row != self.filled || !data.len().is_multiple_of(row_bytes) || data.len() / row_bytes > self.rows - first_row {
            return false;
        }
        let (bb, p) = (format.block_bytes(), &mut self.packer);
        let first_block = first_row * (self.cols / format.block_values());
        match format {
            QFormat::Q4_0 | QFormat::Q4_1 | QFormat::Q8_0 => {
                // One pass over the file's blocks, row by row, each written straight to its place.
                let table = f16_table();
                let half = |blk: &[u8], at: usize| table[u16::from_le_bytes([blk[at], blk[at + 1]]) as usize];
                for (r, row) in data.chunks_exact(row_bytes).enumerate() {
                    let r = first_row + r;
                    for (b, blk) in row.chunks_exact(bb).enumerate() {
                        let scale = half(blk, 0);
                        match format {
                            QFormat::Q4_0 => p.nibbles(r, b, scale, -8.0 * scale, &blk[2..18]),
                            QFormat::Q4_1 => p.nibbles(r, b, scale, half(blk, 2), &blk[4..20]),
                            _ => p.bytes(r, b, scale, 0.0, &blk[2..34]),
                        }
                    }
                }
            }
            QFormat::Q5_0 => {
                for (i, blk) in data.chunks_exact(bb).enumerate() {
                    let i = first_block + i;
                    let v = decode::q5_0(blk);
                    p.five(i / p.nbr, i % p.nbr, v.d, v.m, &v.q);
                }
            }
            QFormat::Q4K | QFormat::Q5K | QFormat::Q6K => {
                let mut subs = [Block32::default(); 8];
                for (i, blk) in data.chunks_exact(bb).enumerate() {
                    let i = first_block + i;
                    decode::k_quant(format, blk, &mut subs);
                    let (r, b0) = ((8 * i) / p.nbr, (8 * i) % p.nbr);
                    for (k, v) in subs.iter().enumerate() {
                        match format.values() {
                            Values::Eight => p.bytes(r, b0 + k, v.d, v.m, &v.q),
                            Values::Five => p.five(r, b0 + k, v.d, v.m, &v.q),
                            Values::Four => p.nibbles(r, b0 + k, v.d, v.m, &v.q[..16]),
                        }
                        if format.sub_scales() {
                            p.sub[2 * (r * p.nbr + b0 + k)..][..2].copy_from_slice(&v.sub);
                        }
                    }
                }
            }
        }
        self.filled += data.len() / row_bytes;
        true
    }

    /// The matrix, once every row was given.
    pub fn finish(self) -> Option<QMatrix> {
        if self.filled != self.rows {
            return None;
        }
        let (format, rows, cols, p) = (self.format, self.rows, self.cols, self.packer);
        Some(QMatrix { format, rows, cols, layout: p.layout, d: p.d, m: p.m, qs: p.qs, sub: p.sub, qh: p.qh })
    }
}

/// The arrays of a [`QMatrix`] being filled, block by block.
struct Packer {
    layout: Q4Layout,
    /// Blocks of 32 per row, rows per group of the layout.
    nbr: usize,
    gr: usize,
    /// Byte blocks interleaved by groups of rows ([`Q4Layout::interleaves_bytes`]).
    interleaved_bytes: bool,
    d: Vec<f32>,
    m: Vec<f32>,
    qs: Vec<u8>,
    sub: Vec<i8>,
    qh: Vec<u32>,
}

impl Packer {
    fn new(format: QFormat, rows: usize, cols: usize, layout: Q4Layout) -> Self {
        let nbr = cols / QK;
        // Every layout keeps the scales of a group of rows together (`[rows / G][block][G]`,
        // rows padded to whole groups with zero scales): the kernels take a group per pass.
        let gr = layout.group_rows();
        let slots = rows.div_ceil(gr) * gr * nbr;
        let qlen = if format.bytes() { 32 } else { 16 };
        let padded = layout == Q4Layout::Rows16 || (layout == Q4Layout::Rows4 && (!format.bytes() || layout.interleaves_bytes(format)));
        let has_offset = format.offset() != Offset::None;
        Self {
            layout,
            nbr,
            gr,
            interleaved_bytes: layout.interleaves_bytes(format),
            d: vec![0f32; slots],
            m: vec![0f32; if has_offset { slots } else { 0 }],
            qs: vec![0u8; if padded { slots } else { rows * nbr } * qlen],
            sub: vec![0i8; if format.sub_scales() { 2 * rows * nbr } else { 0 }],
            qh: vec![0u32; if format.values() == Values::Five { rows.div_ceil(4) * 4 * nbr } else { 0 }],
        }
    }

    /// Stores block `b` of row `r`'s scale and offset (dropped for formats without one).
    fn scales(&mut self, r: usize, b: usize, d: f32, m: f32) {
        let at = self.group_slot(r, b);
        self.d[at] = d;
        if !self.m.is_empty() {
            self.m[at] = m;
        }
    }

    /// Block `b` of row `r`'s place in the group-major arrays: `[rows / G][block][G]`
    /// (`G`, the layout's group of rows, a power of two: shifts, not divisions).
    #[inline(always)]
    fn group_slot(&self, r: usize, b: usize) -> usize {
        let shift = self.gr.trailing_zeros();
        (((r >> shift) * self.nbr + b) << shift) + (r & (self.gr - 1))
    }

    /// A four-bit block: 16 bytes in the GGML order.
    fn nibbles(&mut self, r: usize, b: usize, d: f32, m: f32, n: &[u8]) {
        self.scales(r, b, d, m);
        let i = r * self.nbr + b;
        match self.layout {
            Q4Layout::Ggml => self.qs[i * 16..i * 16 + 16].copy_from_slice(n),
            Q4Layout::Rows4 | Q4Layout::Rows16 => {
                // The group's block: four vectors of 4 * G bytes, this row's 4 bytes in each.
                let (gr, slot) = (self.gr, self.group_slot(r, b));
                let first = (slot - (r & (gr - 1))) * 16 + 4 * (r & (gr - 1));
                interleave_rows(&mut self.qs[first..first + 12 * gr + 4], 4 * gr, n);
            }
            Q4Layout::Lanes => to_lanes(&mut self.qs[i * 16..i * 16 + 16], n),
        }
    }

    /// A five-bit block: 32 values 0..32 (the low nibbles as a four-bit block, the fifth bits apart).
    fn five(&mut self, r: usize, b: usize, d: f32, m: f32, v: &[u8]) {
        let nibbles: [u8; 16] = std::array::from_fn(|j| (v[j] & 0x0F) | (v[j + 16] & 0x0F) << 4);
        self.nibbles(r, b, d, m, &nibbles);
        let word = |bit: fn(usize) -> usize| v.iter().enumerate().fold(0u32, |h, (j, &x)| h | (((x >> 4) & 1) as u32) << bit(j));
        if self.layout == Q4Layout::Rows4 {
            self.qh[((r / 4) * self.nbr + b) * 4 + r % 4] = word(Q4Layout::rows4_fifth_bit);
        } else {
            self.qh[r * self.nbr + b] = word(|j| j);
        }
    }

    /// A byte block: 32 signed values.
    fn bytes(&mut self, r: usize, b: usize, d: f32, m: f32, v: &[u8]) {
        self.scales(r, b, d, m);
        let i = r * self.nbr + b;
        if self.interleaved_bytes {
            let (gr, slot) = (self.gr, self.group_slot(r, b));
            let first = (slot - (r & (gr - 1))) * 32 + 4 * (r & (gr - 1));
            interleave_bytes(&mut self.qs[first..first + 28 * gr + 4], 4 * gr, v);
        } else {
            self.qs[i * 32..i * 32 + 32].copy_from_slice(v);
        }
    }
}

/// A Q8 block of one row in [`Q4Layout::Rows16`] / [`Q4Layout::Rows4`]: byte
/// `4j + i` of vector `k` (`v` bytes, `4 * gr`) is row `j`'s value `4k+i`
/// plus 128; `qs` starts at the row's first byte and holds `7 * v + 4` bytes.
fn interleave_bytes(qs: &mut [u8], v: usize, vals: &[u8]) {
    // Four values at a time: vector k gets values 4k..4k+4 at the row's place.
    for (k, four) in vals.chunks_exact(4).enumerate() {
        let word = u32::from_le_bytes([four[0], four[1], four[2], four[3]]) ^ 0x8080_8080;
        qs[k * v..k * v + 4].copy_from_slice(&word.to_le_bytes());
    }
}

/// A Q4 block of one row in [`Q4Layout::Rows4`] / [`Q4Layout::Rows16`]: four
/// vectors of `v` bytes (`4 * gr`), the row's 4 bytes at the start of each
/// (`qs` starts at the row's first byte and holds `3 * v + 4` bytes).
fn interleave_rows(qs: &mut [u8], v: usize, n: &[u8]) {
    // Byte i of vector k: values 8k+i (low) and 8k+4+i (high); GGUF byte
    // l holds values l (low nibble) and l+16 (high nibble). Four bytes at a
    // time: word j of the block is bytes 4j..4j+4.
    let word = |j: usize| u32::from_le_bytes([n[4 * j], n[4 * j + 1], n[4 * j + 2], n[4 * j + 3]]);
    let (w0, w1, w2, w3) = (word(0), word(1), word(2), word(3));
    const LOW: u32 = 0x0F0F_0F0F;
    let vectors = [
        (w0 & LOW) | ((w1 & LOW) << 4),
        (w2 & LOW) | ((w3 & LOW) << 4),
        ((w0 >> 4) & LOW) | (w1 & !LOW),
        ((w2 >> 4) & LOW) | (w3 & !LOW),
    ];
    for (k, x) in vectors.iter().enumerate() {
        qs[k * v..k * v + 4].copy_from_slice(&x.to_le_bytes());
    }
}

/// A Q4 block in [`Q4Layout::Lanes`] (16 bytes at `q`).
fn to_lanes(q: &mut [u8], nibbles: &[u8]) {
    // Lane l: values l, l+8 (low nibbles of bytes l, l+8), l+16, l+24 (their high nibbles).
    for l in 0..8 {
        let (a, b) = (nibbles[l], nibbles[l + 8]);
        let lane = (a & 0x0F) as u16 | ((b & 0x0F) as u16) << 4 | ((a >> 4) as u16) << 8 | ((b >> 4) as u16) << 12;
        q[2 * l..2 * l + 2].copy_from_slice(&lane.to_le_bytes());
    }
}
