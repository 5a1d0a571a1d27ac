//! `--profile`: `perf record -e cpu-clock` on one process while a row runs (this VM has
//! no hardware counters), then the top of `perf report` as text beside the results.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Profiler {
    child: Child,
    data: PathBuf,
    report: PathBuf,
}

/// Starts recording `pid` for `seconds`; `None` (with a warning) when perf is missing.
pub fn start(dir: &Path, row: &str, pid: u32, seconds: u64) -> Option<Profiler> {
    std::fs::create_dir_all(dir).ok()?;
    let stem: String = row
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let data = dir.join(format!("{stem}.perf.data"));
    let report = dir.join(format!("{stem}.txt"));
    let child = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "999", "-g", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .args(["--", "sleep", &seconds.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("perf record not available: {e}"))
        .ok()?;
    Some(Profiler {
        child,
        data,
        report,
    })
}

impl Profiler {
    /// Waits for the recording, writes the flat profile (self time by thread, then the
    /// top 60 functions) and drops the raw data.
    pub fn finish(mut self) {
        let _ = self.child.wait();
        // By thread first (which of the proxy's threads spends it), then by function.
        let mut text = String::new();
        for (sort, lines) in [("comm", 12), ("dso,symbol", 60)] {
            let out = Command::new("perf")
                .args(["report", "--stdio", "--no-children", "--sort", sort, "-i"])
                .arg(&self.data)
                .args(["--percent-limit", "0.5", "-g", "none"])
                .output();
            if let Ok(out) = out {
                text.push_str(&format!("## by {sort}\n"));
                for line in String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .take(lines)
                {
                    text.push_str(line.trim_end());
                    text.push('\n');
                }
            }
        }
        let _ = std::fs::write(&self.report, text);
        let _ = std::fs::remove_file(&self.data);
    }
}
