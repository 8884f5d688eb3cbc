//! A progress line on stderr for the tools' long walks (diff, check, export): a spinner
//! with the number of entries read, redrawn at most a few times a second. Drawn only when
//! stderr is a terminal (indicatif hides it otherwise), and cleared when the walk ends, so
//! nothing of it is left in a log or between the lines of the output.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress(ProgressBar);

impl Progress {
    pub fn new(what: &'static str) -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {prefix}: {human_pos} entries ({elapsed})")
        {
            bar.set_style(style);
        }
        bar.set_prefix(what);
        Progress(bar)
    }

    /// One more entry read.
    pub fn tick(&self) {
        self.0.inc(1);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
