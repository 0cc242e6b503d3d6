//! A cache written out and read back: the third tier (saved sessions). The
//! image holds everything a cache is — the token ids, the sinks and ring in
//! use, each layer's cold store and its recall slots — so a
//! restored cache continues exactly where it was, with no re-prefill.
//!
//! Layout (little-endian): `KVCHATKV`, format version, the model's
//! fingerprint, the cache configuration, the token ids, each layer's
//! storage (`KvStorage::write_image`), and an FNV-1a checksum of everything
//! before it. Restoring checks the checksum, the version, the model and the
//! configuration before it changes anything; a file that passes those and is
//! still inconsistent leaves the cache empty (and usable). Every read is
//! checked: a hostile file is a typed [`Error::Session`], never a panic.

use super::{KvCacheConfig, KvDType};
use crate::error::{Error, Result};
use crate::fnv::Fnv;
use half::f16;

const MAGIC: &[u8; 8] = b"KVCHATKV";
/// 3: 4-bit cold codes split each row into halves (a byte holds channels `c` and `c + head_dim/2`).
const VERSION: u32 = 3;

fn bad(what: impl Into<String>) -> Error {
    Error::Session(what.into())
}

/// Appends values to an image.
#[derive(Default)]
pub struct ImageWriter {
    buf: Vec<u8>,
}

impl ImageWriter {
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.buf.extend_from_slice(b);
    }
    pub fn f32s(&mut self, v: &[f32]) {
        self.len(v.len());
        self.buf.extend(v.iter().flat_map(|x| x.to_le_bytes()));
    }
    pub fn f16s(&mut self, v: &[f16]) {
        self.len(v.len());
        self.buf.extend(v.iter().flat_map(|x| x.to_bits().to_le_bytes()));
    }
}

/// Reads an image back, every read checked against what is expected.
pub struct ImageReader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> ImageReader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| bad(format!("the file ends inside {what}")))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    pub fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
    /// A length that must equal `want`.
    pub fn len(&mut self, want: usize, what: &str) -> Result<()> {
        let n = self.u64(what)?;
        if n != want as u64 {
            return Err(bad(format!("{what}: {n} values where this cache has {want}")));
        }
        Ok(())
    }
    pub fn bytes(&mut self, out: &mut [u8], what: &str) -> Result<()> {
        self.len(out.len(), what)?;
        out.copy_from_slice(self.take(out.len(), what)?);
        Ok(())
    }
    pub fn f32s(&mut self, out: &mut [f32], what: &str) -> Result<()> {
        self.len(out.len(), what)?;
        let b = self.take(out.len() * 4, what)?;
        for (x, c) in out.iter_mut().zip(b.chunks_exact(4)) {
            *x = f32::from_le_bytes(c.try_into().expect("4 bytes"));
        }
        Ok(())
    }
    pub fn f16s(&mut self, out: &mut [f16], what: &str) -> Result<()> {
        self.len(out.len(), what)?;
        let b = self.take(out.len() * 2, what)?;
        for (x, c) in out.iter_mut().zip(b.chunks_exact(2)) {
            *x = f16::from_bits(u16::from_le_bytes(c.try_into().expect("2 bytes")));
        }
        Ok(())
    }
}

/// The configuration as numbers, written and compared as they are.
fn config_words(c: &KvCacheConfig) -> [u64; 6] {
    let (cold, bits, recall) = c.cold.map_or((0, 0, 0), |k| (k.capacity as u64, k.bits.bits() as u64, k.recall as u64));
    [c.window as u64, c.sinks as u64, if c.dtype == KvDType::F16 { 2 } else { 4 }, cold, bits, recall]
}

/// The image's header: magic, version, model, configuration, tokens.
pub(super) fn write_header(w: &mut ImageWriter, fingerprint: u64, cfg: &KvCacheConfig, tokens: &[u32]) {
    w.buf.extend_from_slice(MAGIC);
    w.u64(VERSION as u64);
    w.u64(fingerprint);
    for x in config_words(cfg) {
        w.u64(x);
    }
    w.len(tokens.len());
    w.buf.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
}

/// Seals an image with its checksum.
pub(super) fn finish(mut w: ImageWriter) -> Vec<u8> {
    let mut h = Fnv::default();
    h.write(&w.buf);
    w.u64(h.0);
    w.buf
}

/// Checks the checksum, version, model and configuration of `image`; returns
/// the token ids and a reader positioned at the storage.
pub(super) fn read_header<'a>(image: &'a [u8], fingerprint: u64, cfg: &KvCacheConfig, max_tokens: usize) -> Result<(Vec<u32>, ImageReader<'a>)> {
    if image.len() < MAGIC.len() + 16 || &image[..MAGIC.len()] != MAGIC {
        return Err(bad("not a kvchat session file"));
    }
    let (body, sum) = image.split_at(image.len() - 8);
    let mut h = Fnv::default();
    h.write(body);
    if h.0.to_le_bytes() != sum {
        return Err(bad("the file is corrupt (its checksum does not match)"));
    }
    let mut r = ImageReader { buf: body, at: MAGIC.len() };
    let version = r.u64("the version")?;
    if version != VERSION as u64 {
        return Err(bad(format!("format version {version}; this kvchat reads version {VERSION}")));
    }
    if r.u64("the model fingerprint")? != fingerprint {
        return Err(bad("the session was saved with another model"));
    }
    for (i, want) in config_words(cfg).into_iter().enumerate() {
        let got = r.u64("the cache configuration")?;
        if got != want {
            let names = ["kvWindow", "kvSinks", "the K/V type (bytes)", "kvCold", "kvColdBits", "kvRecall"];
            return Err(bad(format!("the session was saved with {} = {got}; this engine has {want} (load it with the same cache options)", names[i])));
        }
    }
    let n = r.u64("the token count")?;
    if n > max_tokens as u64 {
        return Err(bad(format!("{n} tokens is more than a session can hold")));
    }
    let b = r.take(n as usize * 4, "the token ids")?;
    let tokens = b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    Ok((tokens, r))
}

/// The reader has used every byte.
pub(super) fn check_end(r: &ImageReader) -> Result<()> {
    if r.at != r.buf.len() {
        return Err(bad(format!("{} unexpected bytes after the cache", r.buf.len() - r.at)));
    }
    Ok(())
}
