//! GGUF bytes → checked metadata and tensor infos.
//!
//! The browser hands us bytes from an arbitrary URL, so nothing in the header is
//! trusted: [`validate`] walks the whole header with checked arithmetic first,
//! rejecting any length, count or offset that points past the bytes actually
//! present or that would allocate more than [`MAX_METADATA_BYTES`]. Only then is
//! candle's `gguf_file::Content::read` called to build the metadata map.

use crate::error::{Error, Result};
use crate::fnv::Fnv;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use std::borrow::Cow;
use std::io::Cursor;

mod metadata;
pub use metadata::Metadata;

/// Upper bound for the in-memory size of the parsed metadata (vocab arrays and
/// strings). SmolLM2's is about 6 MB; a real tokenizer with 256k entries stays
/// well below this.
pub const MAX_METADATA_BYTES: u64 = 512 << 20;
const MAX_TENSORS: u64 = 1 << 16;
const MAX_KV: u64 = 1 << 16;
const MAX_DEPTH: usize = 4;
/// In-memory cost of one parsed `Value` (an enum holding a String/Vec).
const VALUE_SIZE: u64 = std::mem::size_of::<Value>() as u64;

/// A GGUF file's bytes kept somewhere other than wasm memory (the browser's
/// ArrayBuffer) and read on demand, so that loading need not hold the whole
/// file beside the weights it becomes.
pub trait ByteSource {
    /// The file's length in bytes.
    fn byte_len(&self) -> u64;
    /// Fills `out` with the file's bytes from `offset` (a range inside the file).
    fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<()>;
}

/// Where a parsed file's tensors are read from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// The whole file in memory: tensors are read in place.
    Memory(&'a [u8]),
    Reader(&'a dyn ByteSource),
}

impl<'a> Source<'a> {
    fn byte_len(&self) -> u64 {
        match self {
            Source::Memory(b) => b.len() as u64,
            Source::Reader(r) => r.byte_len(),
        }
    }
}

/// The most header bytes read from a [`ByteSource`] that is not in memory
/// (metadata within [`MAX_METADATA_BYTES`] and the tensor table).
const MAX_HEADER_BYTES: u64 = MAX_METADATA_BYTES + (64 << 20);

/// A parsed, validated GGUF file, its tensors read from its [`ByteSource`].
pub struct Gguf<'a> {
    source: Source<'a>,
    meta: Metadata,
    /// The buffer [`tensor_rows`](Self::tensor_rows) reads pieces into, kept
    /// from tensor to tensor (one allocation, cleared once, for the whole load).
    piece: std::cell::RefCell<Vec<u8>>,
}

impl std::fmt::Debug for Gguf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("bytes", &self.source.byte_len())
            .field("metadata", &self.content.metadata.len())
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

impl<'a> Gguf<'a> {
    /// Validates the header, then parses it.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        validate(bytes)?;
        Ok(Self { source: Source::Memory(bytes), meta: Metadata { content: read_content(bytes)? }, piece: Default::default() })
    }

    /// Validates and parses the header of the file in `source`, reading only
    /// the header (a prefix doubled until it holds it); tensors are read
    /// from the source when they are asked for.
    pub fn read(source: &'a dyn ByteSource) -> Result<Self> {
        let header = read_header(source, source.byte_len())?;
        Ok(Self { source: Source::Reader(source), meta: Metadata { content: read_content(&header)? }, piece: Default::default() })
    }

    /// A 64-bit identity of the file (FNV-1a): its length, every metadata key
    /// and scalar value (arrays by length), every tensor's name, type, shape
    /// and offset, and the first and last 4 KiB of the tensor data. Saved
    /// sessions carry it, so a cache is restored only into the model that made it.
    pub fn fingerprint(&self) -> Result<u64> {
        let mut h = Fnv::default();
        h.write(&self.source.byte_len().to_le_bytes());
        h.write(&self.content.tensor_data_offset.to_le_bytes());
        let mut keys: Vec<_> = self.content.metadata.keys().collect();
        keys.sort();
        for k in keys {
            h.write(k.as_bytes());
            match &self.content.metadata[k] {
                Value::Array(a) => h.write(&(a.len() as u64).to_le_bytes()),
                v => h.write(format!("{v:?}").as_bytes()),
            }
        }
        let mut names: Vec<_> = self.content.tensor_infos.keys().collect();
        names.sort();
        for n in names {
            let t = &self.content.tensor_infos[n];
            h.write(format!("{n}:{:?}:{:?}:{}", t.ggml_dtype, t.shape.dims(), t.offset).as_bytes());
        }
        let (start, end) = (self.content.tensor_data_offset.min(self.source.byte_len()), self.source.byte_len());
        let n = (end - start).min(4096) as usize;
        let mut buf = vec![0u8; n];
        for at in [start, end - n as u64] {
            match &self.source {
                Source::Memory(b) => buf.copy_from_slice(&b[at as usize..at as usize + n]),
                Source::Reader(r) => r.read_at(at, &mut buf)?,
            }
            h.write(&buf);
        }
        Ok(h.0)
    }

    /// The names of every tensor in the file (in no particular order).
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.content.tensor_infos.keys().map(String::as_str)
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Shape of a tensor in candle's order (rows last-to-first reversed: `[rows, cols]`).
    pub fn tensor_dims(&self, name: &str) -> Option<Vec<usize>> {
        self.content
            .tensor_infos
            .get(name)
            .map(|t| t.shape.dims().to_vec())
    }

    pub fn tensor_dtype(&self, name: &str) -> Option<GgmlDType> {
        self.content.tensor_infos.get(name).map(|t| t.ggml_dtype)
    }

    /// Reads one tensor, checking its shape against `expected` (candle order).
    pub fn tensor(&self, name: &str, expected: &[usize], device: &Device) -> Result<QTensor> {
        let dims = self.tensor_dims(name).ok_or_else(|| Error::Tensor {
            name: name.into(),
            reason: "missing from the file".into(),
        })?;
        if dims != expected {
            return Err(Error::Tensor {
                name: name.into(),
                reason: format!("shape {dims:?} disagrees with the hyper-parameters {expected:?}"),
            });
        }
        let (data, dt) = self.tensor_data(name, expected)?;
        candle_core::quantized::ggml_file::qtensor_from_ggml(dt, &data, dims, device)
            .map_err(|e| Error::Tensor { name: name.into(), reason: e.to_string() })
    }

    /// The raw block bytes of one tensor with its type: in place when the file
    /// is in memory, else read from the source. The shape is checked against
    /// `expected` (candle order) and the byte range against the file.
    pub fn tensor_data(&self, name: &str, expected: &[usize]) -> Result<(Cow<'a, [u8]>, GgmlDType)> {
        let (start, len, dt) = self.tensor_range(name, expected)?;
        match self.source {
            Source::Memory(bytes) => Ok((Cow::Borrowed(&bytes[start as usize..][..len]), dt)),
            Source::Reader(source) => {
                let mut data = vec![0u8; len];
                source.read_at(start, &mut data)?;
                Ok((Cow::Owned(data), dt))
            }
        }
    }

    /// Visits one tensor's raw bytes in pieces of whole rows, at most
    /// `max_bytes` each (at least one row): `visit(first_row, bytes)`. A file in
    /// memory is one piece read in place; otherwise only one piece is held at a
    /// time. Returns the tensor's type.
    pub fn tensor_rows(&self, name: &str, expected: &[usize], max_bytes: usize, mut visit: impl FnMut(usize, &[u8]) -> Result<()>) -> Result<GgmlDType> {
        let (start, len, dt) = self.tensor_range(name, expected)?;
        let source = match self.source {
            Source::Memory(bytes) => {
                visit(0, &bytes[start as usize..][..len])?;
                return Ok(dt);
            }
            Source::Reader(source) => source,
        };
        let rows = if expected.len() >= 2 { expected[0].max(1) } else { 1 };
        let row_bytes = len / rows;
        let per_piece = (max_bytes / row_bytes.max(1)).clamp(1, rows);
        let mut piece = self.piece.borrow_mut();
        if piece.len() < per_piece * row_bytes {
            piece.resize(per_piece * row_bytes, 0);
        }
        for first in (0..rows).step_by(per_piece) {
            let n = per_piece.min(rows - first);
            let buf = &mut piece[..n * row_bytes];
            source.read_at(start + (first * row_bytes) as u64, buf)?;
            visit(first, buf)?;
        }
        Ok(dt)
    }

    /// A tensor's byte range in the file (start, length) and type, checked.
    fn tensor_range(&self, name: &str, expected: &[usize]) -> Result<(u64, usize, GgmlDType)> {
        let bad = |reason: String| Error::Tensor { name: name.into(), reason };
        let info = self.content.tensor_infos.get(name).ok_or_else(|| bad("missing from the file".into()))?;
        let dims = info.shape.dims();
        if dims != expected {
            return Err(bad(format!("shape {dims:?} disagrees with the hyper-parameters {expected:?}")));
        }
        let dt = info.ggml_dtype;
        let elems = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("too many elements".into()))?;
        if elems % dt.block_size() != 0 {
            return Err(bad("not a whole number of blocks".into()));
        }
        let len = (elems / dt.block_size()).checked_mul(dt.type_size()).ok_or_else(|| bad("too large".into()))?;
        let start = self.content.tensor_data_offset.checked_add(info.offset).ok_or_else(|| bad("offset overflows".into()))?;
        start
            .checked_add(len as u64)
            .filter(|&end| end <= self.source.byte_len() && usize::try_from(end).is_ok())
            .ok_or_else(|| bad(format!("data ({len} bytes at {start}) runs past the end of the file")))?;
        Ok((start, len, dt))
    }
}

impl std::ops::Deref for Gguf<'_> {
    type Target = Metadata;
    fn deref(&self) -> &Metadata {
        &self.meta
    }
}

/// A bounds-checked little-endian reader over the header: `bytes` are the
/// file's first bytes (all of them, or a prefix), `file_len` its length.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    file_len: u64,
    /// Set when a read failed only because the prefix ended before the file.
    short: bool,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], file_len: u64) -> Self {
        Self { bytes, pos: 0, file_len, short: false }
    }
    /// Bytes left in the file from the current position.
    fn remaining(&self) -> u64 {
        self.file_len.saturating_sub(self.pos as u64)
    }
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let remaining = self.remaining();
        if n > remaining {
            return Err(Error::Gguf(format!(
                "truncated: {what} needs {n} bytes at offset {}, only {remaining} left",
                self.pos
            )));
        }
        if n > (self.bytes.len() - self.pos) as u64 {
            self.short = true;
            return Err(Error::Gguf(format!("the header runs past the {} bytes read", self.bytes.len())));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn string(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.u64(what)?;
        self.take(n, what)
    }
}

/// Size in bytes of one scalar metadata value of GGUF type `t`, or None for string/array.
fn scalar_size(t: u32) -> Result<Option<u64>> {
    Ok(match t {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        8 | 9 => None,
        _ => return Err(Error::Gguf(format!("unknown metadata value type {t}"))),
    })
}

/// Walks one metadata value; returns its estimated in-memory cost.
fn skip_value(r: &mut Reader, t: u32, depth: usize) -> Result<u64> {
    if depth > MAX_DEPTH {
        return Err(Error::Gguf("metadata arrays nested too deeply".into()));
    }
    if let Some(size) = scalar_size(t)? {
        if t == 7 {
            let b = r.take(1, "bool value")?[0];
            if b > 1 {
                return Err(Error::Gguf(format!("bool metadata value {b} is not 0 or 1")));
            }
        } else {
            r.take(size, "metadata value")?;
        }
        return Ok(VALUE_SIZE);
    }
    if t == 8 {
        let s = r.string("metadata string")?;
        return Ok(VALUE_SIZE + s.len() as u64);
    }
    // Array: element type, count, elements.
    let et = r.u32("array element type")?;
    let n = r.u64("array length")?;
    let remaining = r.remaining();
    match scalar_size(et)? {
        Some(size) => {
            let need = n.checked_mul(size).ok_or_else(|| Error::Gguf(format!("array length {n} overflows")))?;
            if need > remaining {
                return Err(Error::Gguf(format!(
                    "array of {n} elements needs {need} bytes, only {remaining} left"
                )));
            }
            if et == 7 {
                for _ in 0..n {
                    skip_value(r, et, depth + 1)?;
                }
            } else {
                r.take(need, "array data")?;
            }
            Ok(VALUE_SIZE + n * VALUE_SIZE)
        }
        None => {
            // Each string/array element needs at least 8 bytes on disk.
            if n.saturating_mul(8) > remaining {
                return Err(Error::Gguf(format!(
                    "array of {n} elements cannot fit in the {remaining} bytes left"
                )));
            }
            let mut cost = VALUE_SIZE;
            for _ in 0..n {
                cost = cost.saturating_add(skip_value(r, et, depth + 1)?);
                if cost > MAX_METADATA_BYTES {
                    return Err(Error::Memory(format!(
                        "metadata would need more than {} MiB",
                        MAX_METADATA_BYTES >> 20
                    )));
                }
            }
            Ok(cost)
        }
    }
}

/// The weight types candle can run (ggml's type ids).
fn ggml_dtype(t: u32) -> Option<GgmlDType> {
    Some(match t {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// The name ggml gives a weight type no kernel here reads (ggml.h's `ggml_type`), for the refusal.
fn ggml_type_name(t: u32) -> Option<&'static str> {
    Some(match t {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// Checks every length, count and offset in a GGUF header against the bytes present.
pub fn validate(bytes: &[u8]) -> Result<()> {
    validate_header(bytes, bytes.len() as u64).map(|_| ())
}

/// The header of a `file_len`-byte file from its first bytes, read from
/// `source` in a prefix doubled until the header fits (at most
/// [`MAX_HEADER_BYTES`]), validated.
fn read_header(source: &dyn ByteSource, file_len: u64) -> Result<Vec<u8>> {
    let mut n = file_len.min(1 << 20);
    loop {
        let mut prefix = vec![0u8; n as usize];
        source.read_at(0, &mut prefix)?;
        match validate_header(&prefix, file_len)? {
            Some(_) => return Ok(prefix),
            None if n >= MAX_HEADER_BYTES => return Err(Error::Memory(format!("the header is larger than {} MiB", MAX_HEADER_BYTES >> 20))),
            None => n = file_len.min(n * 2).min(MAX_HEADER_BYTES),
        }
    }
}

/// candle's metadata map and tensor table from a validated header.
fn read_content(header: &[u8]) -> Result<gguf_file::Content> {
    gguf_file::Content::read(&mut Cursor::new(header)).map_err(|e| Error::Gguf(e.to_string()))
}

/// Validates the header found in `prefix`, the first bytes of a `file_len`-byte
/// file: the tensor data's start, or None when the header goes on past the prefix.
fn validate_header(prefix: &[u8], file_len: u64) -> Result<Option<u64>> {
    let mut r = Reader::new(prefix, file_len);
    match walk_header(&mut r) {
        Ok(start) => Ok(Some(start)),
        Err(_) if r.short => Ok(None),
        Err(e) => Err(e),
    }
}

fn walk_header(r: &mut Reader) -> Result<u64> {
    if r.file_len == 0 {
        return Err(Error::Gguf("the file is empty".into()));
    }
    let (n_tensors, n_kv) = read_preamble(r)?;
    let alignment = walk_metadata(r, n_kv)?;
    let mut infos = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        infos.push(read_tensor_info(r, alignment)?);
    }
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    check_tensor_data_in_file(infos, data_start, r.file_len)?;
    Ok(data_start)
}

/// Magic and version; returns the declared tensor and metadata-entry counts, each bounded.
fn read_preamble(r: &mut Reader) -> Result<(u64, u64)> {
    let len = r.file_len;
    let magic = r.take(4, "magic").map_err(|_| {
        Error::Gguf(format!("only {len} bytes: too short to be a GGUF file"))
    })?;
    if magic != b"GGUF" {
        return Err(Error::Gguf(format!(
            "not a GGUF file (starts with {:02x?}, expected \"GGUF\")",
            magic
        )));
    }
    let version = r.u32("version")?;
    match version {
        2 | 3 => {}
        1 => return Err(Error::Gguf("GGUF version 1 is obsolete; convert the model with a current llama.cpp".into())),
        v => return Err(Error::Gguf(format!("unsupported GGUF version {v}"))),
    }
    let n_tensors = r.u64("tensor count")?;
    let n_kv = r.u64("metadata count")?;
    if n_tensors > MAX_TENSORS || n_kv > MAX_KV {
        return Err(Error::Gguf(format!(
            "header declares {n_tensors} tensors and {n_kv} metadata entries: too many"
        )));
    }
    Ok((n_tensors, n_kv))
}

/// Walks `n_kv` metadata entries within [`MAX_METADATA_BYTES`]; returns the tensor data alignment.
fn walk_metadata(r: &mut Reader, n_kv: u64) -> Result<u64> {
    let mut cost: u64 = 0;
    let mut alignment: u64 = gguf_file::DEFAULT_ALIGNMENT;
    for _ in 0..n_kv {
        let key = r.string("metadata key")?;
        let t = r.u32("metadata type")?;
        let start = r.pos;
        cost = cost.saturating_add(key.len() as u64 + skip_value(r, t, 0)?);
        if cost > MAX_METADATA_BYTES {
            return Err(Error::Memory(format!(
                "metadata would need more than {} MiB",
                MAX_METADATA_BYTES >> 20
            )));
        }
        if key == b"general.alignment" {
            alignment = alignment_value(t, &r.bytes[start..r.pos])?;
        }
    }
    Ok(alignment)
}

/// `general.alignment` from its type and raw value: a 32-bit power of two up to 65536.
fn alignment_value(t: u32, v: &[u8]) -> Result<u64> {
    let a = match (t, v.len()) {
        (4, 4) | (5, 4) => u32::from_le_bytes([v[0], v[1], v[2], v[3]]) as u64,
        _ => return Err(Error::Gguf("general.alignment must be a 32-bit integer".into())),
    };
    if a == 0 || !a.is_power_of_two() || a > 1 << 16 {
        return Err(Error::Gguf(format!("bad general.alignment {a}")));
    }
    Ok(a)
}

/// One tensor's header entry, its rank, dimensions, type and offset checked: (name, offset, data size).
fn read_tensor_info(r: &mut Reader, alignment: u64) -> Result<(String, u64, u64)> {
    let name = String::from_utf8_lossy(r.string("tensor name")?).into_owned();
    let (first, elems) = read_tensor_dims(r, &name)?;
    let ty = r.u32("tensor type")?;
    let dtype = ggml_dtype(ty).ok_or_else(|| match ggml_type_name(ty) {
        Some(known) => Error::Unsupported(format!("tensor {name} is {known}: kvchat has no kernel for it")),
        None => Error::Tensor { name: name.clone(), reason: format!("unknown or unsupported weight type {ty}") },
    })?;
    let block = dtype.block_size() as u64;
    if first % block != 0 {
        return Err(Error::Tensor {
            name,
            reason: format!("row length {first} is not a multiple of the {dtype:?} block size {block}"),
        });
    }
    let size = elems / block * dtype.type_size() as u64;
    let offset = r.u64("tensor offset")?;
    if offset % alignment != 0 {
        return Err(Error::Tensor { name, reason: format!("offset {offset} is not aligned to {alignment}") });
    }
    Ok((name, offset, size))
}

/// A tensor's rank (1..=4) and non-zero dimensions; returns its row length and element count (at most 2^40).
fn read_tensor_dims(r: &mut Reader, name: &str) -> Result<(u64, u64)> {
    let n_dims = r.u32("tensor rank")?;
    if n_dims == 0 || n_dims > 4 {
        return Err(Error::Tensor { name: name.into(), reason: format!("rank {n_dims} is not 1..=4") });
    }
    let mut elems: u64 = 1;
    let mut first = 0;
    for d in 0..n_dims {
        let dim = r.u64("tensor dimension")?;
        if d == 0 {
            first = dim;
        }
        if dim == 0 {
            return Err(Error::Tensor { name: name.into(), reason: "has a zero dimension".into() });
        }
        // Dimensions become `usize` when read, 32 bits in wasm: a larger one would wrap.
        if dim > u32::MAX as u64 {
            return Err(Error::Tensor { name: name.into(), reason: format!("dimension {dim} is larger than 2^32 - 1") });
        }
        elems = elems.checked_mul(dim).filter(|&e| e <= 1 << 40).ok_or_else(|| Error::Tensor {
            name: name.into(),
            reason: "element count overflows".into(),
        })?;
    }
    Ok((first, elems))
}

/// Checks that every tensor's data, from `data_start`, ends inside the
/// `len`-byte file, that no two tensors share a name and that no two tensors'
/// bytes overlap (one weight read as two would be a model the file's author
/// did not describe honestly).
fn check_tensor_data_in_file(mut infos: Vec<(String, u64, u64)>, data_start: u64, len: u64) -> Result<()> {
    check_tensor_ranges_disjoint(&mut infos)?;
    for (name, offset, size) in infos {
        let end = data_start.checked_add(offset).and_then(|s| s.checked_add(size));
        match end {
            Some(end) if end <= len => {}
            _ => {
                return Err(Error::Tensor {
                    name,
                    reason: format!(
                        "data ({size} bytes at offset {offset}) runs past the end of the {len}-byte file"
                    ),
                })
            }
        }
    }
    Ok(())
}

/// Sorts the tensor table by offset and refuses repeated names and overlapping byte ranges.
fn check_tensor_ranges_disjoint(infos: &mut [(String, u64, u64)]) -> Result<()> {
    let mut names: Vec<&str> = infos.iter().map(|(n, _, _)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::Tensor { name: w[0].into(), reason: "appears twice in the tensor table".into() });
    }
    infos.sort_unstable_by_key(|&(_, offset, _)| offset);
    for w in infos.windows(2) {
        let ((a, a_offset, a_size), (b, b_offset, _)) = (&w[0], &w[1]);
        if a_offset.saturating_add(*a_size) > *b_offset {
            return Err(Error::Tensor { name: b.clone(), reason: format!("data at offset {b_offset} overlaps tensor {a}'s ({a_size} bytes at offset {a_offset})") });
        }
    }
    Ok(())
}
