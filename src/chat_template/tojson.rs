//! `tojson` as Hugging Face's chat templates have it: Python's `json.dumps` with
//! `ensure_ascii=False` (`", "` and `": "` separators, nothing escaped for HTML),
//! where minijinja's own filter writes compact, HTML-escaped JSON.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// Deeper values are refused (the writer recurses; a template can nest lists in a loop).
const MAX_DEPTH: usize = 64;

/// `value | tojson(indent=None, sort_keys=False)`.
pub(super) fn tojson(value: &Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    Writer { indent, sort_keys: sort_keys.unwrap_or(false) }.write(value, 0, &mut out)?;
    Ok(out)
}

struct Writer {
    indent: Option<usize>,
    sort_keys: bool,
}

impl Writer {
    fn write(&self, v: &Value, depth: usize, out: &mut String) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(Error::new(ErrorKind::InvalidOperation, "tojson: value nested too deeply"));
        }
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&v.to_string()),
            ValueKind::String => out.push_str(&serde_json::to_string(v.as_str().unwrap_or_default()).unwrap_or_default()),
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                let items = keys.into_iter().map(|k| v.get_item(&k).map(|x| (Some(k), x)));
                self.write_items(items.collect::<Result<_, _>>()?, ('{', '}'), depth, out)?;
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items = v.try_iter()?.map(|x| (None, x)).collect();
                self.write_items(items, ('[', ']'), depth, out)?;
            }
            _ => out.push_str(&serde_json::to_string(&v.to_string()).unwrap_or_default()),
        }
        Ok(())
    }

    /// A list (keys `None`) or an object, with Python's separators and indentation.
    fn write_items(&self, items: Vec<(Option<Value>, Value)>, (open, close): (char, char), depth: usize, out: &mut String) -> Result<(), Error> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        let newline = |out: &mut String, level: usize| {
            if let Some(n) = self.indent {
                out.push('\n');
                out.extend(std::iter::repeat_n(' ', n * level));
            }
        };
        for (i, (key, value)) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(if self.indent.is_some() { "," } else { ", " });
            }
            newline(out, depth + 1);
            if let Some(k) = key {
                let k = k.as_str().map(str::to_string).unwrap_or_else(|| k.to_string());
                out.push_str(&serde_json::to_string(&k).unwrap_or_default());
                out.push_str(": ");
            }
            self.write(value, depth + 1, out)?;
        }
        newline(out, depth);
        out.push(close);
        Ok(())
    }
}
