//! FNV-1a, 64 bits: the model's fingerprint (`Gguf::fingerprint`) and the
//! checksum of saved sessions (`kv_cache::image`). Not cryptographic: it
//! tells a file from another and finds corruption, nothing more.

pub(crate) struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
}
