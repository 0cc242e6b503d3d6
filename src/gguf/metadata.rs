//! [`Metadata`]: a GGUF file's parsed header with its typed getters, apart
//! from the file's bytes (the tokenizer and the chat template read only this,
//! so a helper thread may build them while the tensors are read elsewhere).

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::{self, Value};

/// A GGUF file's parsed header, apart from where its tensor data is read:
/// what the tokenizer and the chat template read (shared with a helper
/// thread at load, which the file's byte source may not be).
pub struct Metadata {
    pub(super) content: gguf_file::Content,
}

impl Metadata {
    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    // ---- typed metadata getters -------------------------------------------------

    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.metadata(key) {
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(meta_err(key, format!("expected a string, found {:?}", v.value_type()))),
            None => Err(meta_err(key, "missing")),
        }
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.metadata(key).ok_or_else(|| meta_err(key, "missing"))?;
        let n: i128 = match v {
            Value::U8(x) => *x as i128,
            Value::I8(x) => *x as i128,
            Value::U16(x) => *x as i128,
            Value::I16(x) => *x as i128,
            Value::U32(x) => *x as i128,
            Value::I32(x) => *x as i128,
            Value::U64(x) => *x as i128,
            Value::I64(x) => *x as i128,
            other => {
                return Err(meta_err(key, format!("expected an integer, found {:?}", other.value_type())))
            }
        };
        u64::try_from(n).map_err(|_| meta_err(key, format!("negative value {n}")))
    }

    /// An integer that must lie in `1..=max`.
    pub fn get_usize(&self, key: &str, max: u64) -> Result<usize> {
        let n = self.get_u64(key)?;
        if n == 0 || n > max {
            return Err(meta_err(key, format!("value {n} is outside 1..={max}")));
        }
        Ok(n as usize)
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let x = match self.metadata(key) {
            Some(Value::F32(x)) => *x as f64,
            Some(Value::F64(x)) => *x,
            Some(_) => return self.get_u64(key).map(|n| n as f32),
            None => return Err(meta_err(key, "missing")),
        };
        if !x.is_finite() {
            return Err(meta_err(key, format!("not a finite number: {x}")));
        }
        Ok(x as f32)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.metadata(key) {
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => self.get_u64(key).ok().map(|n| n != 0),
            None => None,
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&Vec<Value>> {
        match self.metadata(key) {
            Some(Value::Array(a)) => Ok(a),
            Some(v) => Err(meta_err(key, format!("expected an array, found {:?}", v.value_type()))),
            None => Err(meta_err(key, "missing")),
        }
    }

    pub fn get_string_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get_array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(meta_err(key, format!("element {i} is not a string"))),
            })
            .collect()
    }
}

fn meta_err(key: &str, reason: impl Into<String>) -> Error {
    Error::Metadata { key: key.into(), reason: reason.into() }
}
