//! The `quantize` operation: checkpoint → plan → engine → packed files → report.

use std::path::Path;
use std::time::Instant;

use crate::allocate::{bpw_budget, choose, measure_all, Allocation, Budget};
use crate::checkpoint::{Checkpoint, ReadMode};
use crate::engine::{self, Nonfinite, RunOutcome};
use crate::plan::{weight_map, Plan, Rules};
use crate::report::{self, Measured, Report};
use crate::writer::{
    free_space, parent_dir, resolve_outputs, write_index, write_small_file, CreatedDir, PendingFile,
};
use crate::{progress_bar, thread_count, with_threads, Result};
use shrinkray_kernels::{selected_isa, Isa};

/// Options of a quantize run.
#[derive(Clone, Debug, Default)]
pub struct QuantizeOptions {
    /// What happens to each tensor.
    pub rules: Rules,
    /// Worker threads (all cores when `None`).
    pub threads: Option<usize>,
    /// What to do with NaN/Inf.
    pub nonfinite: Nonfinite,
    /// Replace existing output files.
    pub force: bool,
    /// Show a progress bar (when stderr is a terminal).
    pub progress: bool,
    /// How input data is read (`--no-mmap`: plain reads).
    pub read_mode: ReadMode,
    /// `--target-bpw`/`--target-size`: choose each tensor's format for this budget ([`crate::allocate`]).
    pub budget: Option<Budget>,
    /// `--no-fsync`: do not flush the outputs to disk (faster; not crash-durable).
    pub no_fsync: bool,
}

/// The rules of a run: `opts.rules`, with the formats a budget
/// (`--target-bpw`, `--target-size`) chose, measured on samples of the tensors.
fn allocated_rules(
    ckpt: &Checkpoint,
    opts: &QuantizeOptions,
) -> Result<(Rules, Option<Allocation>)> {
    let mut rules = opts.rules.clone();
    let Some(budget) = opts.budget else {
        return Ok((rules, None));
    };
    let plan = Plan::build(ckpt, &rules)?;
    let isa = isa()?;
    let m = with_threads(opts.threads, || measure_all(ckpt, &plan, &rules, isa))??;
    let mut data_budget = match budget {
        Budget::Bpw(x) => bpw_budget(x, m.params)?,
        // The headers of the plan without a budget: the allocated plan's differ by a
        // few bytes (other dtypes and names), corrected below.
        Budget::Size(s) => s.saturating_sub(plan.header_bytes()),
    };
    // At most a few rounds: each lowers the data budget by what the headers overshot.
    for _ in 0..4 {
        let alloc = choose(&m, budget, data_budget)?;
        rules.assigned = alloc.assigned();
        let Budget::Size(size) = budget else {
            return Ok((rules, Some(alloc)));
        };
        let total = Plan::build(ckpt, &rules)?.predicted_bytes();
        if total <= size {
            return Ok((rules, Some(alloc)));
        }
        data_budget = data_budget.saturating_sub(total - size);
    }
    Err(crate::Error::Other(
        "--target-size: no allocation fits once headers are counted".into(),
    ))
}

/// The kernels to use: `SHRINKRAY_ISA` when set, else the fastest this CPU runs.
pub fn isa() -> Result<Isa> {
    selected_isa().map_err(crate::Error::Other)
}

/// Plans `input` and reports the predicted output, writing nothing.
///
/// When `output` is given, it is checked as a real run would check it.
pub fn dry_run(input: &Path, output: Option<&Path>, opts: &QuantizeOptions) -> Result<Report> {
    let ckpt = Checkpoint::open_with(input, opts.read_mode)?;
    let (rules, allocation) = allocated_rules(&ckpt, opts)?;
    let plan = Plan::build(&ckpt, &rules)?;
    let names = shard_names(&plan);
    let mut warnings = Vec::new();
    if let Some(out) = output {
        let paths = resolve_outputs(&ckpt, &names, out, opts.force, true, plan.is_gguf())?;
        let dir = paths.files.first().map(|f| parent_dir(f));
        let dir = match dir {
            Some(d) if d.is_dir() => d,
            _ => parent_dir(out), // a sharded output directory not made yet
        };
        let need = plan.predicted_bytes();
        if let Some(free) = free_space(&dir).filter(|&f| f < need) {
            warnings.push(format!(
                "{}: {} free, below the {} this output needs",
                dir.display(),
                crate::units::bytes(free),
                crate::units::bytes(need)
            ));
        }
    }
    let mut report = report::build(
        &input.display().to_string(),
        ckpt.file_bytes(),
        &plan,
        &names,
        None,
        isa()?.name(),
        thread_count(opts.threads),
    );
    report.warnings.extend(warnings);
    report.allocation = allocation;
    Ok(report)
}

/// Quantizes `input` into `output` and returns the report.
pub fn quantize(input: &Path, output: &Path, opts: &QuantizeOptions) -> Result<Report> {
    let start = Instant::now();
    let isa = isa()?;
    let ckpt = Checkpoint::open_with(input, opts.read_mode)?;
    let (mut rules, allocation) = allocated_rules(&ckpt, opts)?;
    let mut widened = Vec::new();
    let mut created = CreatedDir::default();
    // At most two passes: the second only when the first found tensors whose
    // scales do not fit the scale dtype (their F32 scales move every offset).
    let (plan, names, paths, files, outcomes, config, mut phases) = loop {
        let plan = Plan::build(&ckpt, &rules)?;
        let names = shard_names(&plan);
        let paths = resolve_outputs(&ckpt, &names, output, opts.force, false, plan.is_gguf())?;
        if !created.is_set() {
            created = CreatedDir::new(paths.created.clone());
        }
        let config = mlx_config(&ckpt, &plan, &paths.files[0], opts.force)?;
        let files = plan
            .shards
            .iter()
            .zip(&paths.files)
            .map(|(s, p)| PendingFile::create_with(p, s.layout.total, !opts.no_fsync))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let total: u64 = plan.tensors().map(|t| t.entry.nbytes() as u64).sum();
        let label = if widened.is_empty() {
            "quantize"
        } else {
            "again, F32 scales"
        };
        let pb = progress_bar(total, opts.progress, label);
        let run = with_threads(opts.threads, || {
            engine::run(&ckpt, &plan, &files, isa, opts.nonfinite, &pb)
        })??;
        pb.finish_and_clear();
        match run {
            RunOutcome::Done(outcomes, phases) => {
                break (plan, names, paths, files, outcomes, config, phases)
            }
            RunOutcome::WidenScales(w) => {
                drop(files); // removes the incomplete temporaries
                rules.wide_scales.extend(w.iter().map(|w| w.name.clone()));
                widened.extend(w);
            }
        }
    };

    crate::interrupt::check()?;
    let syncing = Instant::now();
    let mut written = Vec::new();
    for f in files {
        written.push(f.finish()?);
    }
    if let (Some(index_path), Some(index)) = (&paths.index, &ckpt.index) {
        // (absent for one output file)
        let data: u64 = plan
            .shards
            .iter()
            .map(|s| s.layout.total - s.layout.header.len() as u64)
            .sum();
        write_index(
            index_path,
            &index.metadata,
            &weight_map(&plan),
            data,
            !opts.no_fsync,
        )?;
    }
    if let Some((path, json)) = config {
        let text = serde_json::to_string_pretty(&json).expect("config serializes") + "\n";
        write_small_file(&path, text.as_bytes(), !opts.no_fsync)?;
    }
    let actual = written
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()
        .map_err(|e| crate::Error::Other(format!("cannot stat the written output: {e}")))?;
    phases.sync_s = syncing.elapsed().as_secs_f64();
    let elapsed = start.elapsed().as_secs_f64();
    phases.setup_s = (elapsed - phases.sync_s - phases.read_quantize_s - phases.write_s).max(0.0);
    let measured = Measured {
        phases,
        outcomes,
        outputs: written.iter().map(|p| p.display().to_string()).collect(),
        actual_bytes: actual,
        elapsed_s: elapsed,
    };
    let mut report = report::build(
        &input.display().to_string(),
        ckpt.file_bytes(),
        &plan,
        &names,
        Some(&measured),
        isa.name(),
        thread_count(opts.threads),
    );
    report.warnings.extend(widened.iter().map(|w| w.describe()));
    if opts.no_fsync {
        report.warnings.push(
            "--no-fsync: the output was not flushed to disk; a crash or power cut soon \
             after this run can lose it"
                .into(),
        );
    }
    report.allocation = allocation;
    created.keep();
    Ok(report)
}

/// For MLX output: the input's `config.json` with mlx_lm's `quantization` block
/// (and its copy `quantization_config`), to be written beside the output.
/// `None` when the input has no config.json, or when the output lands in the
/// input's own directory (shrinkray never writes over an input file).
fn mlx_config(
    ckpt: &Checkpoint,
    plan: &Plan,
    first_output: &Path,
    force: bool,
) -> Result<Option<(std::path::PathBuf, serde_json::Value)>> {
    if !plan.rules.mlx {
        return Ok(None);
    }
    let in_dir = ckpt.shards[0]
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let out_dir = parent_dir(first_output);
    let source = in_dir.join("config.json");
    let Ok(text) = std::fs::read(&source) else {
        return Ok(None);
    };
    let same = |a: &Path, b: &Path| a.canonicalize().ok() == b.canonicalize().ok();
    if same(&in_dir, &out_dir) {
        return Ok(None);
    }
    let mut config: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| crate::Error::Other(format!("{}: not valid JSON: {e}", source.display())))?;
    let target = out_dir.join("config.json");
    if target.exists() && !force {
        return Err(crate::Error::Other(format!(
            "{}: already exists (use --force to replace it)",
            target.display()
        )));
    }
    let (bits, group) = match (plan.rules.scheme, plan.rules.group) {
        (s, crate::plan::GroupSize::Fixed(g)) => (s.bits(), g),
        (s, _) => (s.bits(), 64),
    };
    let mut q = serde_json::json!({ "group_size": group, "bits": bits, "mode": "affine" });
    for t in plan.tensors() {
        if let crate::plan::Action::Mlx(m) = &t.action {
            if (m.bits, m.group) != (bits, group) {
                let layer = t
                    .entry
                    .name
                    .strip_suffix(".weight")
                    .unwrap_or(&t.entry.name);
                q[layer] =
                    serde_json::json!({ "group_size": m.group, "bits": m.bits, "mode": "affine" });
            }
        }
    }
    let Some(obj) = config.as_object_mut() else {
        return Err(crate::Error::Other(format!(
            "{}: not a JSON object",
            source.display()
        )));
    };
    obj.insert("quantization".into(), q.clone());
    obj.insert("quantization_config".into(), q);
    Ok(Some((target, config)))
}

fn shard_names(plan: &Plan) -> Vec<String> {
    plan.shards.iter().map(|s| s.file_name.clone()).collect()
}
