//! Progress of long work, the same way in every stage: a live bar when stderr is a terminal,
//! and a plain line a minute when it is a log file or a pipe (where a bar would be noise).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{HumanCount, ProgressBar, ProgressStyle};

/// How a long run shows its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A live progress bar (stderr is a terminal).
    Bar,
    /// A plain line every minute (stderr is a log file or a pipe).
    Lines,
    /// Nothing.
    Off,
}

impl Progress {
    /// A bar on a terminal, lines otherwise.
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Progress::Bar
        } else {
            Progress::Lines
        }
    }
}

/// A counter of work done out of a total, shown as `Progress` says.
pub struct Meter {
    bar: ProgressBar,
    mode: Progress,
    /// What is counted, in the log lines ("images", "steps").
    unit: &'static str,
    prefix: String,
    total: u64,
    position: u64,
    /// Where this stretch of work started (earlier work, e.g. before a resume, is not timed).
    start_position: u64,
    started: Instant,
    last_line: Instant,
    message: String,
}

impl Meter {
    /// How often a log line is written in `Progress::Lines` mode.
    pub const LINE_EVERY: Duration = Duration::from_secs(60);

    /// A meter of `total` `unit`s, `done` of them already done, labelled `prefix`.
    pub fn new(mode: Progress, prefix: &str, unit: &'static str, total: u64, done: u64) -> Self {
        let bar = match mode {
            Progress::Bar => {
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template(&format!(
                        "{{prefix}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} \
                         {{msg}} ETA {{eta}}"
                    ))
                    .expect("valid template"),
                );
                bar.set_prefix(prefix.to_string());
                bar.set_position(done);
                bar.reset_eta();
                bar
            }
            Progress::Lines | Progress::Off => ProgressBar::hidden(),
        };
        Self {
            bar,
            mode,
            unit,
            prefix: prefix.to_string(),
            total,
            position: done,
            start_position: done,
            started: Instant::now(),
            last_line: Instant::now(),
            message: String::new(),
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.set_position(self.position + n);
    }

    pub fn set_position(&mut self, position: u64) {
        self.position = position;
        self.bar.set_position(position);
        if self.mode == Progress::Lines && self.last_line.elapsed() >= Self::LINE_EVERY {
            self.last_line = Instant::now();
            eprintln!("{}", self.line());
        }
    }

    /// Extra text shown after the count (e.g. the smoothed loss).
    pub fn set_message(&mut self, message: String) {
        self.bar.set_message(message.clone());
        self.message = message;
    }

    /// Units per second since this stretch of work started.
    pub fn rate(&self) -> f64 {
        (self.position - self.start_position) as f64
            / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// The log line: `prefix: 1,200/5,000 images (24.0%), 310 images/s, about 12 min left`.
    fn line(&self) -> String {
        self.line_at(self.rate())
    }

    fn line_at(&self, rate: f64) -> String {
        let left = self.total.saturating_sub(self.position) as f64 / rate.max(1e-9);
        // Slow work (a debug build, a huge image) still shows a rate other than "0".
        let digits = if rate < 10.0 { 1 } else { 0 };
        let mut line = format!(
            "{}: {}/{} {} ({:.1}%), {rate:.digits$} {}/s, about {:.0} min left",
            self.prefix,
            HumanCount(self.position),
            HumanCount(self.total),
            self.unit,
            100.0 * self.position as f64 / self.total.max(1) as f64,
            self.unit,
            left / 60.0,
        );
        if !self.message.is_empty() {
            line.push_str(", ");
            line.push_str(&self.message);
        }
        line
    }

    /// Prints a line above the bar (or into the log), unless progress is off.
    pub fn println(&self, line: &str) {
        match self.mode {
            Progress::Bar => self.bar.println(line),
            Progress::Lines => eprintln!("{line}"),
            Progress::Off => {}
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_says_where_the_work_stands() {
        let mut meter = Meter::new(Progress::Off, "train", "images", 5_000, 200);
        meter.set_position(1_200);
        meter.set_message("loss 2.1".into());
        let line = meter.line();
        assert!(
            line.starts_with("train: 1,200/5,000 images (24.0%), "),
            "{line}"
        );
        assert!(
            line.contains("images/s") && line.ends_with("min left, loss 2.1"),
            "{line}"
        );
    }

    #[test]
    fn a_slow_rate_is_not_printed_as_zero() {
        let meter = Meter::new(Progress::Off, "evaluating", "images", 200, 0);
        let line = meter.line_at(0.2);
        assert!(line.contains(", 0.2 images/s, "), "{line}");
        let line = meter.line_at(310.4);
        assert!(line.contains(", 310 images/s, "), "{line}");
    }
}
