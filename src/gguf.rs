//! GGUF version 3 files: the layout shrinkray writes (header first, every
//! tensor at an offset known from the plan) and a bounds-checked reader for
//! `verify`, `inspect` and GGUF input.
//!
//! The reader treats the file as hostile: every count and length is checked
//! against the bytes that remain before anything is allocated from it, and
//! every tensor must lie inside the data section, aligned, without overlap.

use std::collections::HashSet;

use safetensors::Dtype;
use shrinkray_kernels::ggml::GgmlType;

/// `GGUF` read as a little-endian u32.
pub const MAGIC: u32 = 0x4655_4747;
/// The version written.
pub const VERSION: u32 = 3;
/// Data alignment when `general.alignment` is absent (and the one written).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// `general.quantization_version` of the block formats written (ggml's `GGML_QUANT_VERSION`).
pub const QUANTIZATION_VERSION: u32 = 2;
/// Most dimensions a ggml tensor has.
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays the reader accepts.
const MAX_ARRAY_DEPTH: usize = 4;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8.
    Str(String),
    /// Type 9: element type and items.
    Array(u32, Vec<Value>),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl Value {
    /// The GGUF value type id.
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(..) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.push(*v as u8),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(*v as u8),
            Value::Str(s) => put_str(out, s),
            Value::Array(t, items) => {
                out.extend_from_slice(&t.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for i in items {
                    i.encode(out);
                }
            }
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }

    /// A short rendering for `inspect`.
    pub fn show(&self) -> String {
        match self {
            Value::Str(s) if s.chars().count() > 60 => {
                format!("{:?}…", s.chars().take(60).collect::<String>())
            }
            Value::Str(s) => format!("{s:?}"),
            Value::Array(t, items) => format!("[{} items of type {t}]", items.len()),
            Value::U8(v) => v.to_string(),
            Value::I8(v) => v.to_string(),
            Value::U16(v) => v.to_string(),
            Value::I16(v) => v.to_string(),
            Value::U32(v) => v.to_string(),
            Value::I32(v) => v.to_string(),
            Value::F32(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            Value::U64(v) => v.to_string(),
            Value::I64(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A tensor's element type in a GGUF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    /// A plain element type (F32, F16, BF16, F64, I8…I64).
    Plain(Dtype),
    /// One of the block formats shrinkray writes and decodes.
    Block(GgmlType),
    /// Another ggml block type: copied as bytes, never decoded (id, elements per block, bytes per block).
    Other(u32, u64, u64),
}

impl TensorType {
    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            TensorType::Plain(d) => plain_id(d).expect("only GGUF dtypes are held"),
            TensorType::Block(t) => t.type_id(),
            TensorType::Other(id, ..) => id,
        }
    }

    /// The type for ggml id `id`, if known.
    pub fn from_id(id: u32) -> Option<TensorType> {
        Some(match id {
            0 => TensorType::Plain(Dtype::F32),
            1 => TensorType::Plain(Dtype::F16),
            30 => TensorType::Plain(Dtype::BF16),
            24 => TensorType::Plain(Dtype::I8),
            25 => TensorType::Plain(Dtype::I16),
            26 => TensorType::Plain(Dtype::I32),
            27 => TensorType::Plain(Dtype::I64),
            28 => TensorType::Plain(Dtype::F64),
            _ => {
                if let Some(t) = GgmlType::ALL.into_iter().find(|t| t.type_id() == id) {
                    return Some(TensorType::Block(t));
                }
                // (elements, bytes) per block of the other ggml types (ggml.c's type traits).
                let (b, s) = match id {
                    6 => (32, 22),   // Q5_0
                    7 => (32, 24),   // Q5_1
                    9 => (32, 36),   // Q8_1
                    10 => (256, 84), // Q2_K
                    11 => (256, 110),
                    12 => (256, 144),
                    13 => (256, 176),
                    14 => (256, 210),
                    15 => (256, 292),
                    _ => return None,
                };
                TensorType::Other(id, b, s)
            }
        })
    }

    /// Elements per block and bytes per block.
    pub fn block(self) -> (u64, u64) {
        match self {
            TensorType::Plain(d) => (1, (d.bitsize() / 8) as u64),
            TensorType::Block(t) => (GgmlType::BLOCK as u64, t.block_bytes() as u64),
            TensorType::Other(_, b, s) => (b, s),
        }
    }

    /// A name for reports (`F16`, `q4_0`, `ggml type 12`).
    pub fn name(self) -> String {
        match self {
            TensorType::Plain(d) => d.to_string(),
            TensorType::Block(t) => t.name().to_string(),
            TensorType::Other(id, ..) => format!("ggml type {id}"),
        }
    }
}

/// The ggml type id of a plain safetensors dtype, if GGUF has one.
pub fn plain_id(d: Dtype) -> Option<u32> {
    Some(match d {
        Dtype::F32 => 0,
        Dtype::F16 => 1,
        Dtype::BF16 => 30,
        Dtype::I8 => 24,
        Dtype::I16 => 25,
        Dtype::I32 => 26,
        Dtype::I64 => 27,
        Dtype::F64 => 28,
        _ => return None,
    })
}

/// One tensor to lay out: name, shape (outermost first, as in safetensors), type, bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutTensor {
    /// Its name.
    pub name: String,
    /// Its shape, outermost dimension first.
    pub shape: Vec<usize>,
    /// Its type.
    pub ty: TensorType,
    /// Its data size in bytes.
    pub nbytes: u64,
}

/// Header bytes, absolute tensor offsets and total size of a GGUF file.
pub type FileLayout = crate::format::FileLayout;

/// Lays out a GGUF v3 file: the metadata `kvs` in order, then the tensor
/// infos, then the data section at the next multiple of 32, each tensor at a
/// multiple of 32 in the given order, zero padding after each (the last too).
///
/// Fails on a duplicate tensor name or a tensor ggml cannot describe.
pub fn layout(kvs: &[(String, Value)], tensors: &[OutTensor]) -> Result<FileLayout, String> {
    let mut h = Vec::new();
    h.extend_from_slice(&MAGIC.to_le_bytes());
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut h, k);
        h.extend_from_slice(&v.type_id().to_le_bytes());
        v.encode(&mut h);
    }
    let mut seen = HashSet::new();
    let mut rel = Vec::with_capacity(tensors.len());
    let mut at = 0u64;
    for t in tensors {
        if !seen.insert(t.name.as_str()) {
            return Err(format!("two output tensors would be named `{}`", t.name));
        }
        if t.shape.len() > MAX_DIMS {
            return Err(format!(
                "tensor `{}` has {} dimensions; GGUF allows at most {MAX_DIMS}",
                t.name,
                t.shape.len()
            ));
        }
        put_str(&mut h, &t.name);
        let dims: Vec<u64> = if t.shape.is_empty() {
            vec![1] // a scalar is a 1-element vector in ggml
        } else {
            t.shape.iter().rev().map(|&d| d as u64).collect()
        };
        h.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            h.extend_from_slice(&d.to_le_bytes());
        }
        h.extend_from_slice(&t.ty.id().to_le_bytes());
        h.extend_from_slice(&at.to_le_bytes());
        rel.push(at);
        at += t.nbytes.next_multiple_of(DEFAULT_ALIGNMENT);
    }
    h.resize(h.len().next_multiple_of(DEFAULT_ALIGNMENT as usize), 0);
    let base = h.len() as u64;
    Ok(FileLayout {
        offsets: rel.iter().map(|r| base + r).collect(),
        total: base + at,
        header: h,
    })
}

/// A tensor of a GGUF file as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    /// Its name.
    pub name: String,
    /// Its shape, outermost dimension first (reversed from the file's `ne`).
    pub shape: Vec<usize>,
    /// Its type.
    pub ty: TensorType,
    /// Absolute offset of its data in the file.
    pub start: u64,
    /// Its data size in bytes.
    pub nbytes: u64,
}

impl Tensor {
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// A GGUF file's header, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// File format version (2 or 3).
    pub version: u32,
    /// Metadata, in file order.
    pub kvs: Vec<(String, Value)>,
    /// Tensors, in file order.
    pub tensors: Vec<Tensor>,
    /// Alignment of the data section and of every tensor.
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_start: u64,
}

impl Header {
    /// The value of key `k`, if present.
    pub fn get(&self, k: &str) -> Option<&Value> {
        self.kvs.iter().find(|(key, _)| key == k).map(|(_, v)| v)
    }
}

/// Whether `bytes` start like a GGUF file.
pub fn is_gguf(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) == MAGIC
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], String> {
        let left = (self.b.len() - self.at) as u64;
        if n > left {
            return Err(format!(
                "{what} at byte {} needs {n} bytes, only {left} remain",
                self.at
            ));
        }
        let s = &self.b[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.u64(what)?;
        let raw = self.take(n, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value, String> {
        let fixed = |c: &mut Self, n: u64| c.take(n, what);
        Ok(match ty {
            0 => Value::U8(fixed(self, 1)?[0]),
            1 => Value::I8(fixed(self, 1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(fixed(self, 2)?.try_into().expect("2"))),
            3 => Value::I16(i16::from_le_bytes(fixed(self, 2)?.try_into().expect("2"))),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => match fixed(self, 1)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("{what}: bool byte {b} is neither 0 nor 1")),
            },
            8 => Value::Str(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    ));
                }
                let et = self.u32(what)?;
                let n = self.u64(what)?;
                // Every item takes at least one byte (strings 8): no allocation beyond the file.
                let min = match et {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(format!("{what}: unknown array element type {t}")),
                };
                let left = (self.b.len() - self.at) as u64;
                if n.checked_mul(min).is_none_or(|need| need > left) {
                    return Err(format!(
                        "{what}: array of {n} items does not fit in the {left} bytes left"
                    ));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(et, what, depth + 1)?);
                }
                Value::Array(et, items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            t => return Err(format!("{what}: unknown value type {t}")),
        })
    }
}

/// Parses and validates the header of the GGUF file `bytes` (the whole file).
///
/// The error names the rule broken (and the key or tensor concerned); the
/// caller adds the file name.
pub fn read_header(bytes: &[u8]) -> Result<Header, String> {
    let mut c = Cursor { b: bytes, at: 0 };
    let magic = c.u32("the magic number")?;
    if magic != MAGIC {
        return Err(format!("not a GGUF file (magic {magic:#010x})"));
    }
    let version = c.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "GGUF version {version} is not supported (2 and 3 are)"
        ));
    }
    let n_tensors = c.u64("the tensor count")?;
    let n_kvs = c.u64("the key-value count")?;
    let left = (bytes.len() - c.at) as u64;
    // A key-value pair takes at least 13 bytes, a tensor info at least 28.
    if n_kvs.checked_mul(13).is_none_or(|n| n > left) {
        return Err(format!(
            "{n_kvs} key-value pairs cannot fit in a {}-byte file",
            bytes.len()
        ));
    }
    if n_tensors.checked_mul(28).is_none_or(|n| n > left) {
        return Err(format!(
            "{n_tensors} tensors cannot fit in a {}-byte file",
            bytes.len()
        ));
    }
    let mut kvs = Vec::with_capacity(n_kvs as usize);
    let mut keys = HashSet::new();
    for i in 0..n_kvs {
        let key = c.string(&format!("key {i}"))?;
        let ty = c.u32(&format!("the type of `{key}`"))?;
        let v = c.value(ty, &format!("key `{key}`"), 0)?;
        if !keys.insert(key.clone()) {
            return Err(format!("key `{key}` appears twice"));
        }
        kvs.push((key, v));
    }
    let alignment = match kvs.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if a.is_power_of_two() => *a as u64,
        Some((_, v)) => {
            return Err(format!(
                "general.alignment must be a power of two of type u32, not {}",
                v.show()
            ))
        }
    };
    let mut infos = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let name = c.string(&format!("the name of tensor {i}"))?;
        let what = format!("tensor `{name}`");
        let n_dims = c.u32(&what)? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "{what}: {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            ));
        }
        let mut ne = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            ne.push(c.u64(&what)?);
        }
        let id = c.u32(&what)?;
        let ty =
            TensorType::from_id(id).ok_or_else(|| format!("{what}: unknown ggml type {id}"))?;
        let offset = c.u64(&what)?;
        if !names.insert(name.clone()) {
            return Err(format!("{what} appears twice"));
        }
        let numel = ne
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n < (1 << 62))
            .ok_or_else(|| format!("{what}: shape {ne:?} overflows"))?;
        let (bsize, bbytes) = ty.block();
        if ne[0] % bsize != 0 {
            return Err(format!(
                "{what}: row length {} is not a multiple of {}'s block of {bsize}",
                ne[0],
                ty.name()
            ));
        }
        let nbytes = (numel / bsize)
            .checked_mul(bbytes)
            .ok_or_else(|| format!("{what}: size overflows"))?;
        if offset % alignment != 0 {
            return Err(format!(
                "{what}: data offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        let shape = ne
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).map_err(|_| format!("{what}: dimension {d} too large")))
            .collect::<Result<Vec<_>, _>>()?;
        infos.push((name, shape, ty, offset, nbytes));
    }
    let data_start = (c.at as u64).next_multiple_of(alignment);
    let data_len = (bytes.len() as u64).checked_sub(data_start).ok_or_else(|| {
        format!(
            "the data section would start at byte {data_start}, past the end of the file ({} bytes)",
            bytes.len()
        )
    })?;
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(infos.len());
    for (name, _, _, offset, nbytes) in &infos {
        if offset.checked_add(*nbytes).is_none_or(|end| end > data_len) {
            return Err(format!(
                "tensor `{name}`: data [{offset}, +{nbytes}) runs past the end of the file"
            ));
        }
        spans.push((*offset, offset + nbytes, name));
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!("tensors `{}` and `{}` overlap", w[0].2, w[1].2));
        }
    }
    let tensors = infos
        .into_iter()
        .map(|(name, shape, ty, offset, nbytes)| Tensor {
            name,
            shape,
            ty,
            start: data_start + offset,
            nbytes,
        })
        .collect();
    Ok(Header {
        version,
        kvs,
        tensors,
        alignment,
        data_start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_ref() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/gguf/tiny-ref.gguf"
        ))
        .unwrap()
    }

    #[test]
    fn reads_the_file_gguf_py_wrote() {
        let b = tiny_ref();
        let h = read_header(&b).unwrap();
        assert_eq!((h.version, h.kvs.len(), h.tensors.len()), (3, 20, 3));
        assert_eq!(
            h.get("general.architecture"),
            Some(&Value::Str("llama".into()))
        );
        assert_eq!(h.get("general.file_type"), Some(&Value::U32(2)));
        assert_eq!(
            h.get("test.i64"),
            Some(&Value::I64(-9_000_000_000_000_000_000))
        );
        assert_eq!(
            h.get("test.str_utf8"),
            Some(&Value::Str("héllo, 世界".into()))
        );
        assert_eq!(
            h.get("test.arr_str"),
            Some(&Value::Array(
                8,
                ["a", "", "bc", "ünï"]
                    .iter()
                    .map(|s| Value::Str(s.to_string()))
                    .collect()
            ))
        );
        assert_eq!(h.data_start, 0x360);
        let t: Vec<_> = h
            .tensors
            .iter()
            .map(|t| {
                (
                    t.name.as_str(),
                    t.shape.clone(),
                    t.ty.name(),
                    t.start,
                    t.nbytes,
                )
            })
            .collect();
        assert_eq!(
            t,
            vec![
                ("tiny.f32_1d", vec![5], "F32".to_string(), 0x360, 20),
                ("tiny.f16_2d", vec![3, 5], "F16".to_string(), 0x380, 30),
                ("tiny.q4_0_2d", vec![4, 64], "q4_0".to_string(), 0x3A0, 144),
            ]
        );
    }

    #[test]
    fn writes_what_gguf_py_writes() {
        // Re-lay out the reference file from what was read: the same bytes up to the data.
        let b = tiny_ref();
        let h = read_header(&b).unwrap();
        let tensors: Vec<OutTensor> = h
            .tensors
            .iter()
            .map(|t| OutTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                ty: t.ty,
                nbytes: t.nbytes,
            })
            .collect();
        let l = layout(&h.kvs, &tensors).unwrap();
        assert_eq!(l.header, b[..0x360]);
        assert_eq!(l.offsets, vec![0x360, 0x380, 0x3A0]);
        assert_eq!(l.total, b.len() as u64);
    }

    #[test]
    fn hostile_headers_are_refused_with_the_rule() {
        let good = tiny_ref();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..3].to_vec(), "needs 4 bytes"),
            (b"GGUG\x03\0\0\0".to_vec(), "not a GGUF file"),
            (
                [&good[..4], &7u32.to_le_bytes()[..], &good[8..]].concat(),
                "version 7",
            ),
            (
                [&good[..8], &u64::MAX.to_le_bytes()[..], &good[16..]].concat(),
                "tensors cannot fit",
            ),
            (
                [&good[..16], &(1u64 << 40).to_le_bytes()[..], &good[24..]].concat(),
                "key-value pairs cannot fit",
            ),
            (
                // the first key's length
                [&good[..24], &u64::MAX.to_le_bytes()[..], &good[32..]].concat(),
                "remain",
            ),
            (good[..0x359].to_vec(), "past the end of the file"),
            (good[..0x3A0 + 100].to_vec(), "tiny.q4_0_2d"),
        ];
        for (bytes, want) in cases {
            let e = read_header(&bytes).unwrap_err();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }

    /// A GGUF file assembled field by field, for hostile variants.
    struct Raw(Vec<u8>);
    impl Raw {
        fn new(version: u32, tensors: u64, kvs: u64) -> Raw {
            let mut b = Vec::new();
            b.extend_from_slice(&MAGIC.to_le_bytes());
            b.extend_from_slice(&version.to_le_bytes());
            b.extend_from_slice(&tensors.to_le_bytes());
            b.extend_from_slice(&kvs.to_le_bytes());
            Raw(b)
        }
        fn u32(mut self, v: u32) -> Raw {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Raw {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn str(self, s: &str) -> Raw {
            let mut r = self.u64(s.len() as u64);
            r.0.extend_from_slice(s.as_bytes());
            r
        }
        fn bytes(mut self, b: &[u8]) -> Raw {
            self.0.extend_from_slice(b);
            self
        }
        /// A tensor info: name, dims (innermost first), type, offset.
        fn tensor(self, name: &str, ne: &[u64], ty: u32, offset: u64) -> Raw {
            let mut r = self.str(name).u32(ne.len() as u32);
            for &d in ne {
                r = r.u64(d);
            }
            r.u32(ty).u64(offset)
        }
        /// Pads to 32 and appends `n` data bytes.
        fn data(mut self, n: usize) -> Vec<u8> {
            self.0.resize(self.0.len().next_multiple_of(32) + n, 0);
            self.0
        }
    }

    #[test]
    fn every_bound_of_the_reader_has_its_message() {
        let f32_tensor = |r: Raw| r.tensor("t", &[4, 2], 0, 0).data(32);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "version 1",
                Raw::new(1, 0, 0).data(64),
                "version 1 is not supported",
            ),
            (
                "string longer than the file",
                Raw::new(3, 0, 1).u64(1 << 40).data(64),
                "needs 1099511627776 bytes",
            ),
            (
                "key not UTF-8",
                Raw::new(3, 0, 1)
                    .u64(2)
                    .bytes(&[0xff, 0xfe])
                    .u32(4)
                    .u32(1)
                    .data(64),
                "key 0 is not UTF-8",
            ),
            (
                "unknown value type",
                Raw::new(3, 0, 1).str("k").u32(13).data(64),
                "unknown value type 13",
            ),
            (
                "bool byte 2",
                Raw::new(3, 0, 1).str("k").u32(7).bytes(&[2]).data(64),
                "neither 0 nor 1",
            ),
            (
                "array count beyond the file",
                Raw::new(3, 0, 1)
                    .str("k")
                    .u32(9)
                    .u32(4)
                    .u64(u64::MAX / 2)
                    .data(64),
                "does not fit",
            ),
            (
                "unknown array element type",
                Raw::new(3, 0, 1).str("k").u32(9).u32(99).u64(1).data(64),
                "unknown array element type 99",
            ),
            (
                "arrays nested too deep",
                {
                    let mut r = Raw::new(3, 0, 1).str("k").u32(9);
                    for _ in 0..6 {
                        r = r.u32(9).u64(1);
                    }
                    r.u32(4).u64(1).u32(7).data(64)
                },
                "nested deeper than 4",
            ),
            (
                "duplicate key",
                Raw::new(3, 0, 2)
                    .str("k")
                    .u32(4)
                    .u32(1)
                    .str("k")
                    .u32(4)
                    .u32(2)
                    .data(64),
                "key `k` appears twice",
            ),
            (
                "alignment not u32",
                Raw::new(3, 0, 1)
                    .str("general.alignment")
                    .u32(10)
                    .u64(32)
                    .data(64),
                "must be a power of two of type u32",
            ),
            (
                "alignment not a power of two",
                Raw::new(3, 0, 1)
                    .str("general.alignment")
                    .u32(4)
                    .u32(24)
                    .data(64),
                "power of two",
            ),
            (
                "zero dimensions",
                Raw::new(3, 1, 0).tensor("t", &[], 0, 0).data(64),
                "tensor `t`: 0 dimensions",
            ),
            (
                "five dimensions",
                Raw::new(3, 1, 0)
                    .tensor("t", &[1, 1, 1, 1, 1], 0, 0)
                    .data(32),
                "5 dimensions",
            ),
            (
                "unknown ggml type",
                Raw::new(3, 1, 0).tensor("t", &[4], 99, 0).data(32),
                "unknown ggml type 99",
            ),
            (
                "shape overflows",
                Raw::new(3, 1, 0)
                    .tensor("t", &[1 << 32, 1 << 32], 0, 0)
                    .data(32),
                "overflows",
            ),
            (
                "row not whole blocks",
                Raw::new(3, 1, 0).tensor("t", &[40, 2], 2, 0).data(64),
                "row length 40 is not a multiple of q4_0's block of 32",
            ),
            (
                "misaligned offset",
                Raw::new(3, 1, 0).tensor("t", &[4], 0, 8).data(64),
                "not a multiple of the alignment 32",
            ),
            (
                "data past the end",
                Raw::new(3, 1, 0).tensor("t", &[4, 2], 0, 0).data(16),
                "tensor `t`: data [0, +32) runs past the end",
            ),
            (
                "overlapping tensors",
                Raw::new(3, 2, 0)
                    .tensor("a", &[16], 0, 0)
                    .tensor("b", &[16], 0, 32)
                    .data(96),
                "tensors `a` and `b` overlap",
            ),
            (
                "duplicate tensor",
                Raw::new(3, 2, 0)
                    .tensor("a", &[8], 0, 0)
                    .tensor("a", &[8], 0, 32)
                    .data(64),
                "tensor `a` appears twice",
            ),
            (
                "tensor count beyond the file",
                Raw::new(3, 1 << 40, 0).data(0),
                "tensors cannot fit",
            ),
        ];
        for (what, bytes, want) in cases {
            let e = read_header(&bytes).expect_err(what);
            assert!(e.contains(want), "{what}: {e} (wanted {want})");
        }
        // The well-formed variant of the last shapes reads.
        let ok = f32_tensor(Raw::new(3, 1, 0));
        assert_eq!(read_header(&ok).unwrap().tensors[0].shape, vec![2, 4]);
    }
}
