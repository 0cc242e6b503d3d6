//! Every token's text or bytes in one buffer: a 49k-token vocabulary is two
//! allocations instead of 49k, which is most of what building it costs in the
//! browser's first run.

#[derive(Debug, Default)]
pub(super) struct Packed {
    data: Vec<u8>,
    /// Where each entry ends in `data` (entry `i` starts where `i - 1` ends).
    ends: Vec<usize>,
}

impl Packed {
    /// `n` entries, entry `i` written by `write(i, out)` onto the end of `out`.
    pub(super) fn build(n: usize, bytes_hint: usize, mut write: impl FnMut(usize, &mut Vec<u8>)) -> Self {
        let mut data = Vec::with_capacity(bytes_hint);
        let mut ends = Vec::with_capacity(n);
        for i in 0..n {
            write(i, &mut data);
            ends.push(data.len());
        }
        Self { data, ends }
    }

    /// The texts themselves.
    pub(super) fn texts(texts: &[&str]) -> Self {
        let total = texts.iter().map(|t| t.len()).sum();
        Self::build(texts.len(), total, |i, out| out.extend_from_slice(texts[i].as_bytes()))
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Entry `i`, if there is one.
    pub(super) fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.data.get(start..end)
    }

    /// Entry `i` as text (None where it is not UTF-8: only entries built by [`Packed::texts`] are asked).
    pub(super) fn text(&self, i: usize) -> Option<&str> {
        std::str::from_utf8(self.get(i)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::Packed;

    #[test]
    fn entries_come_back_as_written() {
        let p = Packed::texts(&["", "ab", "é", ""]);
        assert_eq!(p.len(), 4);
        assert_eq!([p.get(0), p.get(1), p.get(2), p.get(3), p.get(4)], [Some(&b""[..]), Some(b"ab"), Some("é".as_bytes()), Some(b""), None]);
        assert_eq!(p.text(2), Some("é"));
        let b = Packed::build(3, 0, |i, out| out.extend(std::iter::repeat_n(i as u8, i)));
        assert_eq!(b.get(2), Some(&[2u8, 2][..]));
    }
}
