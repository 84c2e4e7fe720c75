//! Rego policies: load a directory, compile once, evaluate each call under a
//! time limit, and turn the result into a typed [`Decision`].
//!
//! The hot path runs the regorus virtual machine (compiled once per policy
//! set, one VM per worker thread); where the VM cannot compile a policy the
//! interpreter is used instead. Every failure — compile, runtime error,
//! timeout, undefined or malformed result — becomes a deny with code
//! `policy_error`, never an allow.

pub mod body;
pub mod cases;
pub mod decision;
pub mod engine;
pub mod input;
pub mod pool;

use std::cell::RefCell;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::RegoVM;
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{CompiledPolicy, Value};
use sha2::{Digest, Sha256};

pub use decision::{Action, Decision, Risk};
pub use engine::Engine;

/// Which evaluator a policy set uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluator {
    /// regorus virtual machine (fast path).
    Vm,
    /// regorus interpreter (fallback).
    Interpreter,
}

/// Source files of a policy set.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `(path, text)` of each Rego module.
    pub modules: Vec<(PathBuf, String)>,
    /// `(path, json)` of each data file; merged at the root of `data`.
    pub data: Vec<(PathBuf, serde_json::Value)>,
    /// Case tables (`*.cases.json`), not loaded into the engine.
    pub cases: Vec<PathBuf>,
}

impl Sources {
    /// Collect `*.rego` (except `*_test.rego` unless `with_tests`) and
    /// `*.json` under `dir`, in a stable order.
    pub fn read_dir(dir: &Path, with_tests: bool) -> anyhow::Result<Sources> {
        let mut files = Vec::new();
        walk(dir, &mut files)
            .with_context(|| format!("reading policy directory {}", dir.display()))?;
        files.sort();
        let mut s = Sources::default();
        for f in files {
            let name = f
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if name.ends_with(".cases.json") {
                s.cases.push(f);
            } else if name.ends_with(".rego") {
                if name.ends_with("_test.rego") && !with_tests {
                    continue;
                }
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                s.modules.push((f, text));
            } else if name.ends_with(".json") {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| anyhow!("{}:{}: invalid JSON: {e}", f.display(), e.line()))?;
                if !v.is_object() {
                    return Err(anyhow!(
                        "{}:1: a data file must hold a JSON object",
                        f.display()
                    ));
                }
                s.data.push((f, v));
            }
        }
        s.include(dir, with_tests)?;
        if s.modules.is_empty() {
            return Err(anyhow!("{}: no .rego files found", dir.display()));
        }
        Ok(s)
    }

    /// `include.toml` in a policy directory names other directories whose
    /// Rego modules (not their data, not their case tables) load with this
    /// one's: a pack builds on the shipped rules and supplies its own data.
    ///
    /// ```toml
    /// rego = ["../../../policies"]   # relative to this directory
    /// ```
    fn include(&mut self, dir: &Path, with_tests: bool) -> anyhow::Result<()> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Include {
            rego: Vec<String>,
        }
        let path = dir.join("include.toml");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let include: Include = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map_or(1, |r| text[..r.start].matches('\n').count() + 1);
            anyhow!("{}:{line}: {}", path.display(), e.message())
        })?;
        for (i, rel) in include.rego.iter().enumerate() {
            let other = dir.join(rel);
            let mut files = Vec::new();
            walk(&other, &mut files).with_context(|| {
                format!("{}: rego[{i}]: reading {}", path.display(), other.display())
            })?;
            files.sort();
            for f in files {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if !name.ends_with(".rego") || (name.ends_with("_test.rego") && !with_tests) {
                    continue;
                }
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                self.modules.push((f, text));
            }
        }
        Ok(())
    }

    /// SHA-256 over every file name and content: identifies the policy set.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for (p, text) in &self.modules {
            h.update(p.to_string_lossy().as_bytes());
            h.update([0]);
            h.update(text.as_bytes());
            h.update([0]);
        }
        for (p, v) in &self.data {
            h.update(p.to_string_lossy().as_bytes());
            h.update([0]);
            h.update(v.to_string().as_bytes());
            h.update([0]);
        }
        crate::digest::hex(&h.finalize())
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        if entry.file_type()?.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Give every policy set its own number so per-thread VMs know when to reload.
static GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static VM: RefCell<Option<(u64, RegoVM)>> = const { RefCell::new(None) };
}

/// A compiled, immutable policy set. Swapped whole, never edited.
pub struct PolicySet {
    generation: u64,
    hash: String,
    entrypoint: String,
    timer: ExecutionTimerConfig,
    engine: regorus::Engine,
    vm: Option<(Arc<Program>, CompiledPolicy, Value)>,
    sources: Sources,
    /// The policy defines `data.latch.tool_visible`.
    has_visibility: bool,
}

/// The rule that hides MCP tools from an agent's `tools/list`.
pub const TOOL_VISIBLE: &str = "data.latch.tool_visible";

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("hash", &self.hash)
            .field("entrypoint", &self.entrypoint)
            .field("evaluator", &self.evaluator())
            .finish()
    }
}

/// The outcome of one evaluation.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The decision (a `policy_error` deny when anything failed).
    pub decision: Decision,
    /// Evaluation wall time.
    pub elapsed: Duration,
    /// What went wrong, for logs (never sent to the agent).
    pub error: Option<String>,
}

impl PolicySet {
    /// Compile `sources`. Errors name the file and line.
    pub fn compile(
        sources: &Sources,
        entrypoint: &str,
        timeout: Duration,
    ) -> anyhow::Result<PolicySet> {
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(false);
        // A failing builtin is an error (and so a deny with a clear reason),
        // not a silently undefined value, on both evaluators alike.
        engine.set_strict_builtin_errors(true);
        for (path, text) in &sources.modules {
            engine
                .add_policy(path.display().to_string(), text.clone())
                .map_err(|e| anyhow!("{e}"))?;
        }
        for (path, data) in &sources.data {
            engine
                .add_data(Value::from(data.clone()))
                .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        }
        let timer = ExecutionTimerConfig {
            limit: timeout,
            check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
        };
        engine.set_execution_timer_config(timer);
        let rule: regorus::Rc<str> = entrypoint.into();
        let compiled = engine
            .compile_with_entrypoint(&rule)
            .map_err(|e| anyhow!("{e}"))?;
        // The VM is an optimisation: if it cannot take this policy, the
        // interpreter answers instead (and a test checks both agree).
        let vm = match Compiler::compile_from_policy(&compiled, &[entrypoint]) {
            Ok(program) => Some((program, compiled, engine.get_data())),
            Err(e) => {
                tracing::warn!(error = %e, "policy does not compile for the VM; using the interpreter");
                None
            }
        };
        let has_visibility = !matches!(
            engine.clone().eval_rule(TOOL_VISIBLE.into()),
            Err(e) if e.to_string().contains("not a valid rule path")
        );
        Ok(PolicySet {
            has_visibility,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            hash: sources.hash(),
            entrypoint: entrypoint.to_string(),
            timer,
            engine,
            vm,
            sources: sources.clone(),
        })
    }

    /// The same policies with `extra` merged into `data` (for case tables
    /// that bring their own data, such as a learned-classes fixture).
    /// Compiled from the sources anew: regorus does not re-plan an engine
    /// that has already been prepared when data is added afterwards.
    pub fn with_data(&self, extra: &serde_json::Value) -> anyhow::Result<PolicySet> {
        let mut sources = self.sources.clone();
        sources
            .data
            .push((PathBuf::from("<case data>"), extra.clone()));
        Self::compile(&sources, &self.entrypoint, self.timer.limit)
    }

    /// Read and compile the policy directory.
    pub fn load(dir: &Path, entrypoint: &str, timeout: Duration) -> anyhow::Result<PolicySet> {
        let sources = Sources::read_dir(dir, false)?;
        Self::compile(&sources, entrypoint, timeout)
    }

    /// SHA-256 of the sources.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The evaluation time limit.
    pub fn time_limit(&self) -> Duration {
        self.timer.limit
    }

    /// Which evaluator serves requests.
    pub fn evaluator(&self) -> Evaluator {
        if self.vm.is_some() {
            Evaluator::Vm
        } else {
            Evaluator::Interpreter
        }
    }

    /// Evaluate with the fast evaluator.
    pub fn evaluate(&self, input: Value) -> Evaluation {
        let start = Instant::now();
        let raw = match self.vm {
            // The VM reports a failing expression as "undefined"; on that
            // (already failing, so rare) path ask the interpreter, which names
            // the error, so logs and the agent learn what went wrong.
            Some(_) => match self.run_vm(input.clone()) {
                Ok(Value::Undefined) => self.run_interpreter(input),
                other => other,
            },
            None => self.run_interpreter(input),
        };
        finish(raw, start, self.timer.limit)
    }

    /// Whether the tool `input` describes may be offered to the agent
    /// (`data.latch.tool_visible`; visible when the policy does not define
    /// it or it is undefined for this input; hidden when it fails).
    pub fn tool_visible(&self, input: Value) -> bool {
        if !self.has_visibility {
            return true;
        }
        let mut engine = self.engine.clone();
        engine.set_input(input);
        match engine.eval_rule(TOOL_VISIBLE.into()) {
            Ok(Value::Bool(b)) => b,
            Ok(Value::Undefined) => true,
            Ok(other) => {
                tracing::warn!(value = %other, "{TOOL_VISIBLE} is not a boolean; hiding the tool");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "{TOOL_VISIBLE} failed; hiding the tool");
                false
            }
        }
    }

    /// Evaluate with the interpreter (reference semantics; used by tests and `policy eval`).
    pub fn evaluate_interpreted(&self, input: Value) -> Evaluation {
        let start = Instant::now();
        finish(self.run_interpreter(input), start, self.timer.limit)
    }

    fn run_interpreter(&self, input: Value) -> Result<Value, EvalError> {
        let mut engine = self.engine.clone();
        engine.set_input(input);
        engine.eval_rule(self.entrypoint.clone()).map_err(|e| {
            let timed_out = e.chain().any(|cause| {
                matches!(
                    cause.downcast_ref::<regorus::LimitError>(),
                    Some(regorus::LimitError::TimeLimitExceeded { .. })
                )
            });
            match timed_out {
                true => EvalError::TimedOut(e.to_string()),
                false => EvalError::Failed(e.to_string()),
            }
        })
    }

    fn run_vm(&self, input: Value) -> Result<Value, EvalError> {
        let Some((program, compiled, data)) = &self.vm else {
            return Err(EvalError::Failed("no VM program".into()));
        };
        VM.with(|cell| {
            let mut slot = cell.borrow_mut();
            let stale = !matches!(&*slot, Some((g, _)) if *g == self.generation);
            if stale {
                let mut vm = RegoVM::new_with_policy(compiled.clone());
                vm.load_program(program.clone());
                vm.set_data(data.clone()).map_err(EvalError::from)?;
                vm.set_execution_timer_config(Some(self.timer));
                vm.set_strict_builtin_errors(true);
                // The time limit bounds evaluation; the instruction cap is only
                // a backstop, so keep it well above any sane policy.
                vm.set_max_instructions(50_000_000);
                *slot = Some((self.generation, vm));
            }
            let Some((generation, vm)) = slot.as_mut() else {
                return Err(EvalError::Failed("VM unavailable".into()));
            };
            // Marked stale while it runs: should it panic (the evaluator
            // thread survives a panicking job), the next call builds a
            // fresh VM instead of reusing one left mid-run.
            let current = std::mem::replace(generation, u64::MAX);
            vm.set_input(input);
            let out = vm.execute().map_err(EvalError::from);
            *generation = current;
            out
        })
    }
}

/// Why an evaluation produced no value.
#[derive(Debug)]
enum EvalError {
    /// regorus stopped it at the time limit.
    TimedOut(String),
    /// Any other runtime error.
    Failed(String),
}

impl From<regorus::rvm::vm::VmError> for EvalError {
    fn from(e: regorus::rvm::vm::VmError) -> EvalError {
        match e {
            regorus::rvm::vm::VmError::TimeLimitExceeded { .. } => {
                EvalError::TimedOut(e.to_string())
            }
            other => EvalError::Failed(other.to_string()),
        }
    }
}

fn finish(raw: Result<Value, EvalError>, start: Instant, limit: Duration) -> Evaluation {
    let elapsed = start.elapsed();
    // (short reason for the agent, full detail for the log)
    let parsed: Result<Decision, (&str, String)> = match raw {
        // regorus checks its timer between instructions, so one slow builtin
        // can overrun it and still return: a late answer is never honoured.
        _ if elapsed > limit => Err((
            "evaluation timed out",
            format!(
                "finished after {} ms, past the {} ms limit",
                elapsed.as_millis(),
                limit.as_millis()
            ),
        )),
        Err(EvalError::TimedOut(e)) => Err(("evaluation timed out", e)),
        Err(EvalError::Failed(e)) => Err(("evaluation failed", e)),
        Ok(Value::Undefined) => Err(("no decision", "decision is undefined".to_string())),
        Ok(v) => Decision::parse(&v).map_err(|e| ("malformed decision", e)),
    };
    match parsed {
        Ok(decision) => Evaluation {
            decision,
            elapsed,
            error: None,
        },
        Err((short, detail)) => Evaluation {
            decision: Decision::policy_error(short),
            elapsed,
            error: Some(detail),
        },
    }
}

#[cfg(test)]
mod tests;
