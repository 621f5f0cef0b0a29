//! The ledger spool: where Postgres-bound rows wait, on local disk, while the database cannot
//! take them.
//!
//! Format: a directory of append-only segment files `ledger-v1-<seq>.jsonl` (`seq` is 20
//! decimal digits, so names sort in write order), each a sequence of JSON lines, one
//! [`StoredRow`] per line. A batch is appended with one `write` and made durable with one
//! `fsync` before the writer moves on; a new segment starts when the current one passes
//! `segment_bytes` or when replay reaches it (replay reads sealed segments only, so it never
//! races an append). Replay reads the oldest segment in chunks, commits each chunk in one
//! transaction, and deletes the segment once every row of it is committed.
//!
//! Guarantees: rows are replayed in the order they were spooled; a row is deleted from disk only
//! after the database committed it; a crash between the commit and the deletion replays the
//! chunk again, which the database ignores (inserts skip row ids already present). A torn last
//! line (power loss mid-append) is skipped and counted ([`Spool::corrupt`]). The total size is
//! bounded by `max_bytes`: rows that would pass it are refused (the writer counts them as
//! dropped). One process owns a spool directory at a time (an exclusive lock on `spool.lock`).

use crate::StoreError;
use crate::ledger::StoredRow;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

const PREFIX: &str = "ledger-v1-";
const SUFFIX: &str = ".jsonl";

/// Settings of a spool.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// The directory (created if missing). One process per directory.
    pub dir: PathBuf,
    /// Most bytes all segments may take together.
    pub max_bytes: u64,
    /// A segment is sealed and a new one started past this size.
    pub segment_bytes: u64,
}

impl SpoolOptions {
    /// `dir` with the default bounds (1 GiB in all, 64 MiB segments).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
        }
    }
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    bytes: u64,
    rows: u64,
}

/// The replay position in the oldest segment.
struct Cursor {
    reader: BufReader<File>,
    /// Rows read but not yet committed (handed out by [`Spool::peek_chunk`]).
    pending: Vec<StoredRow>,
}

/// An open spool directory. See the module docs.
pub struct Spool {
    opts: SpoolOptions,
    /// Held for the spool's lifetime: the OS lock on `spool.lock`.
    _lock: File,
    /// Oldest first. The last one is open for appends when `open` is set.
    segments: VecDeque<Segment>,
    open: Option<File>,
    next_seq: u64,
    bytes: u64,
    rows: u64,
    corrupt: u64,
    cursor: Option<Cursor>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.opts.dir)
            .field("segments", &self.segments.len())
            .field("rows", &self.rows)
            .field("bytes", &self.bytes)
            .finish()
    }
}

fn segment_seq(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

fn sync_dir(dir: &Path) {
    // Makes a created or removed file name durable. Not every platform can open a directory;
    // failing to is not worth losing the batch over.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Spool {
    /// Open (creating if needed) the spool at `opts.dir`, taking its lock and counting the rows
    /// left by an earlier run (they are replayed first).
    pub fn open(opts: SpoolOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&opts.dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(opts.dir.join("spool.lock"))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Invalid(format!(
                "ledger spool {} is in use by another process (each gateway needs its own \
                 store.spool_dir)",
                opts.dir.display()
            )));
        }
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&opts.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if let Some(seq) = name.to_str().and_then(segment_seq) {
                found.push((seq, entry.path()));
            }
        }
        found.sort();
        let mut segments = VecDeque::with_capacity(found.len());
        let (mut bytes, mut rows) = (0, 0);
        for (seq, path) in found {
            let file = File::open(&path)?;
            let len = file.metadata()?.len();
            // Counting lines means reading the leftovers once; it happens on the writer
            // thread, before the first batch, and only after an outage spanning a restart.
            let mut n = 0u64;
            for line in BufReader::new(file).split(b'\n') {
                if !line?.is_empty() {
                    n += 1;
                }
            }
            bytes += len;
            rows += n;
            segments.push_back(Segment {
                seq,
                path,
                bytes: len,
                rows: n,
            });
        }
        let next_seq = segments.back().map_or(0, |s| s.seq + 1);
        if rows > 0 {
            tracing::warn!(
                rows,
                bytes,
                dir = %opts.dir.display(),
                "ledger spool holds rows from an earlier run; they are replayed first"
            );
        }
        Ok(Self {
            opts,
            _lock: lock,
            segments,
            open: None,
            next_seq,
            bytes,
            rows,
            corrupt: 0,
            cursor: None,
        })
    }

    /// No row waits.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Rows waiting (not yet committed to the database).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes the segment files take.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Lines skipped because they could not be read back (a torn write), since open.
    pub fn corrupt(&self) -> u64 {
        self.corrupt
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    /// Append `rows` and fsync. Returns how many were kept: rows past `max_bytes` are not
    /// written (the rest of the batch is refused, so order is never broken by a later smaller
    /// row squeezing in).
    pub fn append(&mut self, rows: &[StoredRow]) -> Result<u64, StoreError> {
        let mut buf = Vec::with_capacity(rows.len() * 512);
        let mut kept = 0u64;
        for r in rows {
            let before = buf.len();
            serde_json::to_writer(&mut buf, r)
                .map_err(|e| StoreError::Invalid(format!("cannot encode a ledger row: {e}")))?;
            buf.push(b'\n');
            if self.bytes + buf.len() as u64 > self.opts.max_bytes {
                buf.truncate(before);
                break;
            }
            kept += 1;
        }
        if kept == 0 {
            return Ok(0);
        }
        let roll = match (self.open.as_ref(), self.segments.back()) {
            (Some(_), Some(last)) => last.bytes >= self.opts.segment_bytes,
            _ => true,
        };
        if roll {
            let seq = self.next_seq;
            let path = self.opts.dir.join(format!("{PREFIX}{seq:020}{SUFFIX}"));
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            sync_dir(&self.opts.dir);
            self.next_seq += 1;
            self.segments.push_back(Segment {
                seq,
                path,
                bytes: 0,
                rows: 0,
            });
            self.open = Some(file);
        }
        let (Some(file), Some(seg)) = (self.open.as_mut(), self.segments.back_mut()) else {
            return Err(StoreError::Invalid(
                "ledger spool has no open segment".into(),
            ));
        };
        let written = file.write_all(&buf).and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Cut a partial append off so the segment stays a sequence of whole lines.
            let _ = file.set_len(seg.bytes);
            return Err(e.into());
        }
        seg.bytes += buf.len() as u64;
        seg.rows += kept;
        self.bytes += buf.len() as u64;
        self.rows += kept;
        Ok(kept)
    }

    /// The next rows to replay (at most `max`), oldest first; the same rows again until
    /// [`Spool::commit_chunk`]. Empty when the spool is.
    pub fn peek_chunk(&mut self, max: usize) -> Result<&[StoredRow], StoreError> {
        loop {
            if self.cursor.as_ref().is_some_and(|c| !c.pending.is_empty()) {
                break;
            }
            let Some(head) = self.segments.front() else {
                return Ok(&[]);
            };
            if self.cursor.is_none() {
                if self.segments.len() == 1 && self.open.is_some() {
                    // Seal the segment being appended to: new rows start another one.
                    self.open = None;
                }
                self.cursor = Some(Cursor {
                    reader: BufReader::new(File::open(&head.path)?),
                    pending: Vec::new(),
                });
            }
            let Some(cursor) = self.cursor.as_mut() else {
                continue;
            };
            let mut line = Vec::new();
            while cursor.pending.len() < max.max(1) {
                line.clear();
                if cursor.reader.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<StoredRow>(&line) {
                    Ok(r) => cursor.pending.push(r),
                    Err(e) => {
                        self.corrupt += 1;
                        self.rows = self.rows.saturating_sub(1);
                        tracing::error!(error = %e, segment = %head.path.display(),
                            "unreadable line in the ledger spool skipped (a torn write?)");
                    }
                }
            }
            if cursor.pending.is_empty() {
                // The head segment is used up (its rows committed, or all unreadable).
                self.finish_head()?;
            }
        }
        Ok(self.cursor.as_ref().map_or(&[], |c| c.pending.as_slice()))
    }

    /// The rows last returned by [`Spool::peek_chunk`] are committed: forget them, and delete
    /// the segment if that was its end.
    pub fn commit_chunk(&mut self) -> Result<(), StoreError> {
        let Some(cursor) = self.cursor.as_mut() else {
            return Ok(());
        };
        let n = cursor.pending.len() as u64;
        cursor.pending.clear();
        self.rows = self.rows.saturating_sub(n);
        if cursor.reader.fill_buf()?.is_empty() {
            self.finish_head()?;
        }
        Ok(())
    }

    fn finish_head(&mut self) -> Result<(), StoreError> {
        self.cursor = None;
        if let Some(seg) = self.segments.pop_front() {
            self.bytes = self.bytes.saturating_sub(seg.bytes);
            if self.segments.is_empty() {
                // Every row is accounted for; don't let a skipped line leave a phantom count.
                self.rows = 0;
            }
            std::fs::remove_file(&seg.path)?;
            sync_dir(&self.opts.dir);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn row(i: u64) -> StoredRow {
        StoredRow {
            uid: format!("{i:032x}"),
            ts_ms: i as i64,
            request_id: format!("req_{i}"),
            tenant: "web".into(),
            endpoint: "messages".into(),
            outcome: "ok".into(),
            input_tokens: i,
            ..StoredRow::default()
        }
    }

    fn drain(s: &mut Spool, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        loop {
            let c = s.peek_chunk(max).unwrap();
            if c.is_empty() {
                break;
            }
            out.extend(c.iter().map(|r| r.input_tokens));
            s.commit_chunk().unwrap();
        }
        out
    }

    #[test]
    fn rows_come_back_in_order_across_segments_and_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(SpoolOptions {
            segment_bytes: 2_000,
            ..SpoolOptions::new(dir.path())
        })
        .unwrap();
        for b in 0..10 {
            let rows: Vec<_> = (b * 10..b * 10 + 10).map(row).collect();
            assert_eq!(s.append(&rows).unwrap(), 10);
        }
        assert_eq!(s.rows(), 100);
        assert!(s.segments.len() > 2, "{:?}", s.segments);
        // Replay half, then append more: the new rows come after the old ones.
        let first: Vec<u64> = s
            .peek_chunk(7)
            .unwrap()
            .iter()
            .map(|r| r.input_tokens)
            .collect();
        assert_eq!(first, (0..7).collect::<Vec<_>>());
        s.commit_chunk().unwrap();
        s.append(&(100..110).map(row).collect::<Vec<_>>()).unwrap();
        let rest = drain(&mut s, 13);
        assert_eq!(rest, (7..110).collect::<Vec<_>>());
        assert!(s.is_empty());
        assert_eq!((s.rows(), s.bytes()), (0, 0));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
            .collect();
        assert!(left.is_empty());
    }

    #[test]
    fn reopened_spool_replays_leftovers_and_skips_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(SpoolOptions::new(dir.path())).unwrap();
            s.append(&(0..5).map(row).collect::<Vec<_>>()).unwrap();
            // A second owner is refused while the first holds the lock.
            assert!(Spool::open(SpoolOptions::new(dir.path())).is_err());
        }
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
            .unwrap()
            .path();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"{\"uid\":\"torn").unwrap();
        let mut s = Spool::open(SpoolOptions::new(dir.path())).unwrap();
        assert_eq!(s.rows(), 6);
        assert_eq!(drain(&mut s, 100), vec![0, 1, 2, 3, 4]);
        assert_eq!(s.corrupt(), 1);
        assert_eq!(s.rows(), 0);
    }

    #[test]
    fn a_full_spool_refuses_rows_past_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(SpoolOptions {
            max_bytes: 3_000,
            ..SpoolOptions::new(dir.path())
        })
        .unwrap();
        let kept = s.append(&(0..100).map(row).collect::<Vec<_>>()).unwrap();
        assert!(kept > 0 && kept < 100, "{kept}");
        assert!(s.bytes() <= 3_000);
        assert_eq!(s.append(&[row(1000)]).unwrap(), 0);
        assert_eq!(drain(&mut s, 1000).len() as u64, kept);
        // Room again once replayed.
        assert_eq!(s.append(&[row(1000)]).unwrap(), 1);
    }
}
