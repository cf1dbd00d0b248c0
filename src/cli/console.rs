//! The terminal a running `serve` shares between its event lines, its log
//! and the `--accept ask` prompt.
//!
//! Every line goes through [`out`] or [`err`] (the tracing subscriber writes
//! through [`LogWriter`]). While a prompt is open ([`prompt`]) the lines are
//! held, not printed, and come out after the answer, so nothing cuts into
//! the question or the user's typing. What is held is bounded: past
//! [`HELD_LINES`] lines, only a count of the dropped ones is kept, so a
//! stream of hostile connections cannot grow memory while nobody answers.

use std::io::Write;
use std::sync::Mutex;

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

fn write(stream: Stream, line: &str) {
    let line = line.strip_suffix('\n').unwrap_or(line);
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

/// Prints a line through `direct` (a progress bar's `println`, which draws
/// the line above the bar), or holds it for standard output while a prompt
/// is open.
pub fn out_via(line: &str, direct: impl FnOnce(&str)) {
    emit(Stream::Out, line, direct);
}

/// Prints a line on standard error, or holds it while a prompt is open.
pub fn err(line: &str) {
    emit(Stream::Err, line, |l| write(Stream::Err, l));
}

/// Runs `ask` (which writes the question and reads the answer itself) with
/// every other line held; prints the held lines once it returns.
pub fn prompt<R>(ask: impl FnOnce() -> R) -> R {
    state().prompting = true;
    // Reopens the terminal even if `ask` panics.
    struct Reopen;
    impl Drop for Reopen {
        fn drop(&mut self) {
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
