//! NumPy `.npy` files: little-endian `float32` or `float64`, C order.
//!
//! Configurations are stored as shape `(n, N·D)` or `(n, N, D)` ([`ConfigShape`]), the same bytes
//! either way; per-sample values (energies, `log q`, `log w`) as shape `(n,)`. Files written here
//! are byte-identical to `numpy.save` of the same array (format version 1.0, header padded to
//! 64 bytes), and `numpy.load` reads them.
//!
//! The format (NEP 1): the magic `\x93NUMPY`, a version, the header length, a Python dict literal
//! `{'descr': '<f8', 'fortran_order': False, 'shape': (n, m), }` padded with spaces and a newline,
//! then the raw data. The parser here is written for exactly that and fails with a message on
//! anything else, rather than using a general `.npy` crate: the one checked (npyz 0.9) panics
//! on a header whose shape overflows the element count and reports truncation as "failed to fill
//! whole buffer", and eqflow must never panic on a malformed file.

use std::io::{BufReader, Read, Write};
use std::path::Path;

use super::{Dtype, format_error, in_file};
use crate::error::{Error, Result, check_finite};
use crate::geometry::Layout;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// numpy pads the header so that the data starts at a multiple of this.
const ALIGN: usize = 64;
/// numpy leaves room after the first dimension of the shape so that a file can grow in place
/// (`GROWTH_AXIS_MAX_DIGITS`); written too, to be byte-identical to `numpy.save`.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;
/// Headers longer than this are refused before they are read (numpy's default limit is 10,000
/// bytes): a real header of a float array is about a hundred bytes, and the length field of a
/// corrupt file could otherwise ask for gigabytes.
const MAX_HEADER_LEN: usize = 65_536;

/// A `.npy` array as read: its shape, its stored element type and its values as `f64`
/// (C order, exactly converted from `f32` if stored so).
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub data: Vec<f64>,
}

/// How configurations are laid out in the array; the bytes are the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConfigShape {
    /// `(n, N·D)`: one row per configuration (the convention of the public data sets).
    #[default]
    Flat,
    /// `(n, N, D)`: one row per particle.
    Particles,
}

impl NpyArray {
    /// The configurations of a system of `layout`: the array must have shape `(n, N·D)` or
    /// `(n, N, D)` and finite values. Returns `n·N·D` particle-major values.
    ///
    /// # Errors
    ///
    /// [`Error::DimensionMismatch`] for another shape, [`Error::NonFinite`] for a NaN or
    /// infinite coordinate.
    pub fn into_configurations(self, layout: Layout) -> Result<Vec<f64>> {
        let (n, d) = (layout.n_particles, layout.dim);
        let ok = match self.shape[..] {
            [_, m] => m == layout.len(),
            [_, np, dp] => np == n && dp == d,
            _ => false,
        };
        if !ok {
            // The size that differs, for the typed error; the message carries both shapes.
            let (expected, found) = match self.shape[..] {
                [_, m] => (layout.len(), m),
                [_, np, _] if np != n => (n, np),
                [_, _, dp] => (d, dp),
                _ => (2, self.shape.len()),
            };
            return Err(Error::size(
                format!(
                    "array of shape {} for {n} particles in {d}-D: expected (n, {}) or (n, {n}, {d})",
                    shape_text(&self.shape),
                    layout.len()
                ),
                expected,
                found,
            ));
        }
        if let Some(i) = self.data.iter().position(|v| !v.is_finite()) {
            let len = layout.len();
            return Err(Error::non_finite(format!(
                "coordinate {} of particle {} of sample {} is {}",
                i % d,
                (i % len) / d,
                i / len,
                self.data[i]
            )));
        }
        Ok(self.data)
    }

    /// Per-sample values: the array must be one-dimensional, `(n,)`, without NaN. Infinities
    /// are kept, because `U = +∞` and `log w = −∞` are legitimate values.
    ///
    /// # Errors
    ///
    /// [`Error::DimensionMismatch`] if the array is not one-dimensional, [`Error::NonFinite`]
    /// for a NaN.
    pub fn into_values(self) -> Result<Vec<f64>> {
        if self.shape.len() != 1 {
            return Err(Error::size(
                format!(
                    "array of shape {} for per-sample values: number of dimensions",
                    shape_text(&self.shape)
                ),
                1,
                self.shape.len(),
            ));
        }
        if let Some(i) = self.data.iter().position(|v| v.is_nan()) {
            return Err(Error::non_finite(format!("value {i} is NaN")));
        }
        Ok(self.data)
    }
}

/// Reads a `.npy` file of `float32` or `float64` values.
///
/// # Errors
///
/// [`Error::Io`] if the file cannot be opened or read; [`Error::Format`] if it is not a `.npy`
/// file, has a malformed header, another element type (integers, complex, big-endian floats),
/// Fortran order, fewer data bytes than the shape needs, or bytes after the data.
pub fn read_array(path: impl AsRef<Path>) -> Result<NpyArray> {
    let path = path.as_ref();
    let file = super::open_regular(path, ".npy file")?;
    read_array_from(BufReader::new(file)).map_err(|e| in_file(path, e))
}

/// As [`read_array`], from any reader (the whole stream must be the file).
pub fn read_array_from<R: Read>(mut reader: R) -> Result<NpyArray> {
    let mut prefix = [0u8; 8];
    let got = read_up_to(&mut reader, &mut prefix)?;
    if got < prefix.len() || &prefix[..6] != MAGIC {
        return Err(format_error(format!(
            "not a .npy file: it does not start with the magic bytes \\x93NUMPY (first bytes {:?})",
            String::from_utf8_lossy(&prefix[..got])
        )));
    }
    let (major, minor) = (prefix[6], prefix[7]);
    let header_len = match major {
        1 => {
            let mut b = [0u8; 2];
            read_exactly(&mut reader, &mut b, "the header length")?;
            usize::from(u16::from_le_bytes(b))
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            read_exactly(&mut reader, &mut b, "the header length")?;
            usize::try_from(u32::from_le_bytes(b)).unwrap_or(usize::MAX)
        }
        _ => {
            return Err(format_error(format!(
                "unsupported .npy format version {major}.{minor} (1.0, 2.0 and 3.0 are known)"
            )));
        }
    };
    if header_len > MAX_HEADER_LEN {
        return Err(format_error(format!(
            "header length {header_len} bytes is implausibly large (limit {MAX_HEADER_LEN})"
        )));
    }
    let mut header = vec![0u8; header_len];
    read_exactly(&mut reader, &mut header, "the header")?;
    let header = std::str::from_utf8(&header)
        .map_err(|_| format_error("header is not text (invalid UTF-8)"))?;
    let Header {
        dtype,
        fortran_order,
        shape,
    } = parse_header(header)?;
    if fortran_order && shape.len() > 1 {
        return Err(format_error(format!(
            "array of shape {} is stored in Fortran order; only C order is supported \
             (numpy.ascontiguousarray before saving)",
            shape_text(&shape)
        )));
    }

    let n_values = shape
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .ok_or_else(|| {
            format_error(format!(
                "shape {} has more elements than fit in memory",
                shape_text(&shape)
            ))
        })?;
    let n_bytes = n_values.checked_mul(dtype.size()).ok_or_else(|| {
        format_error(format!(
            "shape {} has more bytes than fit in memory",
            shape_text(&shape)
        ))
    })?;
    let mut bytes = Vec::new();
    // Grows as data arrives instead of trusting the header's size for one allocation.
    (&mut reader)
        .take(n_bytes as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| read_failure(&e))?;
    if bytes.len() < n_bytes {
        return Err(format_error(format!(
            "truncated data: shape {} of {} needs {n_bytes} bytes after the header, the file has {}",
            shape_text(&shape),
            dtype_name(dtype),
            bytes.len()
        )));
    }
    let trailing =
        std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| read_failure(&e))?;
    if trailing > 0 {
        return Err(format_error(format!(
            "{trailing} unexpected bytes after the data of shape {} of {} (is the header wrong?)",
            shape_text(&shape),
            dtype_name(dtype)
        )));
    }
    let data = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect(),
    };
    Ok(NpyArray { shape, dtype, data })
}

/// Writes `data` (C order) as a `.npy` array of `shape` stored as `dtype`, byte-identical to
/// `numpy.save`.
///
/// # Errors
///
/// [`Error::DimensionMismatch`] if `data.len()` is not the product of `shape`,
/// [`Error::NonFinite`] for a NaN, or for a finite value too large for `float32` when writing
/// `F32` (it would silently become infinite); [`Error::Io`] if the file cannot be written.
/// Infinities are written as they are.
pub fn write_array(
    path: impl AsRef<Path>,
    shape: &[usize],
    data: &[f64],
    dtype: Dtype,
) -> Result<()> {
    let path = path.as_ref();
    check_writable(shape, data, dtype).map_err(|e| in_file(path, e))?;
    super::write_atomically(path, ".npy file", |mut w| {
        write_unchecked(&mut w, shape, data, dtype)
    })
}

/// As [`write_array`], to any writer.
pub fn write_array_to<W: Write>(
    mut writer: W,
    shape: &[usize],
    data: &[f64],
    dtype: Dtype,
) -> Result<()> {
    check_writable(shape, data, dtype)?;
    write_unchecked(&mut writer, shape, data, dtype).map_err(|e| Error::Io {
        what: format!("cannot write .npy data: {e}"),
    })
}

/// Reads configurations of a system of `layout` from a `.npy` file of shape `(n, N·D)` or
/// `(n, N, D)`, `float32` or `float64`. Returns `n·N·D` particle-major values (`n` is
/// `len / layout.len()`).
///
/// # Errors
///
/// Those of [`read_array`] and [`NpyArray::into_configurations`].
pub fn read_configurations(path: impl AsRef<Path>, layout: Layout) -> Result<Vec<f64>> {
    let path = path.as_ref();
    read_array(path)?
        .into_configurations(layout)
        .map_err(|e| in_file(path, e))
}

/// Writes `n = x.len() / (N·D)` configurations as shape `(n, N·D)` or `(n, N, D)`.
///
/// # Errors
///
/// [`Error::DimensionMismatch`] if `x.len()` is not a multiple of N·D, [`Error::NonFinite`] for
/// a NaN or infinite coordinate (or one too large for `float32`), [`Error::Io`] if the file
/// cannot be written.
pub fn write_configurations(
    path: impl AsRef<Path>,
    x: &[f64],
    layout: Layout,
    dtype: Dtype,
    shape: ConfigShape,
) -> Result<()> {
    let path = path.as_ref();
    let len = layout.len();
    if !x.len().is_multiple_of(len) {
        return Err(in_file(
            path,
            Error::size(
                format!("configurations: a multiple of N·D = {len} values"),
                x.len() / len * len,
                x.len(),
            ),
        ));
    }
    check_finite(x, "configurations").map_err(|e| in_file(path, e))?;
    let n = x.len() / len;
    let dims = match shape {
        ConfigShape::Flat => vec![n, len],
        ConfigShape::Particles => vec![n, layout.n_particles, layout.dim],
    };
    write_array(path, &dims, x, dtype)
}

/// Reads per-sample values (energies, `log q`, `log w`) from a one-dimensional `.npy` file.
///
/// # Errors
///
/// Those of [`read_array`] and [`NpyArray::into_values`].
pub fn read_values(path: impl AsRef<Path>) -> Result<Vec<f64>> {
    let path = path.as_ref();
    read_array(path)?
        .into_values()
        .map_err(|e| in_file(path, e))
}

/// Writes per-sample values as a one-dimensional array `(n,)`. Infinities are allowed (`U = +∞`,
/// `log w = −∞`), NaN is not.
///
/// # Errors
///
/// As [`write_array`].
pub fn write_values(path: impl AsRef<Path>, values: &[f64], dtype: Dtype) -> Result<()> {
    write_array(path, &[values.len()], values, dtype)
}

fn check_writable(shape: &[usize], data: &[f64], dtype: Dtype) -> Result<()> {
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .ok_or_else(|| Error::invalid(format!("shape {} overflows", shape_text(shape))))?;
    if n != data.len() {
        return Err(Error::size(
            format!("data for shape {}", shape_text(shape)),
            n,
            data.len(),
        ));
    }
    let bad =
        |v: f64| v.is_nan() || (dtype == Dtype::F32 && v.is_finite() && !(v as f32).is_finite());
    if let Some(i) = data.iter().position(|&v| bad(v)) {
        return Err(Error::non_finite(format!(
            "value {i} = {} cannot be stored as {}",
            data[i],
            dtype_name(dtype)
        )));
    }
    Ok(())
}

fn write_unchecked<W: Write>(
    writer: &mut W,
    shape: &[usize],
    data: &[f64],
    dtype: Dtype,
) -> std::io::Result<()> {
    writer.write_all(&header_bytes(shape, dtype))?;
    // Converted in blocks: one write call per block, not per value.
    let mut block = Vec::with_capacity(8192);
    for chunk in data.chunks(1024) {
        block.clear();
        match dtype {
            Dtype::F32 => chunk
                .iter()
                .for_each(|&v| block.extend_from_slice(&(v as f32).to_le_bytes())),
            Dtype::F64 => chunk
                .iter()
                .for_each(|&v| block.extend_from_slice(&v.to_le_bytes())),
        }
        writer.write_all(&block)?;
    }
    Ok(())
}

/// Magic, version, length and padded dict, exactly as numpy's `_write_array_header` makes them.
fn header_bytes(shape: &[usize], dtype: Dtype) -> Vec<u8> {
    let descr = match dtype {
        Dtype::F32 => "<f4",
        Dtype::F64 => "<f8",
    };
    let mut dict = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': {}, }}",
        shape_text(shape)
    );
    if let Some(first) = shape.first() {
        let digits = first.to_string().len();
        dict.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(digits)));
    }
    // numpy counts the final newline in the header and always pads by 1..=ALIGN spaces.
    let text_len = dict.len() + 1;
    let (version, len_bytes) = if 8 + 2 + text_len + ALIGN <= usize::from(u16::MAX) {
        (1u8, 2)
    } else {
        (2u8, 4)
    };
    let pad = ALIGN - (MAGIC.len() + 2 + len_bytes + text_len) % ALIGN;
    let total = text_len + pad;
    let mut out = Vec::with_capacity(MAGIC.len() + 2 + len_bytes + total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        // Fits: checked when the version was chosen.
        out.extend_from_slice(&(total as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(total as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(out.len() + pad, b' ');
    out.push(b'\n');
    out
}

/// A shape as Python prints a tuple: `()`, `(5,)`, `(2, 3)`.
fn shape_text(shape: &[usize]) -> String {
    match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(ToString::to_string).collect();
            format!("({})", parts.join(", "))
        }
    }
}

fn dtype_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F32 => "float32",
        Dtype::F64 => "float64",
    }
}

fn read_failure(e: &std::io::Error) -> Error {
    Error::Io {
        what: format!("read failed: {e}"),
    }
}

/// Reads until `buf` is full or the stream ends; returns the number of bytes read.
fn read_up_to<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_failure(&e)),
        }
    }
    Ok(got)
}

fn read_exactly<R: Read>(reader: &mut R, buf: &mut [u8], what: &str) -> Result<()> {
    let got = read_up_to(reader, buf)?;
    if got < buf.len() {
        return Err(format_error(format!(
            "truncated header: {what} needs {} bytes, the file has {got}",
            buf.len()
        )));
    }
    Ok(())
}

/// The three keys of a `.npy` header.
struct Header {
    dtype: Dtype,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A value of the header dict: only the kinds a `.npy` header of a plain array uses.
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

fn parse_header(text: &str) -> Result<Header> {
    let mut p = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    let entries = p.dict()?;
    let (mut descr, mut fortran_order, mut shape) = (None, None, None);
    for (key, value) in entries {
        let slot_taken = match (key.as_str(), value) {
            ("descr", Value::Str(s)) => descr.replace(s).is_some(),
            ("fortran_order", Value::Bool(b)) => fortran_order.replace(b).is_some(),
            ("shape", Value::Tuple(t)) => shape.replace(t).is_some(),
            ("descr" | "fortran_order" | "shape", _) => {
                return Err(p.error(&format!("key '{key}' has a value of the wrong kind")));
            }
            _ => return Err(p.error(&format!("unexpected key '{key}'"))),
        };
        if slot_taken {
            return Err(p.error(&format!("key '{key}' appears twice")));
        }
    }
    let missing = |k: &str| p.error(&format!("key '{k}' is missing"));
    let descr = descr.ok_or_else(|| missing("descr"))?;
    let dtype = match descr.as_str() {
        "<f4" => Dtype::F32,
        "<f8" => Dtype::F64,
        ">f4" | ">f8" => {
            return Err(format_error(format!(
                "dtype '{descr}' is big-endian; only little-endian float32 ('<f4') and float64 \
                 ('<f8') are supported"
            )));
        }
        other => {
            return Err(format_error(format!(
                "unsupported dtype '{other}': only float32 ('<f4') and float64 ('<f8') are \
                 supported"
            )));
        }
    };
    Ok(Header {
        dtype,
        fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
        shape: shape.ok_or_else(|| missing("shape"))?,
    })
}

/// Recursive-descent parser of the header dict literal.
struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> Error {
        // Headers are short; cap the echo anyway in case a corrupt one is not.
        let shown: String = self.text.trim_end().chars().take(200).collect();
        format_error(format!("malformed header ({what}): {shown:?}"))
    }

    fn skip_space(&mut self) {
        while self.pos < self.bytes.len() && self.bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.bytes.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> Result<()> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(&format!(
                "expected '{}' at byte {}",
                char::from(c),
                self.pos
            )))
        }
    }

    fn dict(&mut self) -> Result<Vec<(String, Value)>> {
        self.expect(b'{')?;
        let mut entries = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.pos += 1;
                break;
            }
            let key = self.string()?;
            self.expect(b':')?;
            let value = self.value()?;
            entries.push((key, value));
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(self.error(&format!("expected ',' or '}}' at byte {}", self.pos))),
            }
        }
        if self.peek().is_some() {
            return Err(self.error("text after the closing '}'"));
        }
        Ok(entries)
    }

    fn string(&mut self) -> Result<String> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(self.error(&format!("expected a quoted string at byte {}", self.pos))),
        };
        let start = self.pos + 1;
        let len = self.bytes[start..]
            .iter()
            .position(|&b| b == quote)
            .ok_or_else(|| self.error("unterminated string"))?;
        let s = &self.text[start..start + len];
        if s.contains('\\') {
            return Err(self.error("escape sequences in strings are not supported"));
        }
        self.pos = start + len + 1;
        Ok(s.to_string())
    }

    fn value(&mut self) -> Result<Value> {
        match self.peek() {
            Some(b'\'' | b'"') => self.string().map(Value::Str),
            Some(b'(') => self.tuple().map(Value::Tuple),
            Some(b'T' | b'F') => {
                let rest = &self.text[self.pos..];
                for (word, value) in [("True", true), ("False", false)] {
                    if rest.starts_with(word) {
                        self.pos += word.len();
                        return Ok(Value::Bool(value));
                    }
                }
                Err(self.error(&format!("unknown name at byte {}", self.pos)))
            }
            _ => Err(self.error(&format!(
                "expected a string, a bool or a tuple at byte {}",
                self.pos
            ))),
        }
    }

    /// `()`, `(5,)`, `(2, 3)`, `(2, 3,)`; Python 2 long suffixes `5L` are accepted.
    fn tuple(&mut self) -> Result<Vec<usize>> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        let mut trailing_comma = false;
        loop {
            match self.peek() {
                Some(b')') => {
                    self.pos += 1;
                    break;
                }
                Some(b'0'..=b'9') => {
                    let start = self.pos;
                    while self.pos < self.bytes.len() && self.bytes[self.pos].is_ascii_digit() {
                        self.pos += 1;
                    }
                    let digits = &self.text[start..self.pos];
                    let dim = digits
                        .parse::<usize>()
                        .map_err(|_| self.error(&format!("dimension {digits} is too large")))?;
                    dims.push(dim);
                    trailing_comma = false;
                    if self.bytes.get(self.pos) == Some(&b'L') {
                        self.pos += 1;
                    }
                }
                Some(b'-') => return Err(self.error("negative dimension in the shape")),
                _ => {
                    return Err(
                        self.error(&format!("expected a dimension or ')' at byte {}", self.pos))
                    );
                }
            }
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    trailing_comma = true;
                }
                Some(b')') => {}
                _ => return Err(self.error(&format!("expected ',' or ')' at byte {}", self.pos))),
            }
        }
        if dims.len() == 1 && !trailing_comma {
            // `(5)` is the integer 5 in Python, not a tuple; numpy never writes it.
            return Err(self.error("a one-element shape needs a trailing comma, (n,)"));
        }
        Ok(dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_aligned_and_end_in_a_newline() {
        for shape in [vec![], vec![3], vec![10_000, 8], vec![7, 13, 3]] {
            let h = header_bytes(&shape, Dtype::F64);
            assert_eq!(h.len() % ALIGN, 0, "{shape:?}");
            assert_eq!(*h.last().unwrap(), b'\n');
            let parsed = parse_header(std::str::from_utf8(&h[10..]).unwrap()).unwrap();
            assert_eq!(parsed.shape, shape);
            assert_eq!(parsed.dtype, Dtype::F64);
            assert!(!parsed.fortran_order);
        }
    }

    #[test]
    fn shape_text_follows_python_tuple_repr() {
        assert_eq!(shape_text(&[]), "()");
        assert_eq!(shape_text(&[5]), "(5,)");
        assert_eq!(shape_text(&[2, 3]), "(2, 3)");
    }

    #[test]
    fn parser_accepts_numpy_variants_and_rejects_near_misses() {
        let ok = [
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }",
            "{\"shape\": (2L, 3L), \"descr\": \"<f4\", \"fortran_order\": False}",
            "{'descr':'<f8','fortran_order':True,'shape':(4,)}  \n",
        ];
        for h in ok {
            assert!(parse_header(h).is_ok(), "{h}");
        }
        let bad = [
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4), }",
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), } x",
            "{'descr': '<f8', 'fortran_order': Flase, 'shape': (2, 3), }",
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3) 'x': 1}",
            "{'descr': '<f8', 'fortran_order': 0, 'shape': (2, 3), }",
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2,, 3), }",
            "{'descr': '<f8, 'fortran_order': False, 'shape': (2, 3), }",
            "{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999999,), }",
        ];
        for h in bad {
            assert!(matches!(parse_header(h), Err(Error::Format { .. })), "{h}");
        }
    }
}
