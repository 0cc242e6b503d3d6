//! Saved sessions, the cache's third tier: the whole cache written out as
//! bytes (`KvCache::save_image`) and read back into an engine of the same
//! model and cache options, with no re-prefill.

use super::Engine;
use crate::error::{Error, Result};
use crate::tokenizer::IncrementalEncoder;

/// Saved sessions: the cache written out and read back (the third tier).
impl Engine {
    /// The whole cache (token ids, sinks and window, recall rows, cold tier) as
    /// bytes that [`restore_session`](Self::restore_session) reads back into an
    /// engine of the same model and cache options, with no re-prefill. The CPU
    /// backend only (a GPU cache lives in GPU buffers: [`Error::Unsupported`]).
    pub fn save_session(&mut self) -> Result<Vec<u8>> {
        if self.in_flight.is_some() {
            return Err(Error::InvalidOption("a step is in flight; save between generations".into()));
        }
        let fingerprint = self.fingerprint;
        match self.runner.cpu_cache() {
            Some(cache) => Ok(cache.save_image(fingerprint)),
            None => Err(Error::Unsupported("saving a session needs the CPU backend (this cache lives on the GPU)".into())),
        }
    }

    /// Replaces the cache with a saved one (see [`save_session`](Self::save_session)).
    /// A file that is corrupt, from another model or another cache
    /// configuration is an [`Error::Session`]; the engine stays usable (with
    /// its cache as it was, or empty when the file failed past its checks).
    pub fn restore_session(&mut self, bytes: &[u8]) -> Result<()> {
        if self.in_flight.is_some() {
            return Err(Error::InvalidOption("a step is in flight; restore between generations".into()));
        }
        let fingerprint = self.fingerprint;
        let cache = self.runner.cpu_cache().ok_or_else(|| Error::Unsupported("restoring a session needs the CPU backend".into()))?;
        cache.restore_image(bytes, fingerprint)?;
        self.encoder = IncrementalEncoder::default();
        Ok(())
    }
}
