//! Run directories: `runs/<recipe>/<UTC time>/` with the resolved `config.toml`,
//! `metrics.jsonl` (one JSON object per line), `summary.md`, `plots/` and `checkpoints/`.
//!
//! Everything here is append-only or written atomically (temp file, fsync, rename), so a run
//! killed at any moment leaves a directory that can be read and resumed.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::Error;

/// The name of the resolved configuration file in a run directory.
pub const CONFIG_FILE: &str = "config.toml";
/// The metrics file.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The summary file.
pub const SUMMARY_FILE: &str = "summary.md";

/// One run's directory and its metrics writer.
pub struct RunDir {
    root: PathBuf,
    metrics: File,
}

impl RunDir {
    /// Creates `<runs_root>/<recipe>/<UTC time>/` (with a `-N` suffix if that exists) and
    /// writes the resolved configuration.
    pub fn create(runs_root: &Path, recipe: &str, config_toml: &str) -> Result<Self, Error> {
        let parent = runs_root.join(recipe);
        fs::create_dir_all(&parent).map_err(|e| Error::io("create", &parent, e))?;
        let stamp = utc_timestamp(SystemTime::now());
        let mut root = parent.join(&stamp);
        let mut n = 1;
        loop {
            match fs::create_dir(&root) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    root = parent.join(format!("{stamp}-{n}"));
                    n += 1;
                }
                Err(e) => return Err(Error::io("create", &root, e)),
            }
        }
        for sub in ["plots", "checkpoints"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|e| Error::io("create", &p, e))?;
        }
        write_atomic(&root.join(CONFIG_FILE), config_toml.as_bytes())?;
        Self::open(root)
    }

    /// Opens an existing run directory (for `--resume`), appending to its metrics.
    pub fn open(root: PathBuf) -> Result<Self, Error> {
        let path = root.join(METRICS_FILE);
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        for sub in ["plots", "checkpoints"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|e| Error::io("create", &p, e))?;
        }
        Ok(Self { root, metrics })
    }

    /// The run directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Where plots go.
    pub fn plots_dir(&self) -> PathBuf {
        self.root.join("plots")
    }

    /// Where checkpoints go.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// Where the run's trained models go: `models/<name>/`, each a Hugging Face folder.
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    /// Writes a trained language model as `models/<name>/`: a Hugging Face folder, which
    /// `[policy] use = "checkpoint"` loads and `lmlab export` converts.
    pub fn save_model(
        &self,
        name: &str,
        model: &crate::lm::Llama,
        tokenizer: &crate::lm::Tokenizer,
    ) -> Result<PathBuf, Error> {
        let dir = self.models_dir().join(name);
        crate::lm::export::write_hf(model, tokenizer, &dir)?;
        Ok(dir)
    }

    /// Appends one record to `metrics.jsonl` and flushes it.
    pub fn log(&mut self, record: &serde_json::Value) -> Result<(), Error> {
        let mut line = serde_json::to_string(record).expect("JSON values always serialise");
        line.push('\n');
        let path = self.root.join(METRICS_FILE);
        self.metrics
            .write_all(line.as_bytes())
            .and_then(|_| self.metrics.flush())
            .map_err(|e| Error::io("write", path, e))
    }

    /// Keeps only the metrics records whose `"step"` is at most `step` (and records without a
    /// step): what a resumed run does so that the records after its checkpoint are written
    /// once, by the resumed run.
    pub fn truncate_metrics_after(&mut self, step: u64) -> Result<(), Error> {
        self.retain_metrics(|r| {
            r.get("step")
                .and_then(|s| s.as_u64())
                .is_none_or(|s| s <= step)
        })
    }

    /// Keeps only the metrics records for which `keep` is true (rewritten atomically): for a
    /// run that resumes several trainings, each from its own checkpoint.
    pub fn retain_metrics(
        &mut self,
        mut keep: impl FnMut(&serde_json::Value) -> bool,
    ) -> Result<(), Error> {
        let path = self.root.join(METRICS_FILE);
        let records = read_metrics(&path)?;
        let mut kept = String::new();
        for r in records {
            if keep(&r) {
                kept.push_str(&serde_json::to_string(&r).expect("JSON values serialise"));
                kept.push('\n');
            }
        }
        write_atomic(&path, kept.as_bytes())?;
        self.metrics = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        Ok(())
    }

    /// The `"result"` field of every `metrics.jsonl` record whose `"stage"` is `stage`, parsed:
    /// how a scheduler that logs one record per finished unit of work (a seed, a model) reads
    /// back, on `--resume`, the units it need not redo.
    pub fn logged_results<T: serde::de::DeserializeOwned>(
        &self,
        stage: &str,
    ) -> anyhow::Result<Vec<T>> {
        let path = self.root.join(METRICS_FILE);
        read_metrics(&path)?
            .into_iter()
            .filter(|r| r["stage"] == stage)
            .map(|r| {
                serde_json::from_value(r["result"].clone()).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: a `{stage}` record is not readable: {e}",
                        path.display()
                    )
                })
            })
            .collect()
    }

    /// Writes `summary.md` atomically.
    pub fn write_summary(&self, markdown: &str) -> Result<(), Error> {
        write_atomic(&self.root.join(SUMMARY_FILE), markdown.as_bytes())
    }
}

/// Reads every record of a `metrics.jsonl`; a torn last line (a kill mid-write) is skipped.
pub fn read_metrics(path: &Path) -> Result<Vec<serde_json::Value>, Error> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| Error::io("read", path, e))?;
        if let Ok(v) = serde_json::from_str(&line) {
            out.push(v);
        }
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename,
/// fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("write", path, e)
    })
}

/// `YYYY-MM-DDTHH-MM-SSZ` in UTC: sortable and safe in file names.
pub fn utc_timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}-{:02}-{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil conversion.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_677_246);
        assert_eq!(utc_timestamp(t), "2026-11-26T07-14-06Z");
        assert_eq!(
            utc_timestamp(SystemTime::UNIX_EPOCH),
            "1970-01-01T00-00-00Z"
        );
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_timestamp(leap), "2000-02-29T00-00-00Z");
    }

    #[test]
    fn metrics_survive_truncation_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = RunDir::create(dir.path(), "r", "seed = 1\n").unwrap();
        for step in 1..=5u64 {
            run.log(&serde_json::json!({ "step": step, "loss": step as f64 }))
                .unwrap();
        }
        run.truncate_metrics_after(3).unwrap();
        run.log(&serde_json::json!({ "step": 4, "loss": 0.5 }))
            .unwrap();
        let path = run.path().join(METRICS_FILE);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"step\": 5, \"lo")
            .unwrap();
        let steps: Vec<u64> = read_metrics(&path)
            .unwrap()
            .iter()
            .map(|r| r["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
        assert!(run.path().join(CONFIG_FILE).exists());
    }
}
