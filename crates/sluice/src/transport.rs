//! The data plane's listener: one task per connection, served by hyper's HTTP/1 connection
//! directly (not `axum::serve`) so the gateway bounds what a client can make it hold.
//!
//! - At most `server.max_connections` connections are open; at the cap the loop stops
//!   accepting (new connections wait in the kernel's listen backlog) until one closes. Accepting
//!   and closing would turn a flood into a busy loop and give legitimate clients a reset.
//! - A connection's first request must send its headers within `header_read_timeout_ms` of the
//!   connection being accepted; a later request within that time of its first byte. Between
//!   requests a keep-alive connection may stay silent for `idle_timeout_secs`. Either way the
//!   connection is then closed. Both ride on hyper's header-read timer: a connection's own
//!   [`ConnTimer`] tells an idle wait from a slow head by whether any byte came since the wait
//!   began.
//! - On shutdown the loop stops accepting and every connection is asked to close once its
//!   request in flight is answered; when the grace is over, the remaining connection futures are
//!   dropped (their calls are recorded with outcome `shutdown`).

use hyper::rt::{Sleep, Timer};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What bounds a client connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a request head may take (see the module docs).
    pub header_read: Duration,
    /// Longest a keep-alive connection may be silent between requests.
    pub idle: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// Shutdown signals of the accept loop and its connections.
#[derive(Clone, Default)]
pub struct Stop {
    /// Stop accepting; each connection closes after its request in flight.
    pub drain: CancellationToken,
    /// Drop whatever is still open.
    pub kill: CancellationToken,
}

/// Accept connections on `listener` and serve `app` on each until `stop.drain`. Each
/// connection holds a permit of `conns` (sized `limits.max_connections`) until it closes, so
/// the caller knows when all are gone.
pub async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    conns: Arc<Semaphore>,
    stop: Stop,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .header_read_timeout(limits.header_read);
    let mut saturated = false;
    loop {
        let permit = tokio::select! {
            biased;
            () = stop.drain.cancelled() => return,
            p = conns.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        if conns.available_permits() == 0 && !saturated {
            saturated = true;
            tracing::warn!(
                max_connections = limits.max_connections,
                "connection cap reached; new connections wait until one closes (server.max_connections)"
            );
        } else if conns.available_permits() > limits.max_connections / 10 {
            saturated = false;
        }
        let (tcp, peer) = tokio::select! {
            biased;
            () = stop.drain.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small request/response exchanges must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let reads = Arc::new(ConnState::default());
        let timer = ConnTimer {
            state: reads.clone(),
            idle: limits.idle,
        };
        let mut b = builder.clone();
        b.timer(timer);
        let io = TokioIo::new(Counting {
            inner: tcp,
            state: reads,
        });
        let app = app.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_one(b, io, app, peer, stop).await;
        });
    }
}

async fn serve_one(
    builder: hyper::server::conn::http1::Builder,
    io: TokioIo<Counting>,
    app: axum::Router,
    peer: SocketAddr,
    stop: Stop,
) {
    // The peer address feeds the audit trail's failed-authentication source.
    let svc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        tower::ServiceExt::oneshot(app.clone(), req)
    });
    let conn = builder.serve_connection(io, svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        biased;
        r = conn.as_mut() => return log_end(r),
        () = stop.drain.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    tokio::select! {
        r = conn.as_mut() => log_end(r),
        // Dropping the connection drops its call in flight; its recorder says `shutdown`.
        () = stop.kill.cancelled() => {}
    }
}

fn log_end(r: hyper::Result<()>) {
    if let Err(e) = r {
        if e.is_timeout() {
            tracing::debug!("client connection closed: headers not received in time");
        } else {
            tracing::debug!(error = %e, "client connection ended with an error");
        }
    }
}

/// What a connection's reads and its header timer share.
#[derive(Default)]
struct ConnState {
    /// Reads that returned bytes.
    reads: AtomicU64,
    /// A request head has been waited for before (later waits start idle).
    waited: AtomicBool,
}

/// The connection's stream, counting the reads that bring bytes.
struct Counting {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.reads.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// hyper's timer for one connection. hyper uses it only for the header-read timeout, which it
/// starts whenever it waits for a request head (on a keep-alive connection, right after the
/// previous reply): the sleep it hands back turns that into "idle until the first byte, then
/// the header timeout from there".
#[derive(Clone)]
struct ConnTimer {
    state: Arc<ConnState>,
    idle: Duration,
}

impl Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep::plain(tokio::time::Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn Sleep>> {
        let now = std::time::Instant::now();
        let header = deadline.saturating_duration_since(now);
        let tnow = tokio::time::Instant::now();
        // The first head of a connection is timed from the accept: a connection that never
        // sends a byte is closed at the header timeout, not kept for the idle one.
        let first = !self.state.waited.swap(true, Ordering::Relaxed);
        Box::pin(HeadSleep {
            sleep: tokio::time::sleep_until(if first {
                tnow + header
            } else {
                tnow + self.idle
            }),
            idle: (!first).then(|| IdleWait {
                state: self.state.clone(),
                reads_at: self.state.reads.load(Ordering::Relaxed),
                header,
            }),
        })
    }
}

/// A keep-alive wait that becomes a header timeout at the first byte.
struct IdleWait {
    state: Arc<ConnState>,
    reads_at: u64,
    header: Duration,
}

pin_project_lite::pin_project! {
    struct HeadSleep {
        #[pin]
        sleep: tokio::time::Sleep,
        idle: Option<IdleWait>,
    }
}

impl HeadSleep {
    fn plain(at: tokio::time::Instant) -> Self {
        Self {
            sleep: tokio::time::sleep_until(at),
            idle: None,
        }
    }
}

impl Future for HeadSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // hyper polls this each time a read leaves the head incomplete, so the first byte is
        // seen here as it comes.
        if let Some(w) = this.idle.as_ref()
            && w.state.reads.load(Ordering::Relaxed) != w.reads_at
        {
            let due = tokio::time::Instant::now() + w.header;
            *this.idle = None;
            this.sleep.as_mut().reset(due);
        }
        this.sleep.poll(cx)
    }
}

impl Sleep for HeadSleep {}

/// Raise the open-files soft limit to the hard limit, and warn when it leaves too few for
/// `max_connections` (each is a descriptor, as is each upstream connection).
pub fn raise_nofile_limit(max_connections: usize) {
    #[cfg(unix)]
    {
        let (_, hard) = rlimit::Resource::NOFILE.get().unwrap_or((0, 0));
        match rlimit::increase_nofile_limit(hard) {
            Ok(soft) => {
                // Headroom: upstream connections, the ledger, logs, the admin listener.
                let want = (max_connections as u64)
                    .saturating_mul(2)
                    .saturating_add(256);
                if soft < want {
                    tracing::warn!(
                        open_files = soft,
                        max_connections,
                        "the open-files limit is low for server.max_connections (each client connection and each upstream connection is a file); raise it (ulimit -n / LimitNOFILE) or lower max_connections"
                    );
                } else {
                    tracing::debug!(open_files = soft, "open-files limit");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
        }
    }
}
