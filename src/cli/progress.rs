//! Progress bars on stderr (indicatif), hidden when stderr is not a
//! terminal or with `-q`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte-count bar with rate and ETA.
pub fn bytes(total: u64, quiet: bool, msg: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), target(quiet));
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:20!} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_owned());
    pb
}

/// A count bar (objects checked).
pub fn count(total: u64, quiet: bool, msg: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), target(quiet));
    pb.set_style(
        ProgressStyle::with_template("{msg:20!} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_owned());
    pb
}

/// Where a bar draws: standard error when it is a terminal, else nowhere.
pub fn target(quiet: bool) -> ProgressDrawTarget {
    if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    }
}
