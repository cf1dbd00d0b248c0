//! The terminal a running `serve` shares between its event lines, its log,
//! its transfers' progress bars and the `--accept ask` prompt.
//!
//! Every line goes through [`out`] or [`err`] (the tracing subscriber writes
//! through [`LogWriter`]); every bar is one of [`track`]'s. While a prompt is
//! open ([`prompt`]) the lines are held, not printed, and come out after the
//! answer, and the bars are cleared and drawn nowhere until then, so
//! nothing cuts into the question or the user's typing. What is held is bounded: past
//! [`HELD_LINES`] lines, only a count of the dropped ones is kept, so a
//! stream of hostile connections cannot grow memory while nobody answers.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};

use super::progress;

/// Lines kept while a prompt is open; later ones are counted, not kept.
pub const HELD_LINES: usize = 1000;

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

struct State {
    prompting: bool,
    held: Vec<(Stream, String)>,
    dropped: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    prompting: false,
    held: Vec::new(),
    dropped: 0,
});

fn state() -> std::sync::MutexGuard<'static, State> {
    // A panic while printing leaves nothing half-done worth refusing over.
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The bars of this process's transfers, drawn together on standard error
/// (when it is a terminal) so that lines print above them, not through them.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| MultiProgress::with_draw_target(progress::target(false)))
}

/// Draws `bar` with the console's other bars (hidden with them while a
/// prompt is open). A quiet bar, or any bar when standard error is not a
/// terminal (a daemon's log), stays on its own hidden target: a hidden
/// `MultiProgress` never reaps finished bars, and serve runs for months.
pub fn track(bar: ProgressBar, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        bar
    } else {
        bars().add(bar)
    }
}

fn write(stream: Stream, line: &str) {
    let line = line.strip_suffix('\n').unwrap_or(line);
    match BARS.get() {
        Some(b) => b.suspend(|| write_now(stream, line)),
        None => write_now(stream, line),
    }
}

fn write_now(stream: Stream, line: &str) {
    match stream {
        Stream::Out => {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        }
        Stream::Err => {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }
}

fn emit(stream: Stream, line: &str, direct: impl FnOnce(&str)) {
    let mut s = state();
    if s.prompting {
        if s.held.len() < HELD_LINES {
            s.held.push((stream, line.to_owned()));
        } else {
            s.dropped += 1;
        }
        return;
    }
    // Printed under the lock: a prompt cannot open halfway through a line.
    direct(line);
}

/// Prints a line on standard output, or holds it while a prompt is open.
pub fn out(line: &str) {
    emit(Stream::Out, line, |l| write(Stream::Out, l));
}

/// Prints a line on standard error, or holds it while a prompt is open.
pub fn err(line: &str) {
    emit(Stream::Err, line, |l| write(Stream::Err, l));
}

/// Runs `ask` (which writes the question and reads the answer itself) with
/// every other line held; prints the held lines once it returns.
pub fn prompt<R>(ask: impl FnOnce() -> R) -> R {
    state().prompting = true;
    // Under the same order as lines: held first, then the bars wiped and
    // pointed nowhere; they keep counting and draw again after.
    if let Some(b) = BARS.get() {
        let _ = b.clear();
        b.set_draw_target(ProgressDrawTarget::hidden());
    }
    // Reopens the terminal even if `ask` panics.
    struct Reopen;
    impl Drop for Reopen {
        fn drop(&mut self) {
            if let Some(b) = BARS.get() {
                b.set_draw_target(progress::target(false));
            }
            let mut s = state();
            s.prompting = false;
            for (stream, line) in std::mem::take(&mut s.held) {
                write(stream, &line);
            }
            if s.dropped > 0 {
                write(
                    Stream::Err,
                    &format!(
                        "p2pfs: {} more line(s) came while the prompt was open and were dropped",
                        std::mem::take(&mut s.dropped)
                    ),
                );
            }
        }
    }
    let _reopen = Reopen;
    ask()
}

/// `println!` through the console.
macro_rules! outln {
    ($($t:tt)*) => { $crate::cli::console::out(&format!($($t)*)) };
}
/// `eprintln!` through the console.
macro_rules! errln {
    ($($t:tt)*) => { $crate::cli::console::err(&format!($($t)*)) };
}
pub(crate) use errln;
pub(crate) use outln;

/// The tracing subscriber's writer: one event, one buffer, one console line.
pub struct LogWriter;

/// One log event being formatted.
pub struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            err(&String::from_utf8_lossy(&self.0));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_wait_for_the_prompt_and_are_bounded() {
        prompt(|| {
            for i in 0..HELD_LINES + 5 {
                out(&format!("line {i}"));
            }
            let s = state();
            assert_eq!(s.held.len(), HELD_LINES);
            assert_eq!(s.dropped, 5);
        });
        let s = state();
        assert!(!s.prompting);
        assert!(s.held.is_empty());
        assert_eq!(s.dropped, 0);
    }
}
