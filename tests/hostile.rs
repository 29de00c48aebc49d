//! Hostile inputs, driven through the real binary: malformed safetensors
//! headers, broken sharded indexes, NaN and Inf, output paths that would
//! clobber the input, packed and plain files swapped.
//!
//! Every input is built here, byte by byte, in a temporary directory (no
//! committed binaries). A rejected case is run under each command it
//! concerns, and every run must: exit 1 (no panic, not 101, not a signal);
//! print a message that names the file, the tensor when there is one, and the
//! rule broken; leave no output file and no temporary anywhere; and leave every
//! input file byte-identical. Valid edge cases are in the `accepted` table:
//! they must quantize, verify, inspect and dequantize.
//!
//! Each table entry is its own test (`cargo test --test hostile rejected::`).
//! The `regressions` tests hold the four bugs this suite found (header errors
//! that did not name the tensor, `--no-mmap` wording them differently, a FIFO
//! input blocking forever, a failed sharded run leaving its new directory).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use half::{bf16, f16};
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------
// Building files
// ---------------------------------------------------------------------------

/// The tensor most cases are about.
const T: &str = "model.layers.0.mlp.up_proj.weight";
/// Another 2-D tensor.
const K: &str = "model.layers.0.self_attn.k_proj.weight";
/// Tensors of sharded checkpoints.
const Q: &str = "model.layers.0.self_attn.q_proj.weight";
const V: &str = "model.layers.0.self_attn.v_proj.weight";
/// A 1-D tensor (kept by default).
const NORM: &str = "model.layers.0.input_layernorm.weight";
/// The index file of a sharded checkpoint.
const INDEX: &str = "model.safetensors.index.json";

/// One tensor of a file being built.
#[derive(Clone)]
struct Tn {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn tn(name: &str, dtype: &'static str, shape: &[usize], data: Vec<u8>) -> Tn {
    Tn {
        name: name.to_string(),
        dtype,
        shape: shape.to_vec(),
        data,
    }
}

/// Varied values in [-1, 1).
fn ramp(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37) % 101) as f32 / 50.5 - 1.0)
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| f16::from_f32(*x).to_le_bytes())
        .collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
        .collect()
}

/// An F32 [2, 64] tensor (512 bytes), quantized by default.
fn weight(name: &str) -> Tn {
    tn(name, "F32", &[2, 64], f32_bytes(&ramp(128)))
}

/// An F32 [2, 64] tensor with `bad` values at the given flat indices.
fn weight_with(name: &str, bad: &[(usize, f32)]) -> Tn {
    let mut v = ramp(128);
    for &(i, x) in bad {
        v[i] = x;
    }
    tn(name, "F32", &[2, 64], f32_bytes(&v))
}

/// The header (tensors in order, contiguous from 0) and data of a valid file.
fn layout(tensors: &[Tn]) -> (Value, Vec<u8>) {
    let mut header = Map::new();
    let mut data = Vec::new();
    for t in tensors {
        let begin = data.len();
        data.extend_from_slice(&t.data);
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [begin, data.len()]}),
        );
    }
    (Value::Object(header), data)
}

/// The 8-byte little-endian length `n`, then `header`, then `data`.
fn with_len(n: u64, header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut v = n.to_le_bytes().to_vec();
    v.extend_from_slice(header);
    v.extend_from_slice(data);
    v
}

/// A file whose length prefix is the header's true length.
fn container(header: &[u8], data: &[u8]) -> Vec<u8> {
    with_len(header.len() as u64, header, data)
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

/// A safetensors file of `tensors` whose JSON header is edited by `edit` first.
fn edited(path: &Path, tensors: &[Tn], edit: impl FnOnce(&mut Value)) -> PathBuf {
    let (mut header, data) = layout(tensors);
    edit(&mut header);
    write(
        path,
        &container(&serde_json::to_vec(&header).unwrap(), &data),
    )
}

/// A valid safetensors file of `tensors`.
fn plain(path: &Path, tensors: &[Tn]) -> PathBuf {
    edited(path, tensors, |_| {})
}

/// A file with this header text (any bytes) and data, length prefix exact.
fn raw(path: &Path, header: &[u8], data: &[u8]) -> PathBuf {
    write(path, &container(header, data))
}

/// The header text of a valid file of `tensors`, and its data.
fn header_text(tensors: &[Tn]) -> (Vec<u8>, Vec<u8>) {
    let (h, d) = layout(tensors);
    (serde_json::to_vec(&h).unwrap(), d)
}

/// A sharded checkpoint in `dir`: every shard file with its tensors (all
/// `weight`s), and an index whose `weight_map` is `map` (tensor → file).
fn sharded(dir: &Path, shards: &[(&str, &[&str])], map: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for (file, names) in shards {
        let tensors: Vec<Tn> = names.iter().map(|n| weight(n)).collect();
        plain(&dir.join(file), &tensors);
    }
    let weight_map: Map<String, Value> =
        map.iter().map(|(t, f)| (t.to_string(), json!(f))).collect();
    index(
        dir,
        &json!({"metadata": {"total_size": 512 * map.len()}, "weight_map": weight_map}),
    );
    dir.to_path_buf()
}

/// Writes `dir/model.safetensors.index.json`.
fn index(dir: &Path, v: &Value) -> PathBuf {
    write(&dir.join(INDEX), &serde_json::to_vec_pretty(v).unwrap())
}

/// The standard two-shard checkpoint: Q in a.safetensors, K in b.safetensors.
fn two_shards(dir: &Path) -> PathBuf {
    sharded(
        dir,
        &[("a.safetensors", &[Q]), ("b.safetensors", &[K])],
        &[(Q, "a.safetensors"), (K, "b.safetensors")],
    )
}

/// A packed file written by hand from FORMAT.md: `T`, F32 [2, 64], as int8
/// (symmetric) group 64 with F16 scales; `edit` may change the `shrinkray`
/// entry (parsed) and the tensor list before writing.
fn packed(path: &Path, edit: impl FnOnce(&mut Value, &mut Vec<Tn>)) -> PathBuf {
    let mut meta = json!({
        "format": 1,
        "tensors": {T: {"scheme": "int8", "bits": 8, "symmetric": true, "group_size": 64,
                        "dtype": "F32", "shape": [2, 64], "scale_dtype": "F16"}}
    });
    let codes: Vec<u8> = (0..128).map(|i| (i as i8 - 64) as u8).collect();
    let mut pieces = vec![
        tn(
            &format!("{T}.scales"),
            "F16",
            &[2, 1],
            f16_bytes(&[0.01, 0.02]),
        ),
        tn(&format!("{T}.qweight"), "I8", &[2, 64], codes),
    ];
    edit(&mut meta, &mut pieces);
    let meta = match meta {
        Value::String(s) => s, // a raw (possibly broken) entry
        m => m.to_string(),
    };
    edited(path, &pieces, |h| {
        h["__metadata__"] = json!({ "shrinkray": meta });
    })
}

/// A valid version-2 packed file (int8, 4-bit scale codes, one group per
/// super-group) holding `T`, with `edit` applied to its metadata and tensors.
fn packed_v2(path: &Path, edit: impl FnOnce(&mut Value, &mut Vec<Tn>)) -> PathBuf {
    packed(path, |m, pieces| {
        m["format"] = json!(2);
        m["tensors"][T]["scale_bits"] = json!(4);
        m["tensors"][T]["super_group"] = json!(1);
        pieces[0] = tn(&format!("{T}.scales"), "U8", &[2, 1], vec![3, 5]);
        pieces.push(tn(
            &format!("{T}.super_scales"),
            "F16",
            &[2, 1],
            f16_bytes(&[0.01, 0.02]),
        ));
        edit(m, pieces)
    })
}

// ---------------------------------------------------------------------------
// The sandbox, snapshots and commands
// ---------------------------------------------------------------------------

/// A case's directory: `in/` for inputs, `out/` for outputs, `ref/` for the
/// valid files the other side of `verify` needs.
struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    input: PathBuf,
    out: PathBuf,
    /// A valid plain file holding `T`.
    plain_ref: PathBuf,
    /// A valid packed file of `T`.
    packed_ref: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let input = root.join("in");
        let out = root.join("out");
        std::fs::create_dir(&input).unwrap();
        std::fs::create_dir(&out).unwrap();
        let plain_ref = plain(&root.join("ref/plain.safetensors"), &[weight(T)]);
        let packed_ref = packed(&root.join("ref/packed.safetensors"), |_, _| {});
        Dirs {
            _tmp: tmp,
            root,
            input,
            out,
            plain_ref,
            packed_ref,
        }
    }

    /// A path under `in/`.
    fn at(&self, rel: &str) -> PathBuf {
        self.input.join(rel)
    }
}

/// What a case gives the commands.
struct Setup {
    /// The path given as input.
    input: PathBuf,
    /// The file at fault: the message must contain its path or its file name.
    names: String,
    /// `quantize -o` (default `out/packed`).
    output: Option<PathBuf>,
    /// More `quantize` arguments.
    args: Vec<String>,
}

impl Setup {
    fn new(input: PathBuf) -> Setup {
        Setup {
            names: input.display().to_string(),
            input,
            output: None,
            args: Vec::new(),
        }
    }
    fn naming(mut self, file: &Path) -> Setup {
        self.names = file.display().to_string();
        self
    }
    fn output(mut self, out: PathBuf) -> Setup {
        self.output = Some(out);
        self
    }
    fn arg(mut self, a: &str) -> Setup {
        self.args.push(a.to_string());
        self
    }
}

/// Every regular file and symlink under `root` with its contents (or target).
/// Directories are not listed: a left-behind empty directory is checked apart.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, root: &Path, map: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let ft = std::fs::symlink_metadata(&p).unwrap().file_type();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if ft.is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                map.insert(rel, target.display().to_string().into_bytes());
            } else if ft.is_dir() {
                walk(&p, root, map);
            } else if ft.is_file() {
                map.insert(rel, std::fs::read(&p).unwrap());
            } else {
                map.insert(rel, b"<special file>".to_vec()); // a FIFO: never read it
            }
        }
    }
    let mut map = BTreeMap::new();
    walk(root, root, &mut map);
    map
}

/// Asserts that no file appeared (output, temporary), vanished or changed.
fn assert_unchanged(
    before: &BTreeMap<PathBuf, Vec<u8>>,
    after: &BTreeMap<PathBuf, Vec<u8>>,
    ctx: &str,
) {
    let added: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let removed: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    let changed: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k)
        .collect();
    let tmp: Vec<_> = added
        .iter()
        .filter(|p| p.to_string_lossy().contains(".shrinkray-tmp-"))
        .collect();
    assert!(
        tmp.is_empty(),
        "temporary file(s) left behind {tmp:?}: {ctx}"
    );
    assert!(
        added.is_empty() && removed.is_empty() && changed.is_empty(),
        "files added {added:?}, removed {removed:?}, changed {changed:?}: {ctx}"
    );
}

fn shrinkray() -> Command {
    let mut c = Command::cargo_bin("shrinkray").expect("binary built");
    c.env_remove("SHRINKRAY_ISA");
    c.timeout(Duration::from_secs(60));
    c
}

/// The commands a rejected case is run under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    /// `quantize INPUT -o OUT`.
    Quantize,
    /// `quantize INPUT -o OUT --no-mmap`.
    QuantizeNoMmap,
    /// `quantize --dry-run INPUT`.
    DryRun,
    /// `quantize --dry-run INPUT -o OUT` (checks the output path).
    DryRunOut,
    /// `plan INPUT`.
    Plan,
    /// `inspect INPUT`.
    Inspect,
    /// `dequantize INPUT -o out/restored`.
    Dequantize,
    /// `verify INPUT ref/packed.safetensors`.
    VerifyOriginal,
    /// `verify ref/plain.safetensors INPUT`.
    VerifyPacked,
}

use Cmd::*;

/// Every command that opens a checkpoint.
const READERS: &[Cmd] = &[
    Quantize,
    QuantizeNoMmap,
    DryRun,
    Plan,
    Inspect,
    Dequantize,
    VerifyOriginal,
    VerifyPacked,
];
/// Faults found in tensor data: only a real quantize reads it.
const DATA: &[Cmd] = &[Quantize, QuantizeNoMmap];
/// Faults of the output path.
const OUTPUT: &[Cmd] = &[Quantize, DryRunOut];
/// Readers of packed files.
const PACKED: &[Cmd] = &[Inspect, Dequantize, VerifyPacked];

fn command(cmd: Cmd, s: &Setup, d: &Dirs) -> Command {
    let mut c = shrinkray();
    let out = s.output.clone().unwrap_or_else(|| d.out.join("packed"));
    match cmd {
        Quantize | QuantizeNoMmap => {
            c.arg("quantize").arg(&s.input).arg("-o").arg(&out);
            c.args(&s.args);
            if cmd == QuantizeNoMmap {
                c.arg("--no-mmap");
            }
        }
        DryRun => {
            c.args(["quantize", "--dry-run"])
                .arg(&s.input)
                .args(&s.args);
        }
        DryRunOut => {
            c.args(["quantize", "--dry-run"]).arg(&s.input);
            c.arg("-o").arg(&out).args(&s.args);
        }
        Plan => {
            c.arg("plan").arg(&s.input);
        }
        Inspect => {
            c.arg("inspect").arg(&s.input);
        }
        Dequantize => {
            c.arg("dequantize").arg(&s.input);
            c.arg("-o").arg(d.out.join("restored"));
        }
        VerifyOriginal => {
            c.arg("verify").arg(&s.input).arg(&d.packed_ref);
        }
        VerifyPacked => {
            c.arg("verify").arg(&d.plain_ref).arg(&s.input);
        }
    }
    c
}

// ---------------------------------------------------------------------------
// Rejected inputs
// ---------------------------------------------------------------------------

/// Whether the message must name a tensor.
#[derive(Clone, Copy, Debug)]
enum Tensor {
    /// No tensor is concerned.
    Absent,
    /// The message names it (checked).
    Named(&'static str),
    /// A tensor is concerned and the safetensors crate's own error does not
    /// name it; shrinkray's message must (checked by
    /// `regressions::header_errors_name_the_tensor`).
    NotNamed(&'static str),
}

use Tensor::*;

/// A hostile input, the commands to run it under and what they must say.
struct Case {
    build: fn(&Dirs) -> Setup,
    cmds: &'static [Cmd],
    /// Fragments of the rule broken; every one must be in stderr.
    expect: &'static [&'static str],
    tensor: Tensor,
    /// A rule `--no-mmap` once worded differently (checked by
    /// `regressions::no_mmap_explains_like_the_mapped_reader`); its run here
    /// checks everything but `expect`.
    no_mmap_differs: bool,
}

fn case(cmds: &'static [Cmd], expect: &'static [&'static str], build: fn(&Dirs) -> Setup) -> Case {
    Case {
        build,
        cmds,
        expect,
        tensor: Absent,
        no_mmap_differs: false,
    }
}

impl Case {
    fn tensor(mut self, t: Tensor) -> Case {
        self.tensor = t;
        self
    }
    fn no_mmap_differs(mut self) -> Case {
        self.no_mmap_differs = true;
        self
    }
}

/// Runs one command of a case; returns its stderr after the checks every run passes.
fn run_one(name: &str, cmd: Cmd, case: &Case, setup: &Setup, d: &Dirs) -> String {
    let before = snapshot(&d.root);
    let out = command(cmd, setup, d).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let ctx = format!(
        "case {name}, {cmd:?} ({:?}):\n--- stderr\n{stderr}--- stdout\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "panic: {ctx}");
    assert_ne!(out.status.code(), Some(101), "panic: {ctx}");
    assert_eq!(out.status.code(), Some(1), "exit code: {ctx}");
    assert!(stderr.starts_with("error: "), "{ctx}");
    let file_name = Path::new(&setup.names)
        .file_name()
        .map_or(setup.names.clone(), |n| n.to_string_lossy().into_owned());
    assert!(
        stderr.contains(&setup.names) || stderr.contains(&file_name),
        "the message names neither {} nor {file_name}: {ctx}",
        setup.names
    );
    if !(cmd == QuantizeNoMmap && case.no_mmap_differs) {
        for want in case.expect {
            assert!(stderr.contains(want), "missing `{want}`: {ctx}");
        }
    }
    if let Named(t) = case.tensor {
        assert!(
            stderr.contains(&format!("`{t}`")),
            "the message does not name tensor `{t}`: {ctx}"
        );
    }
    assert_unchanged(&before, &snapshot(&d.root), &ctx);
    stderr
}

fn run_rejected(name: &str, case: &Case) {
    let d = Dirs::new();
    let setup = (case.build)(&d);
    for &cmd in case.cmds {
        run_one(name, cmd, case, &setup, &d);
    }
}

/// The table of rejected cases: `name => Case,`. Each becomes the test
/// `rejected::name` (attributes such as `#[ignore]` go to the test), and
/// `rejected_table()` lists them all for the checks across cases.
macro_rules! rejected {
    ($( $(#[$attr:meta])* $name:ident => $case:expr, )*) => {
        fn rejected_table() -> Vec<(&'static str, Case)> {
            vec![$( (stringify!($name), $case) ),*]
        }
        mod rejected {
            use super::*;
            $(
                #[test]
                $(#[$attr])*
                fn $name() {
                    run_rejected(stringify!($name), &$case);
                }
            )*
        }
    };
}

rejected! {
    // --- the 8-byte length prefix -------------------------------------------
    file_shorter_than_8_bytes => case(READERS,
        &["file is 3 bytes, too short for the 8-byte header length"],
        |d| Setup::new(write(&d.at("short.safetensors"), &[5, 0, 0]))),
    empty_file => case(READERS,
        &["file is 0 bytes, too short for the 8-byte header length"],
        |d| Setup::new(write(&d.at("empty.safetensors"), b""))),
    header_length_past_end_of_file => case(READERS,
        &["header length runs past the end of the file"],
        |d| {
            let (h, data) = header_text(&[weight(T)]);
            Setup::new(write(&d.at("m.safetensors"), &with_len(10_000, &h, &data)))
        }),
    header_length_zero => case(READERS,
        &["header is not valid safetensors JSON", "EOF while parsing"],
        |d| {
            let (_, data) = header_text(&[weight(T)]);
            Setup::new(write(&d.at("m.safetensors"), &with_len(0, b"", &data)))
        }),
    header_length_u64_max => case(READERS,
        &["header length is over the 100 MB cap"],
        |d| Setup::new(write(&d.at("m.safetensors"), &with_len(u64::MAX, b"{}", b"")))),
    header_length_2_pow_63 => case(READERS,
        &["header length is over the 100 MB cap"],
        |d| Setup::new(write(&d.at("m.safetensors"), &with_len(1 << 63, b"{}", b"")))),
    header_length_just_over_the_cap => case(READERS,
        &["header length is over the 100 MB cap"],
        |d| Setup::new(write(&d.at("m.safetensors"), &with_len(100_000_001, b"{}", b"")))),
    header_length_at_the_cap_past_end_of_file => case(READERS,
        &["header length runs past the end of the file"],
        |d| Setup::new(write(&d.at("m.safetensors"), &with_len(100_000_000, b"{}", b"")))),

    // --- the JSON header ----------------------------------------------------
    header_not_utf8 => case(READERS,
        &["header is not UTF-8"],
        |d| Setup::new(raw(&d.at("m.safetensors"), b"{\"\xff\xfe\": 1}", b""))),
    header_not_json => case(READERS,
        &["header is not valid safetensors JSON", "expected value"],
        |d| Setup::new(raw(&d.at("m.safetensors"), b"hello, world", b""))),
    header_json_not_an_object => case(READERS,
        &["header is not valid safetensors JSON", "invalid type: sequence"],
        |d| Setup::new(raw(&d.at("m.safetensors"), b"[1, 2, 3]", b""))),
    header_json_trailing_garbage => case(READERS,
        &["header is not valid safetensors JSON", "trailing characters"],
        |d| {
            let (mut h, data) = header_text(&[weight(T)]);
            h.extend_from_slice(b"}garbage");
            Setup::new(raw(&d.at("m.safetensors"), &h, &data))
        }),
    header_json_cut_short => case(READERS,
        &["header is not valid safetensors JSON", "EOF while parsing"],
        |d| {
            let (h, data) = header_text(&[weight(T)]);
            Setup::new(raw(&d.at("m.safetensors"), &h[..30], &data))
        }),
    header_json_nested_100000_deep => case(READERS,
        &["header is not valid safetensors JSON", "recursion limit exceeded"],
        |d| {
            let (h, data) = header_text(&[weight(T)]);
            let mut deep = h[..h.len() - 2].to_vec(); // inside T's entry
            deep.extend_from_slice(b", \"x\": ");
            deep.extend(std::iter::repeat_n(b'[', 100_000));
            deep.extend(std::iter::repeat_n(b']', 100_000));
            deep.extend_from_slice(b"}}");
            Setup::new(raw(&d.at("m.safetensors"), &deep, &data))
        }),
    unknown_dtype => case(READERS,
        &["header is not valid safetensors JSON", "unknown variant `F7`"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| h[T]["dtype"] = json!("F7"))))
        .tensor(NotNamed(T)),
    dtype_lower_case => case(READERS,
        &["header is not valid safetensors JSON", "unknown variant `f32`"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| h[T]["dtype"] = json!("f32"))))
        .tensor(NotNamed(T)),
    dtype_not_a_string => case(READERS,
        &["header is not valid safetensors JSON", "invalid type: integer `7`"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| h[T]["dtype"] = json!(7))))
        .tensor(NotNamed(T)),
    shape_negative => case(READERS,
        &["header is not valid safetensors JSON", "invalid value: integer `-2`, expected usize"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| h[T]["shape"] = json!([-2, 64]))))
        .tensor(NotNamed(T)),
    shape_not_an_integer => case(READERS,
        &["header is not valid safetensors JSON", "invalid type: floating point `2.5`"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| h[T]["shape"] = json!([2.5, 64]))))
        .tensor(NotNamed(T)),
    shape_a_string => case(READERS,
        &["header is not valid safetensors JSON", "invalid type: string \"2x64\", expected a sequence"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| h[T]["shape"] = json!("2x64"))))
        .tensor(NotNamed(T)),
    shape_missing => case(READERS,
        &["header is not valid safetensors JSON", "missing field `shape`"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| {
            h[T].as_object_mut().unwrap().remove("shape");
        })))
        .tensor(NotNamed(T)),
    tensor_entry_not_an_object => case(READERS,
        &["header is not valid safetensors JSON", "invalid type"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| h[T] = json!([1, 2, 3]))))
        .tensor(NotNamed(T)),
    data_offsets_three_numbers => case(READERS,
        &["header is not valid safetensors JSON", "invalid length 3"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| {
            h[T]["data_offsets"] = json!([0, 512, 1024]);
        })))
        .tensor(NotNamed(T)),
    data_offsets_negative => case(READERS,
        &["header is not valid safetensors JSON", "invalid value: integer `-8`, expected usize"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| {
            h[T]["data_offsets"] = json!([-8, 504]);
        })))
        .tensor(NotNamed(T)),
    metadata_value_not_a_string => case(READERS,
        &["header is not valid safetensors JSON", "invalid type: integer `1`, expected a string"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| {
            h["__metadata__"] = json!({"format": "pt", "epoch": 1});
        })))
        .tensor(NotNamed("__metadata__")),
    metadata_not_an_object => case(READERS,
        &["header is not valid safetensors JSON", "expected a map"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| {
            h["__metadata__"] = json!("pt");
        })))
        .tensor(NotNamed("__metadata__")),

    // --- offsets, sizes and the data buffer ---------------------------------
    data_offsets_begin_after_end => case(READERS,
        &["data offsets are not contiguous from 0 (overlap, gap or reversed range)"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(K), weight(T)], |h| {
            h[T]["data_offsets"] = json!([512, 256]);
        })))
        .tensor(Named(T)).no_mmap_differs(),
    data_offsets_with_a_gap => case(READERS,
        &["data offsets are not contiguous from 0"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(K), weight(T), weight("pad")], |h| {
            let m = h.as_object_mut().unwrap();
            m.remove("pad");
            m[T]["data_offsets"] = json!([520, 1032]);
        })))
        .tensor(Named(T)).no_mmap_differs(),
    data_offsets_overlapping => case(READERS,
        &["data offsets are not contiguous from 0"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(K), tn(T, "F32", &[2, 32], vec![0; 256])], |h| {
            h[T]["data_offsets"] = json!([256, 512]);
        })))
        .tensor(Named(T)).no_mmap_differs(),
    data_offsets_not_starting_at_0 => case(READERS,
        &["data offsets are not contiguous from 0"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[tn("pad", "U8", &[8], vec![0; 8]), weight(T)], |h| {
            h.as_object_mut().unwrap().remove("pad");
        })))
        .tensor(Named(T)).no_mmap_differs(),
    duplicate_tensor_name_with_other_offsets => case(READERS,
        &["data offsets are not contiguous from 0"],
        |d| {
            // Two entries named T; the JSON parser keeps the last one, which starts at 512.
            let e = |b: usize| format!(r#""{T}": {{"dtype": "F32", "shape": [2, 64], "data_offsets": [{b}, {}]}}"#, b + 512);
            let h = format!("{{{}, {}}}", e(0), e(512));
            let data = [weight(T).data, weight(T).data].concat();
            Setup::new(raw(&d.at("m.safetensors"), h.as_bytes(), &data))
        })
        .tensor(Named(T)).no_mmap_differs(),
    bytes_after_the_data => case(READERS,
        &["the data does not end exactly at the end of the file"],
        |d| {
            let (h, mut data) = header_text(&[weight(T)]);
            data.extend_from_slice(&[0; 4]);
            Setup::new(raw(&d.at("m.safetensors"), &h, &data))
        }),
    data_past_end_of_file => case(READERS,
        &["the data does not end exactly at the end of the file"],
        |d| {
            let (h, data) = header_text(&[weight(T)]);
            Setup::new(raw(&d.at("m.safetensors"), &h, &data[..500]))
        }),
    data_claims_4_tib_in_a_small_file => case(READERS,
        &["the data does not end exactly at the end of the file"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| {
            h[T]["shape"] = json!([1u64 << 20, 1u64 << 20]);
            h[T]["data_offsets"] = json!([0, 1u64 << 42]);
        }))),
    shape_times_dtype_is_not_the_byte_range => case(READERS,
        &["a tensor's byte range does not equal shape × dtype size"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| h[T]["shape"] = json!([2, 63]))))
        .tensor(NotNamed(T)).no_mmap_differs(),
    zero_dimension_with_bytes => case(READERS,
        &["a tensor's byte range does not equal shape × dtype size"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| h[T]["shape"] = json!([0, 64]))))
        .tensor(NotNamed(T)).no_mmap_differs(),
    shape_product_overflows => case(READERS,
        &["a tensor's shape × dtype size overflows"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| {
            h[T]["shape"] = json!([1u64 << 40, 1u64 << 40]);
        })))
        .tensor(NotNamed(T)).no_mmap_differs(),
    sub_byte_dtype_ends_mid_byte => case(READERS,
        &["a tensor's size is not a whole number of bytes"],
        |d| Setup::new(plain(&d.at("m.safetensors"), &[tn(T, "F4", &[3], vec![0x21])])))
        .tensor(NotNamed(T)).no_mmap_differs(),

    // --- not a file ---------------------------------------------------------
    input_missing => case(READERS,
        &["cannot open", "No such file or directory"],
        |d| Setup::new(d.at("missing.safetensors"))),
    input_not_a_regular_file => case(READERS,
        &["not a regular file"],
        |_| Setup::new(PathBuf::from("/dev/null"))),

    // --- tensor data: NaN, Inf, scales beyond F32 ---------------------------
    nan_in_a_quantized_tensor => case(DATA,
        &["1 non-finite value(s) (NaN or Inf), the first at flat index 70", "--nonfinite zero"],
        |d| Setup::new(plain(&d.at("m.safetensors"), &[weight(NORM), weight_with(T, &[(70, f32::NAN)])])))
        .tensor(Named(T)),
    plus_inf_in_a_quantized_tensor => case(DATA,
        &["1 non-finite value(s)", "the first at flat index 3"],
        |d| Setup::new(plain(&d.at("m.safetensors"), &[weight_with(T, &[(3, f32::INFINITY)])])))
        .tensor(Named(T)),
    minus_inf_at_the_last_element => case(DATA,
        &["1 non-finite value(s)", "the first at flat index 127"],
        |d| Setup::new(plain(&d.at("m.safetensors"), &[weight_with(T, &[(127, f32::NEG_INFINITY)])])))
        .tensor(Named(T)),
    nan_and_inf_count_and_first_index => case(DATA,
        &["3 non-finite value(s)", "the first at flat index 10"],
        |d| Setup::new(plain(&d.at("m.safetensors"),
            &[weight_with(T, &[(90, f32::NAN), (10, f32::INFINITY), (64, f32::NEG_INFINITY)])])))
        .tensor(Named(T)),
    nan_in_a_bf16_tensor => case(DATA,
        &["1 non-finite value(s)", "the first at flat index 100"],
        |d| {
            let mut v = ramp(128);
            v[100] = f32::NAN;
            Setup::new(plain(&d.at("m.safetensors"), &[tn(T, "BF16", &[2, 64], bf16_bytes(&v))]))
        })
        .tensor(Named(T)),
    inf_in_an_f16_tensor => case(DATA,
        &["1 non-finite value(s)", "the first at flat index 5"],
        |d| {
            let mut v = ramp(128);
            v[5] = f32::INFINITY;
            Setup::new(plain(&d.at("m.safetensors"), &[tn(T, "F16", &[2, 64], f16_bytes(&v))]))
        })
        .tensor(Named(T)),
    nan_in_the_second_shard => case(DATA,
        &["1 non-finite value(s)", "the first at flat index 5"],
        |d| {
            let dir = two_shards(&d.at("ck"));
            let b = plain(&dir.join("b.safetensors"), &[weight_with(K, &[(5, f32::NAN)])]);
            Setup::new(dir).naming(&b)
        })
        .tensor(Named(K)),
    nan_does_not_replace_an_existing_output_with_force => case(DATA,
        &["1 non-finite value(s)"],
        |d| {
            write(&d.out.join("packed"), b"precious: an earlier good output");
            Setup::new(plain(&d.at("m.safetensors"), &[weight_with(T, &[(0, f32::NAN)])])).arg("--force")
        })
        .tensor(Named(T)),
    scales_beyond_f32_range => case(DATA,
        &["beyond the range of F32", "--keep"],
        |d| {
            let v: Vec<f32> = (0..128).map(|i| if i % 2 == 0 { 3.0e38 } else { -3.0e38 }).collect();
            Setup::new(plain(&d.at("m.safetensors"), &[tn(T, "F32", &[2, 64], f32_bytes(&v))]))
        })
        .tensor(Named(T)),

    // --- directories and sharded indexes ------------------------------------
    directory_without_a_checkpoint => case(READERS,
        &["no checkpoint here", INDEX],
        |d| {
            write(&d.at("ck/README.md"), b"# not a model");
            write(&d.at("ck/model.bin"), b"pickle");
            Setup::new(d.at("ck"))
        }),
    directory_with_two_safetensors_and_no_index => case(READERS,
        &["no checkpoint here", "one *.safetensors file"],
        |d| {
            plain(&d.at("ck/a.safetensors"), &[weight(Q)]);
            plain(&d.at("ck/b.safetensors"), &[weight(K)]);
            Setup::new(d.at("ck"))
        }),
    index_shard_missing => case(READERS,
        &["invalid checkpoint index", "shard `b.safetensors` is missing"],
        |d| {
            let dir = two_shards(&d.at("ck"));
            std::fs::remove_file(dir.join("b.safetensors")).unwrap();
            Setup::new(dir.clone()).naming(&dir.join(INDEX))
        }),
    index_given_by_path_with_a_shard_missing => case(READERS,
        &["invalid checkpoint index", "shard `b.safetensors` is missing"],
        |d| {
            let dir = two_shards(&d.at("ck"));
            std::fs::remove_file(dir.join("b.safetensors")).unwrap();
            Setup::new(dir.join(INDEX))
        }),
    index_shard_escapes_with_dot_dot => case(READERS,
        &["shard `../b.safetensors` is not a plain file name inside the checkpoint directory"],
        |d| {
            plain(&d.at("b.safetensors"), &[weight(V)]); // a valid file to escape to
            let dir = sharded(&d.at("ck"), &[("a.safetensors", &[Q])],
                &[(Q, "a.safetensors"), (V, "../b.safetensors")]);
            Setup::new(dir.clone()).naming(&dir.join(INDEX))
        })
        .tensor(Named(V)),
    index_shard_absolute_path => case(READERS,
        &["is not a plain file name inside the checkpoint directory"],
        |d| {
            let elsewhere = plain(&d.at("b.safetensors"), &[weight(V)]);
            let dir = sharded(&d.at("ck"), &[("a.safetensors", &[Q])],
                &[(Q, "a.safetensors"), (V, elsewhere.to_str().unwrap())]);
            Setup::new(dir.clone()).naming(&dir.join(INDEX))
        })
        .tensor(Named(V)),
    index_shard_name_empty => case(READERS,
        &["shard `` is not a plain file name inside the checkpoint directory"],
        |d| {
            let dir = sharded(&d.at("ck"), &[("a.safetensors", &[Q])], &[(Q, "a.safetensors"), (V, "")]);
            Setup::new(dir.clone()).naming(&dir.join(INDEX))
        })
        .tensor(Named(V)),
    index_shard_is_a_directory => case(READERS,
        &["invalid checkpoint index", "shard `sub` is missing"],
        |d| {
            let dir = sharded(&d.at("ck"), &[("a.safetensors", &[Q])], &[(Q, "a.safetensors"), (V, "sub")]);
            std::fs::create_dir(dir.join("sub")).unwrap();
            Setup::new(dir.clone()).naming(&dir.join(INDEX))
        }),
    index_names_a_tensor_absent_from_its_shard => case(READERS,
        &["is listed in shard `a.safetensors` but is not in it"],
        |d| {
            let dir = sharded(&d.at("ck"), &[("a.safetensors", &[Q])], &[(Q, "a.safetensors"), (V, "a.safetensors")]);
            Setup::new(dir.clone()).naming(&dir.join(INDEX))
        })
        .tensor(Named(V)),
    shard_holds_a_tensor_absent_from_the_index => case(READERS,
        &["of shard `a.safetensors` is not in the index"],
        |d| {
            let dir = sharded(&d.at("ck"), &[("a.safetensors", &[Q, K])], &[(Q, "a.safetensors")]);
            Setup::new(dir.clone()).naming(&dir.join(INDEX))
        })
        .tensor(Named(K)),
    tensor_in_two_shards => case(READERS,
        &["is in two shards: `a.safetensors` and `b.safetensors`"],
        |d| {
            let dir = sharded(&d.at("ck"),
                &[("a.safetensors", &[Q, V]), ("b.safetensors", &[K, V])],
                &[(Q, "a.safetensors"), (V, "a.safetensors"), (K, "b.safetensors")]);
            Setup::new(dir.clone()).naming(&dir.join(INDEX))
        })
        .tensor(Named(V)),
    tensor_in_another_shard_than_the_index_says => case(READERS,
        &["is in shard `a.safetensors` but the index puts it in `b.safetensors`"],
        |d| {
            let dir = sharded(&d.at("ck"),
                &[("a.safetensors", &[Q, V]), ("b.safetensors", &[K])],
                &[(Q, "a.safetensors"), (K, "b.safetensors"), (V, "b.safetensors")]);
            Setup::new(dir.clone()).naming(&dir.join(INDEX))
        })
        .tensor(Named(V)),
    index_not_json => case(READERS,
        &["invalid checkpoint index: not JSON"],
        |d| {
            let dir = two_shards(&d.at("ck"));
            let i = write(&dir.join(INDEX), b"{\"weight_map\": {");
            Setup::new(dir).naming(&i)
        }),
    index_not_an_object => case(READERS,
        &["invalid checkpoint index", "no `weight_map` object"],
        |d| {
            let dir = two_shards(&d.at("ck"));
            let i = index(&dir, &json!(["a.safetensors", "b.safetensors"]));
            Setup::new(dir).naming(&i)
        }),
    index_without_weight_map => case(READERS,
        &["invalid checkpoint index", "no `weight_map` object"],
        |d| {
            let dir = two_shards(&d.at("ck"));
            let i = index(&dir, &json!({"metadata": {"total_size": 1024}}));
            Setup::new(dir).naming(&i)
        }),
    weight_map_an_array => case(READERS,
        &["invalid checkpoint index", "no `weight_map` object"],
        |d| {
            let dir = two_shards(&d.at("ck"));
            let i = index(&dir, &json!({"weight_map": [Q, "a.safetensors"]}));
            Setup::new(dir).naming(&i)
        }),
    weight_map_value_not_a_string => case(READERS,
        &["invalid checkpoint index", "shard name is not a string"],
        |d| {
            let dir = two_shards(&d.at("ck"));
            let i = index(&dir, &json!({"weight_map": {Q: "a.safetensors", K: 2}}));
            Setup::new(dir).naming(&i)
        })
        .tensor(Named(K)),
    weight_map_empty => case(READERS,
        &["invalid checkpoint index", "`weight_map` is empty"],
        |d| {
            let dir = two_shards(&d.at("ck"));
            let i = index(&dir, &json!({"metadata": {}, "weight_map": {}}));
            Setup::new(dir).naming(&i)
        }),
    index_metadata_not_an_object => case(READERS,
        &["invalid checkpoint index", "`metadata` is not an object"],
        |d| {
            let dir = two_shards(&d.at("ck"));
            let i = index(&dir, &json!({"metadata": 1024, "weight_map": {Q: "a.safetensors", K: "b.safetensors"}}));
            Setup::new(dir).naming(&i)
        }),
    malformed_shard_in_a_valid_index => case(READERS,
        &["not a valid safetensors file", "file is 2 bytes, too short for the 8-byte header length"],
        |d| {
            let dir = two_shards(&d.at("ck"));
            let b = write(&dir.join("b.safetensors"), b"\x01\x02");
            Setup::new(dir).naming(&b)
        }),
    shard_with_bad_offsets_in_a_valid_index => case(READERS,
        &["not a valid safetensors file", "data offsets are not contiguous from 0"],
        |d| {
            let dir = two_shards(&d.at("ck"));
            let b = edited(&dir.join("b.safetensors"), &[weight(K)], |h| h[K]["data_offsets"] = json!([4, 516]));
            Setup::new(dir).naming(&b)
        })
        .tensor(Named(K)).no_mmap_differs(),

    // --- output paths -------------------------------------------------------
    output_is_the_input => case(OUTPUT,
        &["this is an input file: shrinkray never writes over its input"],
        |d| {
            let input = plain(&d.at("m.safetensors"), &[weight(T)]);
            Setup::new(input.clone()).output(input)
        }),
    output_is_the_input_with_force => case(OUTPUT,
        &["this is an input file: shrinkray never writes over its input"],
        |d| {
            let input = plain(&d.at("m.safetensors"), &[weight(T)]);
            Setup::new(input.clone()).output(input).arg("--force")
        }),
    output_is_a_symlink_to_the_input => case(OUTPUT,
        &["this is an input file: shrinkray never writes over its input"],
        |d| {
            let input = plain(&d.at("m.safetensors"), &[weight(T)]);
            let link = d.out.join("link.safetensors");
            std::os::unix::fs::symlink(&input, &link).unwrap();
            Setup::new(input).output(link.clone()).naming(&link).arg("--force")
        }),
    output_is_the_directory_of_the_input => case(OUTPUT,
        &["this is an input file: shrinkray never writes over its input"],
        |d| {
            let input = plain(&d.at("m.safetensors"), &[weight(T)]);
            Setup::new(input).output(d.input.clone()).arg("--force")
        }),
    output_is_a_shard_of_the_input => case(OUTPUT,
        &["sharded output needs a directory, and this is a file"],
        |d| {
            let dir = two_shards(&d.at("ck"));
            let a = dir.join("a.safetensors");
            Setup::new(dir).output(a.clone()).naming(&a).arg("--force")
        }),
    output_is_the_sharded_input_directory => case(OUTPUT,
        &["this is an input file: shrinkray never writes over its input"],
        |d| {
            let dir = two_shards(&d.at("ck"));
            Setup::new(dir.clone()).output(dir.clone()).naming(&dir.join("a.safetensors")).arg("--force")
        }),
    output_exists_without_force => case(OUTPUT,
        &["already exists (use --force to replace it)"],
        |d| {
            let out = write(&d.out.join("q.safetensors"), b"precious");
            Setup::new(plain(&d.at("m.safetensors"), &[weight(T)])).output(out.clone()).naming(&out)
        }),
    sharded_output_index_exists_without_force => case(OUTPUT,
        &["already exists (use --force to replace it)"],
        |d| {
            let i = write(&d.out.join("packed").join(INDEX), b"{}");
            Setup::new(two_shards(&d.at("ck"))).naming(&i)
        }),
    output_directory_missing => case(OUTPUT,
        &["the output directory does not exist"],
        |d| {
            let out = d.out.join("no/such/dir/q.safetensors");
            Setup::new(plain(&d.at("m.safetensors"), &[weight(T)])).output(out.clone()).naming(&out)
        }),
    sharded_output_parent_missing => case(OUTPUT,
        &["the parent directory does not exist"],
        |d| {
            let out = d.out.join("no/such");
            Setup::new(two_shards(&d.at("ck"))).output(out.clone()).naming(&out)
        }),
    sharded_output_is_a_file => case(OUTPUT,
        &["sharded output needs a directory, and this is a file"],
        |d| {
            let out = write(&d.out.join("packed"), b"precious");
            Setup::new(two_shards(&d.at("ck"))).naming(&out).arg("--force")
        }),
    output_with_trailing_slash_to_a_missing_directory => case(&[Quantize],
        &["the output directory does not exist"],
        |d| {
            let out = PathBuf::from(format!("{}/", d.out.join("nope").display()));
            Setup::new(plain(&d.at("m.safetensors"), &[weight(T)])).output(out.clone()).naming(&out)
        }),

    // --- packed and plain files swapped; broken packed files ---------------
    packed_file_given_to_quantize => case(&[Quantize, QuantizeNoMmap, DryRun],
        &["already a shrinkray packed file (dequantize it first to quantize again)"],
        |d| Setup::new(packed(&d.at("q.safetensors"), |_, _| {}))),
    plain_file_with_a_shrinkray_metadata_key => case(&[Quantize, DryRun],
        &["already a shrinkray packed file"],
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| {
            h["__metadata__"] = json!({"shrinkray": "mine, not yours"});
        }))),
    plain_file_given_to_dequantize_and_as_packed_to_verify => case(&[Dequantize, VerifyPacked],
        &["not a shrinkray packed file (no `shrinkray` or `shrinkray_mlx` metadata)"],
        |d| Setup::new(plain(&d.at("m.safetensors"), &[weight(T)]))),
    input_tensor_names_collide_with_packed_names => case(&[Quantize, DryRun],
        &["two output tensors would be named"],
        |d| Setup::new(plain(&d.at("m.safetensors"),
            &[weight(T), tn(&format!("{T}.qweight"), "U8", &[4], vec![0; 4])])))
        .tensor(Named("model.layers.0.mlp.up_proj.weight.qweight")),
    packed_metadata_not_json => case(PACKED,
        &["`shrinkray` metadata is not valid"],
        |d| Setup::new(packed(&d.at("q.safetensors"), |m, _| *m = json!("{\"format\": 1, tensors"))))
        .tensor(Named("__metadata__")),
    packed_format_version_3 => case(PACKED,
        &["packed format version 3 is not supported", "versions 1 and 2"],
        |d| Setup::new(packed(&d.at("q.safetensors"), |m, _| m["format"] = json!(3)))),
    packed_v1_with_double_quantized_scales => case(PACKED,
        &["packed format version 1 has no double-quantized scales", T],
        |d| Setup::new(packed_v2(&d.at("q.safetensors"), |m, _| m["format"] = json!(1))))
        .tensor(Named("__metadata__")),
    packed_v2_super_scales_missing => case(PACKED,
        &[".super_scales` is missing from this file"],
        |d| Setup::new(packed_v2(&d.at("q.safetensors"), |_, p| { p.pop(); })))
        .tensor(Named(T)),
    packed_v2_scale_bits_out_of_range => case(PACKED,
        &["unknown quantization", "scale_bits=Some(9)"],
        |d| Setup::new(packed_v2(&d.at("q.safetensors"), |m, _| m["tensors"][T]["scale_bits"] = json!(9))))
        .tensor(Named(T)),
    packed_v2_super_group_without_scale_bits => case(PACKED,
        &["unknown quantization", "scale_bits=None"],
        |d| Setup::new(packed_v2(&d.at("q.safetensors"), |m, _| m["tensors"][T]["scale_bits"] = Value::Null)))
        .tensor(Named(T)),
    packed_v2_scale_codes_not_u8 => case(PACKED,
        &[".scales` is F16 [2, 1], the format says U8 [2, 1]"],
        |d| Setup::new(packed_v2(&d.at("q.safetensors"), |_, p| {
            p[0] = tn(&format!("{T}.scales"), "F16", &[2, 1], f16_bytes(&[0.01, 0.02]));
        })))
        .tensor(Named(T)),
    packed_v1_with_super_scales => case(PACKED,
        &[".super_scales` present without `scale_bits`"],
        |d| Setup::new(packed(&d.at("q.safetensors"), |_, p| {
            p.push(tn(&format!("{T}.super_scales"), "F16", &[2, 1], f16_bytes(&[0.01, 0.02])));
        })))
        .tensor(Named(T)),
    packed_group_size_zero => case(PACKED,
        &["unknown quantization", "group_size=0"],
        |d| Setup::new(packed(&d.at("q.safetensors"), |m, _| m["tensors"][T]["group_size"] = json!(0))))
        .tensor(Named(T)),
    packed_bits_disagree_with_scheme => case(PACKED,
        &["unknown quantization", "bits=4"],
        |d| Setup::new(packed(&d.at("q.safetensors"), |m, _| m["tensors"][T]["bits"] = json!(4))))
        .tensor(Named(T)),
    packed_original_dtype_not_float => case(PACKED,
        &["original dtype `I64` is not F32, F16 or BF16"],
        |d| Setup::new(packed(&d.at("q.safetensors"), |m, _| m["tensors"][T]["dtype"] = json!("I64"))))
        .tensor(Named(T)),
    packed_original_shape_overflows => case(PACKED,
        &["original shape overflows"],
        |d| Setup::new(packed(&d.at("q.safetensors"), |m, _| {
            m["tensors"][T]["shape"] = json!([1u64 << 40, 1u64 << 40, 64]);
        })))
        .tensor(Named(T)),
    packed_codes_missing => case(PACKED,
        &["`model.layers.0.mlp.up_proj.weight.qweight` is missing from this file"],
        |d| Setup::new(packed(&d.at("q.safetensors"), |_, p| p.retain(|t| !t.name.ends_with(".qweight")))))
        .tensor(Named(T)),
    packed_codes_of_the_wrong_shape => case(PACKED,
        &["is I8 [1, 128], the format says I8 [2, 64]"],
        |d| Setup::new(packed(&d.at("q.safetensors"), |_, p| {
            for t in p.iter_mut().filter(|t| t.name.ends_with(".qweight")) {
                t.shape = vec![1, 128];
            }
        })))
        .tensor(Named(T)),
    packed_mins_for_a_symmetric_scheme => case(PACKED,
        &["present for a symmetric scheme"],
        |d| Setup::new(packed(&d.at("q.safetensors"), |_, p| {
            p.push(tn(&format!("{T}.mins"), "F16", &[2, 1], vec![0; 4]));
        })))
        .tensor(Named(T)),
    packed_kept_tensor_shadows_a_quantized_one => case(&[Dequantize],
        &["two output tensors would be named"],
        |d| Setup::new(packed(&d.at("q.safetensors"), |_, p| p.push(tn(T, "F32", &[1], vec![0; 4])))))
        .tensor(Named(T)),
}

#[test]
fn there_are_at_least_45_rejected_cases() {
    let n = rejected_table().len();
    assert!(n >= 45, "{n} cases");
}

/// The valid files the other side of `verify` gets are valid.
#[test]
fn the_reference_files_are_valid() {
    let d = Dirs::new();
    shrinkray()
        .arg("verify")
        .arg(&d.plain_ref)
        .arg(&d.packed_ref)
        .assert()
        .success();
}

// ---------------------------------------------------------------------------
// Behaviour that is wrong today: ignored until src is fixed
// ---------------------------------------------------------------------------

mod regressions {
    use super::*;

    /// Header errors that serde or safetensors' validation report give a JSON
    /// column or "a tensor's …", not the tensor's name (README, exit codes:
    /// "the message names the file, the tensor and what is wrong").
    #[test]
    fn header_errors_name_the_tensor() {
        let mut missing = Vec::new();
        for (name, case) in rejected_table() {
            let NotNamed(t) = case.tensor else { continue };
            let d = Dirs::new();
            let setup = (case.build)(&d);
            let stderr = run_one(name, Quantize, &case, &setup, &d);
            if !stderr.contains(&format!("`{t}`")) {
                missing.push(format!("{name}: {}", stderr.trim()));
            }
        }
        assert!(
            missing.is_empty(),
            "{} message(s) do not name the tensor:\n{}",
            missing.len(),
            missing.join("\n")
        );
    }

    /// `--no-mmap` validates headers through `Metadata`'s deserializer, and
    /// reports offset and size errors as "header is not valid safetensors JSON:
    /// <safetensors' own message>" instead of the rule the mapped reader names.
    #[test]
    fn no_mmap_explains_like_the_mapped_reader() {
        let mut differ = Vec::new();
        for (name, case) in rejected_table() {
            if !case.no_mmap_differs {
                continue;
            }
            let d = Dirs::new();
            let setup = (case.build)(&d);
            let mapped = run_one(name, Quantize, &case, &setup, &d);
            let read = run_one(name, QuantizeNoMmap, &case, &setup, &d);
            if mapped != read {
                differ.push(format!(
                    "{name}:\n  mmap:    {}\n  no-mmap: {}",
                    mapped.trim(),
                    read.trim()
                ));
            }
        }
        assert!(differ.is_empty(), "{}", differ.join("\n"));
    }

    /// A FIFO as input: `File::open` blocks until a writer appears, forever;
    /// SIGINT/SIGTERM only set a flag, so only SIGKILL ends the run.
    #[test]
    fn fifo_input_is_refused_not_waited_on() {
        let d = Dirs::new();
        let fifo = d.at("m.safetensors");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let out = shrinkray()
            .timeout(Duration::from_secs(5))
            .arg("quantize")
            .arg(&fifo)
            .arg("-o")
            .arg(d.out.join("packed"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "still waiting after 5 s (killed): {stderr}"
        );
        assert!(stderr.contains("not a regular file"), "{stderr}");
    }

    /// A sharded run that fails after creating its output directory (here on a
    /// NaN) removes its files but leaves the empty directory it created.
    #[test]
    fn failed_sharded_run_removes_the_output_directory_it_created() {
        let d = Dirs::new();
        let dir = two_shards(&d.at("ck"));
        plain(
            &dir.join("b.safetensors"),
            &[weight_with(K, &[(5, f32::NAN)])],
        );
        let out = d.out.join("packed");
        shrinkray()
            .arg("quantize")
            .arg(&dir)
            .arg("-o")
            .arg(&out)
            .assert()
            .code(1);
        assert!(!out.exists(), "{} was left behind", out.display());
    }
}

// ---------------------------------------------------------------------------
// Valid edge cases
// ---------------------------------------------------------------------------

/// A valid edge case: it must quantize (exit 0), verify, inspect and dequantize.
struct Accept {
    build: fn(&Dirs) -> Setup,
    /// More checks on the `quantize --json` report and the packed file.
    check: fn(&Value, &Path),
}

fn accept(build: fn(&Dirs) -> Setup, check: fn(&Value, &Path)) -> Accept {
    Accept { build, check }
}

fn run_ok(c: &mut Command, ctx: &str) -> Vec<u8> {
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{ctx}: panic: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{ctx}: {stderr}");
    out.stdout
}

fn run_accepted(name: &str, a: &Accept) {
    let d = Dirs::new();
    let setup = (a.build)(&d);
    let inputs = snapshot(&d.input);
    let out = setup.output.clone().unwrap_or_else(|| d.out.join("packed"));
    let report = run_ok(
        shrinkray()
            .arg("quantize")
            .arg(&setup.input)
            .arg("-o")
            .arg(&out)
            .arg("--json")
            .args(&setup.args),
        &format!("{name}: quantize"),
    );
    let report: Value = serde_json::from_slice(&report).expect("the report is JSON");
    run_ok(
        shrinkray().arg("verify").arg(&setup.input).arg(&out),
        &format!("{name}: verify"),
    );
    run_ok(
        shrinkray().arg("inspect").arg(&out),
        &format!("{name}: inspect"),
    );
    run_ok(
        shrinkray()
            .arg("dequantize")
            .arg(&out)
            .arg("-o")
            .arg(d.out.join("restored")),
        &format!("{name}: dequantize"),
    );
    assert_unchanged(&inputs, &snapshot(&d.input), &format!("{name}: the inputs"));
    let tmp: Vec<_> = snapshot(&d.root)
        .into_keys()
        .filter(|p| p.to_string_lossy().contains(".shrinkray-tmp-"))
        .collect();
    assert!(tmp.is_empty(), "{name}: temporaries left {tmp:?}");
    (a.check)(&report, &out);
}

/// The tensors of a safetensors file: name → (dtype, shape, bytes).
fn tensors_of(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                (v.dtype().to_string(), v.shape().to_vec(), v.data().to_vec()),
            )
        })
        .collect()
}

/// The report's row for tensor `name`.
fn row<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no row for `{name}` in {report}"))
}

macro_rules! accepted {
    ($( $(#[$attr:meta])* $name:ident => $case:expr, )*) => {
        mod accepted {
            use super::*;
            $(
                #[test]
                $(#[$attr])*
                fn $name() {
                    run_accepted(stringify!($name), &$case);
                }
            )*
        }
    };
}

accepted! {
    /// The safetensors format allows trailing spaces to pad the header.
    header_padded_with_trailing_spaces => accept(
        |d| {
            let (mut h, data) = header_text(&[weight(T)]);
            h.extend_from_slice(&[b' '; 13]);
            Setup::new(raw(&d.at("m.safetensors"), &h, &data))
        },
        |r, _| assert_eq!(row(r, T)["action"], "int4-asym")),
    header_with_leading_whitespace => accept(
        |d| {
            let (h, data) = header_text(&[weight(T)]);
            Setup::new(raw(&d.at("m.safetensors"), &[b"  \n".as_slice(), &h].concat(), &data))
        },
        |r, _| assert_eq!(row(r, T)["action"], "int4-asym")),
    /// Kept tensors are copied byte for byte: NaN and Inf in a 1-D norm are not refused.
    nan_and_inf_in_a_kept_norm => accept(
        |d| Setup::new(plain(&d.at("m.safetensors"), &[
            weight(T),
            tn(NORM, "F32", &[4], f32_bytes(&[1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY])),
        ])),
        |r, out| {
            assert_eq!(row(r, NORM)["action"], "keep");
            assert_eq!(row(r, NORM)["keep_reason"], "1-D");
            let want = f32_bytes(&[1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
            assert_eq!(tensors_of(out)[NORM].2, want, "kept byte for byte");
        }),
    nan_in_a_tensor_kept_by_keep => accept(
        |d| Setup::new(plain(&d.at("m.safetensors"), &[weight_with(T, &[(9, f32::NAN)])]))
            .arg("--keep").arg("up_proj"),
        |r, _| assert_eq!(row(r, T)["action"], "keep")),
    nan_quantized_as_zero_on_request => accept(
        |d| Setup::new(plain(&d.at("m.safetensors"), &[weight_with(T, &[(9, f32::NAN)])]))
            .arg("--nonfinite").arg("zero"),
        |r, _| assert_eq!(row(r, T)["error"]["nonfinite"], 1)),
    zero_element_tensors => accept(
        |d| Setup::new(plain(&d.at("m.safetensors"), &[
            tn("empty.rows", "F32", &[0, 64], vec![]),
            tn("empty.cols", "BF16", &[64, 0], vec![]),
            tn("empty.1d", "F16", &[0], vec![]),
            weight(T),
        ])),
        |r, out| {
            for n in ["empty.rows", "empty.cols", "empty.1d"] {
                assert_eq!(row(r, n)["action"], "keep", "{n}");
                assert_eq!(row(r, n)["keep_reason"], "empty", "{n}");
                assert!(tensors_of(out)[n].2.is_empty());
            }
        }),
    scalars_and_1d_tensors => accept(
        |d| Setup::new(plain(&d.at("m.safetensors"), &[
            tn("scalar", "F32", &[], f32_bytes(&[2.5])),
            tn("bias", "F16", &[3], f16_bytes(&[1.0, -2.0, 3.0])),
            tn(NORM, "BF16", &[64], bf16_bytes(&ramp(64))),
            weight(T),
        ])),
        |r, _| {
            assert_eq!(row(r, "scalar")["keep_reason"], "scalar");
            assert_eq!(row(r, "bias")["keep_reason"], "1-D");
            assert_eq!(row(r, NORM)["keep_reason"], "1-D");
        }),
    /// K = 100 with groups of 64: the last group of each row has 36 elements.
    row_length_not_a_multiple_of_the_group => accept(
        |d| Setup::new(plain(&d.at("m.safetensors"), &[tn(T, "F32", &[3, 100], f32_bytes(&ramp(300)))])),
        |r, out| {
            assert_eq!(row(r, T)["group_size"], 64);
            assert_eq!(tensors_of(out)[&format!("{T}.scales")].1, [3, 2]);
        }),
    /// Odd K at 4 bits: the last high nibble of each row is padding.
    odd_row_length_at_4_bits => accept(
        |d| Setup::new(plain(&d.at("m.safetensors"), &[tn(T, "BF16", &[5, 33], bf16_bytes(&ramp(165)))]))
            .arg("--scheme").arg("int4").arg("--group-size").arg("32"),
        |_, out| assert_eq!(tensors_of(out)[&format!("{T}.qweight")].1, [5, 17])),
    /// A 1-element row and a 3-D tensor.
    row_of_one_and_3d_tensor => accept(
        |d| Setup::new(plain(&d.at("m.safetensors"), &[
            tn("narrow", "F32", &[4, 1], f32_bytes(&[0.5, -1.0, 2.0, 0.0])),
            tn("experts", "F16", &[2, 3, 8], f16_bytes(&ramp(48))),
        ])).arg("--scheme").arg("int8-asym").arg("--group-size").arg("row"),
        |r, _| {
            assert_eq!(row(r, "narrow")["action"], "int8-asym");
            assert_eq!(row(r, "experts")["action"], "int8-asym");
        }),
    /// F16 scales cannot hold 1e6 / 15: the tensor gets F32 scales, with a warning.
    values_beyond_f16_scales => accept(
        |d| {
            let v: Vec<f32> = ramp(128).iter().map(|x| x * 1.0e6).collect();
            Setup::new(plain(&d.at("m.safetensors"), &[tn(T, "F32", &[2, 64], f32_bytes(&v))]))
        },
        |r, _| {
            assert_eq!(row(r, T)["scale_dtype"], "F32");
            assert!(!r["warnings"].as_array().unwrap().is_empty(), "a warning: {r}");
        }),
    non_float_dtypes_are_kept => accept(
        |d| Setup::new(plain(&d.at("m.safetensors"), &[
            tn("ids", "I64", &[2, 2], vec![1; 32]),
            tn("mask", "BOOL", &[4, 4], vec![1; 16]),
            tn("fp8", "F8_E4M3", &[2, 8], vec![0x38; 16]),
            tn("fp4", "F4", &[2, 2], vec![0x21, 0x43]),
            tn("f64", "F64", &[2, 2], vec![0; 32]),
            weight(T),
        ])),
        |r, out| {
            let t = tensors_of(out);
            for n in ["ids", "mask", "fp8", "fp4", "f64"] {
                assert_eq!(row(r, n)["keep_reason"], "not float", "{n}");
            }
            assert_eq!(t["fp4"].2, [0x21, 0x43]);
        }),
    /// An empty header: a checkpoint with no tensor at all.
    no_tensors_at_all => accept(
        |d| Setup::new(raw(&d.at("m.safetensors"), b"{}", b"")),
        |r, out| {
            assert_eq!(r["totals"]["tensors"], 0);
            assert!(tensors_of(out).is_empty());
        }),
    /// Two identical entries under one name: JSON keeps one; one tensor.
    duplicate_identical_tensor_entries => accept(
        |d| {
            let e = format!(r#""{T}": {{"dtype": "F32", "shape": [2, 64], "data_offsets": [0, 512]}}"#);
            Setup::new(raw(&d.at("m.safetensors"), format!("{{{e}, {e}}}").as_bytes(), &weight(T).data))
        },
        |r, _| assert_eq!(r["totals"]["tensors"], 1)),
    /// The empty string is a valid tensor name; its pieces are `.qweight`, `.scales`, `.mins`.
    empty_tensor_name => accept(
        |d| Setup::new(plain(&d.at("m.safetensors"), &[weight("")])),
        |r, out| {
            assert_eq!(row(r, "")["action"], "int4-asym");
            assert!(tensors_of(out).contains_key(".qweight"));
        }),
    unknown_fields_in_a_tensor_entry => accept(
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| {
            h[T]["comment"] = json!({"nested": [1, 2, {"x": null}]});
        })),
        |r, _| assert_eq!(row(r, T)["action"], "int4-asym")),
    metadata_with_unusual_strings_is_kept => accept(
        |d| Setup::new(edited(&d.at("m.safetensors"), &[weight(T)], |h| {
            h["__metadata__"] = json!({"format": "pt", "": "empty key", "ünï": "cödé \u{1F600}", "nl": "a\nb\u{0}"});
        })),
        |_, out| {
            let bytes = std::fs::read(out).unwrap();
            let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
            let m = m.metadata().clone().unwrap();
            assert_eq!(m["ünï"], "cödé \u{1F600}");
            assert_eq!(m["nl"], "a\nb\u{0}");
            assert_eq!(m[""], "empty key");
        }),
    /// A hard link to the input as output: replaced by rename, the input's bytes stay.
    output_hard_linked_to_the_input_with_force => accept(
        |d| {
            let input = plain(&d.at("m.safetensors"), &[weight(T)]);
            let link = d.out.join("link.safetensors");
            std::fs::hard_link(&input, &link).unwrap();
            Setup::new(input).output(link).arg("--force")
        },
        |r, _| assert_eq!(row(r, T)["action"], "int4-asym")),
    /// A sharded checkpoint whose index has extra keys and no metadata.
    index_without_metadata_and_with_extra_keys => accept(
        |d| {
            let dir = two_shards(&d.at("ck"));
            index(&dir, &json!({"weight_map": {Q: "a.safetensors", K: "b.safetensors"}, "note": [1, 2]}));
            Setup::new(dir)
        },
        |r, out| {
            assert_eq!(r["totals"]["tensors"], 2);
            assert!(out.join(INDEX).is_file());
        }),
}
