//! The hand-off from request tasks to the log's writer thread.
//!
//! Request tasks append whole formatted lines to one shared buffer; a single thread takes the
//! buffer in batches, redacts every line (but those [`LineSink::write_checked`] cleared) and
//! writes each batch with one `write(2)`. A task
//! wakes the writer only when it finds the buffer empty, and the writer then waits
//! [`BATCH_DELAY`] before taking the batch, so under load there is about one wake-up and one
//! write per batch instead of one of each per line. (The channel-per-line hand-off this
//! replaced cost about a quarter of the gateway's CPU on the benchmark: see
//! `bench/RESULTS.md`.) An idle gateway does not wake the writer at all.
//!
//! The buffer is bounded: past [`MAX_PENDING`] bytes new lines are dropped and counted, and
//! the count is reported in the log once the writer catches up, so a log that cannot keep up
//! slows nothing and hides nothing.

use crate::Redactor;
use std::{
    io::{self, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

/// How long the writer lets lines accumulate after the first one of a batch arrives: the
/// longest a line waits before it is written.
pub(crate) const BATCH_DELAY: Duration = Duration::from_millis(10);
/// Most bytes waiting for the writer; lines beyond it are dropped (and counted).
pub(crate) const MAX_PENDING: usize = 32 * 1024 * 1024;

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// Where the lines queued by [`LineSink::write_checked`] start in `buf`, ascending: the
    /// writer copies those lines without scanning them.
    cleared: Vec<usize>,
    /// Whether anything but a cleared line was queued since the writer last took the buffer.
    uncleared: bool,
    dropped: u64,
    closed: bool,
    /// Set by the writer thread when it has written its last batch.
    finished: bool,
}

/// How long dropping the guard waits for the last batch: a stdout nobody reads must not
/// turn a shutdown into a hang (tracing-appender's guard waited one second too).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    limits: Limits,
    redactor: Redactor,
}

/// The writer's bounds: [`MAX_PENDING`] and [`SHUTDOWN_WAIT`] in the gateway; tests choose
/// their own so that they depend neither on filling 32 MiB nor on a debug build's speed.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub max_pending: usize,
    pub shutdown_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pending: MAX_PENDING,
            shutdown_wait: SHUTDOWN_WAIT,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves a buffer of whole lines: still usable.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The side request tasks write to; cheap to clone. Each `write` call must carry whole lines
/// (tracing's formatters write each event, newline included, in one call).
#[derive(Clone)]
pub(crate) struct LineSink {
    shared: Arc<Shared>,
}

impl LineSink {
    /// Queues whole lines (ending in a newline) for the writer thread.
    pub(crate) fn write_line(&self, line: &[u8]) {
        self.queue(line, false);
    }

    /// Queues one whole line whose every value that is not fixed text of the caller's is in
    /// `values`. When the redactor [clears](Redactor::clears) those values, the writer copies
    /// the line without scanning it: the scan of a whole access line was ~2,300 instructions
    /// per request on the writer thread, the check of its few values a fraction of that
    /// (bench/RESULTS.md). Otherwise the line is redacted like any other. A line checked
    /// before a reload changes the redaction lists is written under the lists it was checked
    /// with.
    pub(crate) fn write_checked(&self, line: &[u8], values: &[&str]) {
        let cleared = self.shared.redactor.clears(values);
        self.queue(line, cleared);
    }

    fn queue(&self, line: &[u8], cleared: bool) {
        let mut p = self.shared.lock();
        if p.closed {
            // Logging has shut down; nothing will drain the buffer any more.
            return;
        }
        if p.buf.len() + line.len() > self.shared.limits.max_pending {
            p.dropped += 1;
            return;
        }
        let was_empty = p.buf.is_empty();
        if cleared {
            let at = p.buf.len();
            p.cleared.push(at);
        } else {
            p.uncleared = true;
        }
        p.buf.extend_from_slice(line);
        drop(p);
        if was_empty {
            // All waiters: the writer, and a guard waiting for the last batch at shutdown.
            self.shared.wake.notify_all();
        }
    }
}

impl Write for LineSink {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.write_line(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LineSink {
    type Writer = LineSink;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Owns the writer thread. Dropping it writes everything still pending, then stops the thread.
pub(crate) struct WriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl WriterGuard {
    /// A handle that can write out what is pending from elsewhere (a task that is about to
    /// end the process, where this guard would never be dropped).
    pub(crate) fn closer(&self) -> LogCloser {
        LogCloser {
            shared: self.shared.clone(),
        }
    }
}

/// Writes out every pending line and stops taking new ones; see [`WriterGuard::closer`].
#[derive(Clone)]
pub struct LogCloser {
    shared: Arc<Shared>,
}

impl LogCloser {
    /// Closes the writer and waits (at most the shutdown bound) for its last batch. Lines
    /// logged after this are dropped. True when the last batch was written.
    pub fn close(&self) -> bool {
        close(&self.shared)
    }
}

fn close(shared: &Shared) -> bool {
    let mut p = shared.lock();
    p.closed = true;
    // The writer and this thread share the condition variable: wake everyone.
    shared.wake.notify_all();
    let (p, timeout) = shared
        .wake
        .wait_timeout_while(p, shared.limits.shutdown_wait, |p| !p.finished)
        .unwrap_or_else(PoisonError::into_inner);
    p.finished && !timeout.timed_out()
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        if let (true, Some(t)) = (close(&self.shared), self.thread.take()) {
            let _ = t.join();
        }
        // Otherwise the thread is left to finish (or block) on its own.
    }
}

/// Starts the writer thread: lines written to the returned sink reach `out` redacted.
pub(crate) fn spawn(
    out: Box<dyn Write + Send>,
    redactor: Redactor,
) -> io::Result<(LineSink, WriterGuard)> {
    spawn_with(out, redactor, Limits::default())
}

/// [`spawn`] with other bounds.
pub(crate) fn spawn_with(
    out: Box<dyn Write + Send>,
    redactor: Redactor,
    limits: Limits,
) -> io::Result<(LineSink, WriterGuard)> {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending::default()),
        wake: Condvar::new(),
        limits,
        redactor,
    });
    let worker = shared.clone();
    let thread = std::thread::Builder::new()
        .name("portcullis-log".into())
        .spawn(move || write_batches(&worker, out))?;
    Ok((
        LineSink {
            shared: shared.clone(),
        },
        WriterGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_batches(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let redactor = &shared.redactor;
    let mut batch = Vec::new();
    let mut cleared = Vec::new();
    // The unfinished end of a batch (tracing never writes part of a line; kept for safety).
    let mut carry = Vec::new();
    let mut redacted = Vec::new();
    loop {
        let (dropped, closed, all_cleared) = {
            let mut p = shared.lock();
            while p.buf.is_empty() && !p.closed {
                p = shared.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
            }
            if !p.closed {
                // Let the batch fill; a close cuts the wait short.
                p = shared
                    .wake
                    .wait_timeout_while(p, BATCH_DELAY, |p| !p.closed)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            // Swap rather than take, so both buffers keep their capacity.
            std::mem::swap(&mut p.buf, &mut batch);
            std::mem::swap(&mut p.cleared, &mut cleared);
            let all_cleared = !std::mem::take(&mut p.uncleared);
            (std::mem::take(&mut p.dropped), p.closed, all_cleared)
        };
        // A batch of cleared lines only (the access log under load) is written as it is:
        // no line split, no per-line copy. Cleared lines are whole lines, so such a batch
        // ends with one.
        let verbatim = all_cleared && carry.is_empty() && batch.last() == Some(&b'\n');
        if !carry.is_empty() {
            // Cleared lines' offsets move with the batch; one that began mid-line (after a
            // part line) no longer matches a line start and is scanned, which is safe.
            let shift = carry.len();
            cleared.iter_mut().for_each(|at| *at += shift);
            carry.extend_from_slice(&batch);
            std::mem::swap(&mut carry, &mut batch);
            carry.clear();
        }
        redacted.clear();
        if verbatim {
            // `batch` takes the empty buffer back; both keep their capacity.
            std::mem::swap(&mut batch, &mut redacted);
        } else {
            let complete = if closed {
                batch.len()
            } else {
                memchr::memrchr(b'\n', &batch).map_or(0, |i| i + 1)
            };
            let mut next_cleared = cleared.iter().copied().peekable();
            let mut at = 0;
            // Lines found with memchr: splitting byte by byte was ~8 instructions per byte of
            // the batch, cleared lines included (bench/RESULTS.md, egress).
            while at < complete {
                let start = at;
                at = memchr::memchr(b'\n', &batch[start..complete])
                    .map_or(complete, |i| start + i + 1);
                let line = &batch[start..at];
                while next_cleared.next_if(|&c| c < start).is_some() {}
                if next_cleared.next_if_eq(&start).is_some() {
                    redacted.extend_from_slice(line);
                    continue;
                }
                match std::str::from_utf8(line) {
                    Ok(text) => redactor.redact_into(text, &mut redacted),
                    Err(_) => redactor.redact_into(&String::from_utf8_lossy(line), &mut redacted),
                }
            }
            // Lines left in the carry are scanned in the next batch like any other.
            carry.extend_from_slice(&batch[complete..]);
        }
        batch.clear();
        cleared.clear();
        if dropped > 0 {
            metrics::counter!("portcullis_log_lines_dropped_total").increment(dropped);
            let note = format!(
                "{{\"level\":\"WARN\",\"target\":\"portcullis::log\",\"message\":\"{dropped} log lines dropped: the log writer could not keep up\"}}\n"
            );
            redacted.extend_from_slice(note.as_bytes());
        }
        // A failed write (a closed stdout) loses this batch; there is nowhere to report it.
        let _ = out.write_all(&redacted).and_then(|()| out.flush());
        // After a burst, do not keep a burst-sized buffer for ever.
        for b in [&mut batch, &mut redacted] {
            if b.capacity() > 4 * 1024 * 1024 {
                b.shrink_to(64 * 1024);
            }
        }
        if closed {
            shared.lock().finished = true;
            shared.wake.notify_all();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounds for tests: a shutdown that waits for the writer however slow the build is.
    fn patient(max_pending: usize) -> Limits {
        Limits {
            max_pending,
            shutdown_wait: Duration::from_secs(120),
        }
    }

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
                .into_owned()
        }
    }

    /// A writer into a [`Capture`], with the default redactor and patient bounds.
    fn captured() -> (Capture, LineSink, WriterGuard) {
        let cap = Capture::default();
        let (sink, guard) = spawn_with(
            Box::new(cap.clone()),
            Redactor::default(),
            patient(MAX_PENDING),
        )
        .expect("spawn");
        (cap, sink, guard)
    }

    #[test]
    fn every_line_from_every_thread_arrives_whole_and_in_order_per_thread() {
        let (cap, sink, guard) = captured();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut s = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        s.write_all(format!("{{\"t\":{t},\"i\":{i}}}\n").as_bytes())
                            .expect("write");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        drop(guard);
        let text = cap.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8_000);
        for t in 0..4 {
            let seen: Vec<i64> = lines
                .iter()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("whole JSON line"))
                .filter(|v| v["t"] == t)
                .map(|v| v["i"].as_i64().expect("i"))
                .collect();
            assert_eq!(seen, (0..2_000).collect::<Vec<i64>>(), "thread {t}");
        }
    }

    #[test]
    fn lines_are_redacted_before_they_are_written() {
        let (cap, mut sink, guard) = captured();
        sink.write_all(b"{\"authorization\":\"Bearer sentinel-4b1d\",\"ok\":1}\n")
            .expect("write");
        drop(guard);
        let text = cap.text();
        assert!(!text.contains("sentinel-4b1d"), "{text}");
        assert!(text.contains("[REDACTED]"), "{text}");
    }

    #[test]
    fn a_checked_line_skips_the_scan_only_when_its_values_clear() {
        let (cap, mut sink, guard) = captured();
        // The fixed part names a sensitive key: copied as it is, which shows the scan was
        // skipped (the caller vouches for its fixed text, never for its values).
        sink.write_checked(
            b"{\"authorization\":\"fixed-4b1d\",\"v\":\"plain\"}\n",
            &["plain"],
        );
        // A value that holds a credential: the line is redacted as usual.
        sink.write_checked(
            b"{\"path\":\"/x/Bearer sentinel-9c2e\"}\n",
            &["/x/Bearer sentinel-9c2e"],
        );
        // A checked line that continues a part line is scanned with the line it ends.
        sink.write_all(b"{\"password\":\"sentinel-77aa")
            .expect("write");
        sink.write_checked(b"-end\"}\n", &["-end"]);
        // Unchecked lines around checked ones are still redacted.
        sink.write_all(b"{\"token\":\"sentinel-5e5e\"}\n")
            .expect("write");
        drop(guard);
        let text = cap.text();
        assert!(text.contains("\"authorization\":\"fixed-4b1d\""), "{text}");
        for secret in ["sentinel-9c2e", "sentinel-77aa", "sentinel-5e5e"] {
            assert!(!text.contains(secret), "{secret} reached the log: {text}");
        }
        assert_eq!(text.lines().count(), 4, "{text}");
    }

    #[test]
    fn batches_of_cleared_lines_only_are_written_whole_and_in_order() {
        let (cap, sink, guard) = captured();
        for i in 0..2_000 {
            sink.write_checked(
                format!("{{\"i\":{i},\"cookie\":\"fixed\"}}\n").as_bytes(),
                &["ok"],
            );
        }
        drop(guard);
        let text = cap.text();
        let seen: Vec<String> = text.lines().map(str::to_string).collect();
        let want: Vec<String> = (0..2_000)
            .map(|i| format!("{{\"i\":{i},\"cookie\":\"fixed\"}}"))
            .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn a_lone_line_is_written_without_waiting_for_more() {
        let (cap, mut sink, _guard) = captured();
        sink.write_all(b"{\"one\":1}\n").expect("write");
        // Bounded wait: the writer must deliver a single line on its own, long before this.
        for _ in 0..500 {
            if cap.text().contains("\"one\"") {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("a single line was never written");
    }

    /// An output that never returns from `write`, like a pipe nobody reads.
    struct Stuck;

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            loop {
                std::thread::park();
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_output_does_not_hang_the_shutdown() {
        let (mut sink, guard) = spawn(Box::new(Stuck), Redactor::default()).expect("spawn");
        sink.write_all(b"{\"stuck\":1}\n").expect("write");
        // Returns after the bounded wait; with an unbounded join this test would never end.
        drop(guard);
        // Lines after shutdown are dropped, not queued for ever.
        sink.write_all(b"{\"late\":1}\n").expect("write");
        assert!(sink.shared.lock().buf.is_empty());
    }

    #[test]
    fn a_full_buffer_drops_lines_and_reports_how_many() {
        let cap = Capture::default();
        const CAP: usize = 4096;
        let (sink, guard) =
            spawn_with(Box::new(cap.clone()), Redactor::default(), patient(CAP)).expect("spawn");
        // Fill the buffer without waking the writer, so it cannot drain, then go past the cap.
        let line = vec![b'x'; 1023];
        {
            let mut p = sink.shared.lock();
            p.buf.extend(std::iter::repeat_n(b'y', CAP - 10));
            p.buf.push(b'\n');
        }
        let mut s = sink.clone();
        let mut with_newline = line.clone();
        with_newline.push(b'\n');
        s.write_all(&with_newline).expect("write");
        s.write_all(&with_newline).expect("write");
        drop(guard);
        let text = cap.text();
        assert!(text.contains("2 log lines dropped"), "no drop report");
        assert!(!text.contains("xxxx"), "a line over the cap was written");
    }
}
