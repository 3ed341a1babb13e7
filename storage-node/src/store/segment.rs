//! Segment files, the directory lock, and the record walk used by recovery and compaction.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::{StoreError, StoreResult};
use super::record::{RecordHeader, HEADER_LEN};

/// One append-only segment file. Shared through `Arc` by the index, so a reader keeps the file
/// open even after compaction unlinks it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub id: u64,
    pub path: PathBuf,
    pub file: File,
}

impl Segment {
    /// Opens an existing segment for reading and appending.
    pub fn open(dir: &Path, id: u64) -> StoreResult<Segment> {
        let path = dir.join(segment_name(id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io("open segment", &path, e))?;
        Ok(Segment { id, path, file })
    }

    /// Creates a new, empty segment; the caller must fsync the directory before relying on it.
    pub fn create(dir: &Path, id: u64) -> StoreResult<Segment> {
        let path = dir.join(segment_name(id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io("create segment", &path, e))?;
        Ok(Segment { id, path, file })
    }

    pub fn file_len(&self) -> StoreResult<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| StoreError::io("stat segment", &self.path, e))
    }
}

/// Bound on consecutive checksum failures a walk holds while looking for a valid record.
const MAX_SUSPECTS: usize = 1024;

/// Largest segment id: names hold exactly 12 digits (a 13-digit name would not be found
/// again on reopen).
pub(crate) const MAX_SEGMENT_ID: u64 = 999_999_999_999;

/// File name of segment `id`.
pub(crate) fn segment_name(id: u64) -> String {
    format!("seg-{id:012}.log")
}

/// The segment id encoded in a file name, if it is a segment file.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Ids of all segment files in `dir`, ascending.
pub(crate) fn list_segments(dir: &Path) -> StoreResult<Vec<u64>> {
    let mut ids = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        if let Some(id) = entry.file_name().to_str().and_then(parse_segment_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Makes creations and unlinks of files in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> StoreResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync directory", dir, e))
}

/// An exclusive `flock` on `<dir>/LOCK`, released when dropped (the kernel drops it with the fd).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> StoreResult<DirLock> {
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io("open lock file", &path, e))?;
        match try_flock_exclusive(&file) {
            Ok(true) => Ok(DirLock { _file: file }),
            Ok(false) => Err(StoreError::Locked { path }),
            Err(e) => Err(StoreError::io("lock", &path, e)),
        }
    }
}

/// An exclusive, non-blocking lock (`flock` on Linux): `Ok(false)` when someone else holds
/// it. Locks belong to the open file description, so a second `open` in the same process
/// conflicts too.
fn try_flock_exclusive(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// How a walk over a segment ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WalkEnd {
    /// Every byte of the file belongs to a valid record.
    Clean { len: u64 },
    /// The record at `valid_len` is torn or damaged; everything before it is valid.
    Invalid {
        valid_len: u64,
        file_len: u64,
        reason: &'static str,
    },
}

/// Visits every record of `seg` in file order, as `(header, offset, payload_ok)`.
///
/// With `verify_payload` the payload checksums are checked too (the whole file is read);
/// without it only headers are read and payloads are skipped by seeking (`payload_ok` is then
/// always true). Lengths are bounded by what is left in the file, so damaged headers never
/// cause large allocations or reads.
///
/// A record with a valid header but a bad payload checksum is only visited (with
/// `payload_ok = false`) once a fully valid record follows it: then it is damage in the middle
/// of the log, not a torn tail, and the records after it must not be thrown away. Bad records
/// with nothing valid after them are the torn tail, reported through `WalkEnd::Invalid`.
pub(crate) fn walk(
    seg: &Segment,
    verify_payload: bool,
    mut visit: impl FnMut(&RecordHeader, u64, bool),
) -> StoreResult<WalkEnd> {
    let file_len = seg.file_len()?;
    // Header-only walks read about a page per record: enough to batch small records, without
    // reading the payloads of large ones.
    let mut reader = PosReader::new(&seg.file, if verify_payload { 1 << 20 } else { 4 << 10 });
    let mut pos = 0u64;
    // Checksum failures not yet followed by a valid record.
    let mut suspects: Vec<(RecordHeader, u64)> = Vec::new();
    let read_err = |e| StoreError::io("read segment", &seg.path, e);
    let end = |pos: u64, reason: &'static str, suspects: &[(RecordHeader, u64)]| {
        let (valid_len, reason) = match suspects.first() {
            Some((_, at)) => (*at, "payload checksum mismatch"),
            None => (pos, reason),
        };
        Ok(WalkEnd::Invalid {
            valid_len,
            file_len,
            reason,
        })
    };
    while pos < file_len {
        if file_len - pos < HEADER_LEN as u64 {
            return end(pos, "truncated header", &suspects);
        }
        let mut hb = [0u8; HEADER_LEN];
        reader.read_exact(&mut hb, pos).map_err(read_err)?;
        let left = file_len - pos - HEADER_LEN as u64;
        let header = match RecordHeader::decode(&hb, left) {
            Ok(h) => h,
            // A length beyond the end of file means the payload is incomplete.
            Err(e) => return end(pos, e.as_str(), &suspects),
        };
        let payload_ok = !verify_payload
            || reader
                .crc_of(pos + HEADER_LEN as u64, u64::from(header.len))
                .map_err(read_err)?
                == header.payload_crc;
        if payload_ok {
            for (h, at) in suspects.drain(..) {
                visit(&h, at, false);
            }
            visit(&header, pos, true);
        } else if suspects.len() < MAX_SUSPECTS {
            suspects.push((header, pos));
        } else {
            return end(pos, "payload checksum mismatch", &suspects);
        }
        pos += header.record_len();
    }
    if !suspects.is_empty() {
        return end(pos, "payload checksum mismatch", &suspects);
    }
    Ok(WalkEnd::Clean { len: file_len })
}

/// Buffered positional reads (`pread`): never touches the shared file cursor, so walks can
/// run while readers and the writer use the same descriptor.
struct PosReader<'a> {
    file: &'a File,
    buf: Vec<u8>,
    /// File offset of `buf[0]`, and how many bytes of `buf` are valid.
    at: u64,
    filled: usize,
}

impl<'a> PosReader<'a> {
    fn new(file: &'a File, capacity: usize) -> PosReader<'a> {
        PosReader {
            file,
            buf: vec![0; capacity],
            at: 0,
            filled: 0,
        }
    }

    /// Makes `buf` start at `pos` and hold up to `want` bytes (less only at end of file).
    fn fill(&mut self, pos: u64, want: usize) -> io::Result<&[u8]> {
        let want = want.min(self.buf.len());
        let have = pos >= self.at && pos + want as u64 <= self.at + self.filled as u64;
        if !have {
            self.at = pos;
            self.filled = 0;
            while self.filled < self.buf.len() {
                let n = self
                    .file
                    .read_at(&mut self.buf[self.filled..], pos + self.filled as u64)?;
                if n == 0 {
                    break;
                }
                self.filled += n;
            }
        }
        let start = usize::try_from(pos - self.at)
            .unwrap_or(usize::MAX)
            .min(self.filled);
        let end = (start + want).min(self.filled);
        Ok(&self.buf[start..end])
    }

    fn read_exact(&mut self, out: &mut [u8], pos: u64) -> io::Result<()> {
        let got = self.fill(pos, out.len())?;
        if got.len() < out.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        out.copy_from_slice(got);
        Ok(())
    }

    /// crc32c of `len` bytes at `pos`.
    fn crc_of(&mut self, mut pos: u64, len: u64) -> io::Result<u32> {
        let mut crc = 0u32;
        let mut todo = len;
        while todo > 0 {
            let want = usize::try_from(todo).unwrap_or(usize::MAX);
            let got = self.fill(pos, want)?;
            if got.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            crc = crc32c::crc32c_append(crc, got);
            pos += got.len() as u64;
            todo -= got.len() as u64;
        }
        Ok(crc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(1), "seg-000000000001.log");
        assert_eq!(
            parse_segment_name(&segment_name(987_654_321)),
            Some(987_654_321)
        );
        assert_eq!(parse_segment_name("seg-1.log"), None);
        assert_eq!(parse_segment_name("seg-00000000000x.log"), None);
        assert_eq!(parse_segment_name("LOCK"), None);
    }
}
