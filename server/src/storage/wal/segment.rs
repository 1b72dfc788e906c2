//! Segment files of the write-ahead log: the record format, CRC-32C, reading
//! a segment back, and creating a zero-filled one.
//!
//! # Record
//! `[payload length: u32 LE][CRC-32C: u32 LE][LSN: u64 LE][payload]`, the
//! checksum over the length bytes, the LSN bytes and the payload. A zero
//! length is never written, so the zeros of unused preallocated space never
//! pass for a record; a segment ends at its last byte or where only zeros
//! follow.

use super::super::StorageError;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes before each record's payload: length, checksum, LSN.
pub const RECORD_HEADER_BYTES: usize = 16;

/// Suffix of a segment file; its stem is the LSN of its first record, 20 digits.
pub(super) const SEGMENT_SUFFIX: &str = ".seg";
/// Suffix of a segment being created (zero-filled, not yet renamed into place).
pub(super) const CREATING_SUFFIX: &str = ".seg.creating";

// ---- CRC-32C (Castagnoli, reflected, as in iSCSI, ext4 and LevelDB) ---------

/// Slicing-by-8 tables: `TABLES[0]` is the classic byte table.
const TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            i += 1;
        }
        s += 1;
    }
    t
};

/// Continues CRC-32C `crc` (start at 0) over `data`.
pub fn crc32c_update(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    let mut chunks = data.chunks_exact(8);
    for ch in &mut chunks {
        let lo = c ^ u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]);
        c = TABLES[7][(lo & 0xFF) as usize]
            ^ TABLES[6][((lo >> 8) & 0xFF) as usize]
            ^ TABLES[5][((lo >> 16) & 0xFF) as usize]
            ^ TABLES[4][(lo >> 24) as usize]
            ^ TABLES[3][ch[4] as usize]
            ^ TABLES[2][ch[5] as usize]
            ^ TABLES[1][ch[6] as usize]
            ^ TABLES[0][ch[7] as usize];
    }
    for &b in chunks.remainder() {
        c = TABLES[0][((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

fn record_crc(len: [u8; 4], lsn: [u8; 8], payload: &[u8]) -> u32 {
    crc32c_update(crc32c_update(crc32c_update(0, &len), &lsn), payload)
}

/// Appends the record of `lsn` carrying `payload` (not empty) to `out`.
pub(super) fn encode_record(lsn: u64, payload: &[u8], out: &mut Vec<u8>) {
    assert!(!payload.is_empty(), "a record payload is never empty");
    let len = u32::try_from(payload.len())
        .expect("records are bounded far below 4 GiB")
        .to_le_bytes();
    let lsn = lsn.to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&record_crc(len, lsn, payload).to_le_bytes());
    out.extend_from_slice(&lsn);
    out.extend_from_slice(payload);
}

/// One intact record of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RecordAt {
    pub lsn: u64,
    /// Where its header starts in the segment.
    pub offset: usize,
    /// Header and payload.
    pub len: usize,
}

impl RecordAt {
    pub fn payload<'a>(&self, segment: &'a [u8]) -> &'a [u8] {
        &segment[self.offset + RECORD_HEADER_BYTES..self.offset + self.len]
    }
}

/// The record at `at`, if one intact record starts there.
fn record_at(segment: &[u8], at: usize) -> Result<RecordAt, String> {
    let rest = &segment[at..];
    if rest.len() < RECORD_HEADER_BYTES {
        return Err(format!(
            "{} bytes left, less than a record header",
            rest.len()
        ));
    }
    let len_bytes: [u8; 4] = rest[..4].try_into().expect("length checked above");
    let crc_bytes: [u8; 4] = rest[4..8].try_into().expect("length checked above");
    let lsn_bytes: [u8; 8] = rest[8..16].try_into().expect("length checked above");
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len == 0 {
        return Err("record length 0 with non-zero bytes after it".into());
    }
    let Some(payload) = rest.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len) else {
        return Err(format!(
            "record length {len} runs past the end of the segment"
        ));
    };
    if record_crc(len_bytes, lsn_bytes, payload) != u32::from_le_bytes(crc_bytes) {
        return Err(format!("record of {len} bytes fails its CRC-32C"));
    }
    Ok(RecordAt {
        lsn: u64::from_le_bytes(lsn_bytes),
        offset: at,
        len: RECORD_HEADER_BYTES + len,
    })
}

/// What [`scan`] found in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Scan {
    /// The intact records before the end or the first damaged record.
    pub records: Vec<RecordAt>,
    /// Where the records end: the next append goes here.
    pub end: usize,
    /// A damaged record at `end`: why it is not a record.
    pub damage: Option<String>,
}

/// Reads `segment` record by record until its end, zeros to its end, or the
/// first damaged record. Records must carry consecutive LSNs; a checksummed
/// record whose LSN breaks the sequence is reported as damage too.
pub(super) fn scan(segment: &[u8]) -> Scan {
    let mut records: Vec<RecordAt> = Vec::new();
    let mut at = 0;
    let damage = loop {
        // Short-circuits at the next record's header; scans to the end only once.
        if segment[at..].iter().all(|&b| b == 0) {
            break None;
        }
        match record_at(segment, at) {
            Ok(r) => {
                if let Some(prev) = records.last() {
                    if r.lsn != prev.lsn + 1 {
                        break Some(format!(
                            "record with LSN {} follows LSN {}",
                            r.lsn, prev.lsn
                        ));
                    }
                }
                at += r.len;
                records.push(r);
            }
            Err(why) => break Some(why),
        }
    };
    Scan {
        records,
        end: at,
        damage,
    }
}

/// The offset of an intact record at or after `from` carrying an LSN above
/// `after_lsn`: acknowledged data after a damaged record, if any. Tries every
/// byte offset (run only at open, after damage was found).
pub(super) fn intact_record_after(segment: &[u8], from: usize, after_lsn: u64) -> Option<usize> {
    (from..segment.len().saturating_sub(RECORD_HEADER_BYTES - 1)).find(|&at| {
        // Cheap filters first: a zero length is no record.
        segment[at..at + 4] != [0; 4] && record_at(segment, at).is_ok_and(|r| r.lsn > after_lsn)
    })
}

/// The file name of the segment whose first record has `first_lsn`.
pub(super) fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}{SEGMENT_SUFFIX}")
}

/// The first LSN a segment file name stands for.
pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub(super) fn io_err<'p>(
    path: &'p Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> StorageError + 'p {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// fsyncs directory `dir`, so that names created or renamed in it are durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "syncing the write-ahead log directory"))
}

/// Writes zeros over `[from, to)` of `file`.
pub(super) fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK.min((to - from) as usize)];
    let mut at = from;
    while at < to {
        let n = zeros.len().min((to - at) as usize);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

const ZERO_CHUNK: usize = 1 << 20;

/// Creates segment `first_lsn` in `dir`: [`prepare_segment`], then
/// [`install_segment`].
pub(super) fn create_segment(
    dir: &Path,
    first_lsn: u64,
    bytes: u64,
) -> Result<(File, PathBuf), StorageError> {
    let (file, creating) = prepare_segment(dir, &format!("{first_lsn:020}"), bytes)?;
    let path = install_segment(dir, &creating, first_lsn)?;
    Ok((file, path))
}

/// Writes a segment file of `bytes` zeros under a temporary name
/// (`{stem}` and [`CREATING_SUFFIX`], which the next open removes if it is
/// left behind) and syncs it, so that a record's `fdatasync` never has to
/// allocate blocks or grow the file, and a full disk shows here, before any
/// record is written. A failure removes the file (best effort).
pub(super) fn prepare_segment(
    dir: &Path,
    stem: &str,
    bytes: u64,
) -> Result<(File, PathBuf), StorageError> {
    let creating = dir.join(format!("{stem}{CREATING_SUFFIX}"));
    let made = (|| {
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&creating)
            .map_err(io_err(&creating, "creating a write-ahead log segment"))?;
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = (left as usize).min(ZERO_CHUNK);
            file.write_all(&zeros[..n])
                .map_err(io_err(&creating, "preallocating a write-ahead log segment"))?;
            left -= n as u64;
        }
        file.sync_all()
            .map_err(io_err(&creating, "syncing a new write-ahead log segment"))?;
        Ok(file)
    })();
    match made {
        Ok(file) => Ok((file, creating)),
        Err(e) => {
            let _ = std::fs::remove_file(&creating);
            Err(e)
        }
    }
}

/// Renames the prepared file `creating` into place as segment `first_lsn`
/// and syncs the directory. A failure removes the file (best effort).
pub(super) fn install_segment(
    dir: &Path,
    creating: &Path,
    first_lsn: u64,
) -> Result<PathBuf, StorageError> {
    let path = dir.join(segment_name(first_lsn));
    let installed = std::fs::rename(creating, &path)
        .map_err(io_err(
            &path,
            "renaming a new write-ahead log segment into place",
        ))
        .and_then(|()| sync_dir(dir));
    match installed {
        Ok(()) => Ok(path),
        Err(e) => {
            let _ = std::fs::remove_file(creating);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c_update(0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c_update(0, b""), 0);
        // Split anywhere, same value (the 8-byte path and the byte path agree).
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = crc32c_update(0, &data);
        for cut in [0, 1, 7, 8, 9, 500, 999, 1000] {
            assert_eq!(
                crc32c_update(crc32c_update(0, &data[..cut]), &data[cut..]),
                whole
            );
        }
    }

    #[test]
    fn records_round_trip_and_zeros_end_a_segment() {
        let mut seg = Vec::new();
        encode_record(7, b"first", &mut seg);
        encode_record(8, b"second record", &mut seg);
        let used = seg.len();
        seg.resize(used + 100, 0);
        let s = scan(&seg);
        assert_eq!(s.damage, None);
        assert_eq!(s.end, used);
        assert_eq!(s.records.len(), 2);
        assert_eq!(s.records[0].payload(&seg), b"first");
        assert_eq!(s.records[1].lsn, 8);
        assert_eq!(intact_record_after(&seg, 1, 7), Some(s.records[1].offset));
        assert_eq!(intact_record_after(&seg, 1, 8), None);
    }

    #[test]
    fn a_gap_in_lsns_is_damage() {
        let mut seg = Vec::new();
        encode_record(1, b"a", &mut seg);
        encode_record(3, b"b", &mut seg);
        let s = scan(&seg);
        assert_eq!(s.records.len(), 1);
        assert!(
            s.damage.as_deref().is_some_and(|d| d.contains("LSN 3")),
            "{s:?}"
        );
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(
            parse_segment_name("00000000000000000042.seg.creating"),
            None
        );
    }
}
