//! Log setup: JSON (one object per line) or text on stdout, filtered by `RUST_LOG` or the
//! config's level.
//!
//! Lines are not written where they are produced. Each is appended to a shared buffer (a short
//! uncontended lock, no syscall) and a flusher thread writes the whole buffer to stdout every
//! 50 ms in one `write`. A per-line writer thread fed through a channel (what
//! `tracing-appender` does) costs every call a cross-thread wakeup and a syscall; measured on
//! the gateway's hot path, that was a visible share of its CPU. If stdout stalls and more than
//! [`MAX_PENDING`] bytes wait, lines are dropped and counted rather than blocking a request: the
//! ledger, not the log, is the record of every call.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Bytes that may wait for the flusher before lines are dropped.
pub const MAX_PENDING: usize = 16 * 1024 * 1024;
/// Pending bytes past which the flusher is woken early.
const WAKE_AT: usize = 256 * 1024;
const FLUSH_EVERY: Duration = Duration::from_millis(50);

struct Shared {
    buf: Mutex<Vec<u8>>,
    dropped: AtomicU64,
    stop: AtomicBool,
    /// Set once the flusher thread exists.
    flusher: OnceLock<std::thread::Thread>,
}

impl Shared {
    fn wake(&self) {
        if let Some(t) = self.flusher.get() {
            t.unpark();
        }
    }
}

/// The `MakeWriter` handed to the subscriber; each event's writer appends to the shared buffer.
#[derive(Clone)]
struct BatchWriter(Arc<Shared>);

impl Write for &Shared {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let wake = match self.buf.lock() {
            Ok(mut b) => {
                if b.len() + data.len() > MAX_PENDING {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return Ok(data.len());
                }
                let before = b.len();
                b.extend_from_slice(data);
                before < WAKE_AT && b.len() >= WAKE_AT
            }
            // A panic while holding the lock elsewhere: drop the line rather than propagate.
            Err(_) => return Ok(data.len()),
        };
        if wake {
            self.wake();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = &'a Shared;
    fn make_writer(&'a self) -> Self::Writer {
        &self.0
    }
}

/// Keeps the flusher running; dropping it writes every pending line and stops the flusher.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn flush_loop(shared: &Shared) {
    let mut out = Vec::with_capacity(WAKE_AT);
    let mut stdout = std::io::stdout();
    loop {
        std::thread::park_timeout(FLUSH_EVERY);
        let stopping = shared.stop.load(Ordering::Acquire);
        if let Ok(mut b) = shared.buf.lock() {
            std::mem::swap(&mut *b, &mut out);
        }
        if !out.is_empty() {
            let _ = stdout.write_all(&out);
            let _ = stdout.flush();
            out.clear();
        }
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = writeln!(
                stdout,
                r#"{{"level":"WARN","target":"sluice::logging","message":"log lines dropped: stdout too slow","dropped":{dropped}}}"#
            );
        }
        if stopping {
            return;
        }
    }
}

/// Install the global subscriber. Keep the guard alive until exit so pending lines are written.
pub fn init(format: &str, default_level: &str) -> Option<LogGuard> {
    let shared = Arc::new(Shared {
        buf: Mutex::new(Vec::with_capacity(WAKE_AT)),
        dropped: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        flusher: OnceLock::new(),
    });
    let for_thread = shared.clone();
    let thread = std::thread::Builder::new()
        .name("sluice-log".into())
        .spawn(move || flush_loop(&for_thread))
        .ok()?;
    let _ = shared.flusher.set(thread.thread().clone());

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(BatchWriter(shared.clone()));
    let _ = if format == "text" {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    };
    Some(LogGuard {
        shared,
        thread: Some(thread),
    })
}
