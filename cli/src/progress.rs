//! indicatif progress bars for long work (hidden when stderr is not a terminal or with --json).

use indicatif::{ProgressBar, ProgressStyle};

pub struct Bars {
    bar: Option<ProgressBar>,
    enabled: bool,
}

impl Bars {
    pub fn new(enabled: bool) -> Bars {
        Bars { bar: None, enabled }
    }
}

impl flamingo_export::Progress for Bars {
    fn stage(&mut self, name: &str, total_bytes: u64) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
        if !self.enabled {
            return;
        }
        let b = ProgressBar::new(total_bytes);
        b.set_style(
            ProgressStyle::with_template(
                "{prefix:>16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_prefix(name.to_string());
        self.bar = Some(b);
    }
    fn advance(&mut self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

/// A bar counting requests (calibration passes), hidden unless `show`.
pub fn request_bar(show: bool, total: usize, prefix: &str) -> ProgressBar {
    let bar = if show {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos}/{len} requests {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}

/// Calibration requests from `data` (the `generate --batch` format), at most
/// `samples`, generating `max_new_tokens` each; refuses an existing `out`
/// without `force` before any work, and an empty file.
pub fn calibration_requests(
    input: &std::path::Path,
    out: &std::path::Path,
    force: bool,
    data: &std::path::Path,
    samples: Option<usize>,
    max_new_tokens: usize,
) -> anyhow::Result<Vec<flamingo_runtime::Request>> {
    // refused before any work
    flamingo_export::output::check_replaceable(out, force, &[input, data])?;
    let defaults = flamingo_runtime::GenerateOptions {
        max_new_tokens,
        ..Default::default()
    };
    let reqs = crate::generate::read_requests(data, &defaults, samples)?;
    if reqs.is_empty() {
        anyhow::bail!("{}: no calibration requests", data.display());
    }
    Ok(reqs)
}
