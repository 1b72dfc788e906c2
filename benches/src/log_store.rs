//! `log-store`: what one durable commit of replicated-log entries costs on
//! this machine, in redb (where the server holds the log today) and in an
//! append-only segment file prototype.
//!
//! # The segment prototype
//! A segment is a sequence of records, each
//! `[payload length: u32 LE][CRC-32C of the length bytes and the payload: u32 LE][payload]`.
//! A commit writes its records with one `pwrite` and then `fdatasync`s.
//! [`read_segment`] reads records back until the first one that is cut short
//! or fails its checksum (a torn or corrupt tail: everything before it is
//! returned), or until zeros to the end (unused preallocated space). A
//! zero-length record is never written, so an all-zero header cannot pass
//! for one.
//!
//! # What is measured ([`Store`], [`run_interleaved`])
//! Per commit: the time from starting the transaction (or framing the
//! records) to the return of `commit` (or `fdatasync`). The stores take
//! turns, one commit each, so a noisy neighbour on the disk slows all alike. Entries are
//! postcard-encoded [`vcodr_core::Entry`]s with a 200-byte value (~260 bytes),
//! encoded before the clock starts.

use crate::machine::{ms, percentile, render_table};
use anyhow::{bail, Context};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes before each record's payload: length and checksum.
pub const RECORD_HEADER_BYTES: usize = 8;
/// The largest payload a record may carry; a longer length field is damage.
pub const RECORD_PAYLOAD_MAX: usize = 1 << 20;
/// Bytes of each entry's value (as the write-vs-pg values and the anchor's rows).
pub const VALUE_BYTES: usize = 200;
/// Preallocated segment space at most (bounds the zero-filling too).
pub const PREALLOCATE_BYTES_MAX: u64 = 1 << 30;

// ---- CRC-32C: the production log's (`vcodr_server::storage::wal::segment`) --

pub use vcodr_server::storage::wal::segment::crc32c_update;

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_update(0, data)
}

// ---- records ---------------------------------------------------------------

/// Appends one record carrying `payload` (1..=[`RECORD_PAYLOAD_MAX`] bytes) to `out`.
pub fn encode_record(payload: &[u8], out: &mut Vec<u8>) {
    assert!(
        (1..=RECORD_PAYLOAD_MAX).contains(&payload.len()),
        "record payload of {} bytes outside 1..={RECORD_PAYLOAD_MAX}",
        payload.len()
    );
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32c_update(crc32c(&len), payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Why reading a segment stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Fewer than [`RECORD_HEADER_BYTES`] bytes left, not all zero.
    ShortHeader,
    /// The length field is 0 (with non-zero bytes after it) or over [`RECORD_PAYLOAD_MAX`].
    BadLength(u32),
    /// The payload runs past the end of the segment.
    ShortPayload { len: u32 },
    /// The checksum does not match the length and payload.
    BadChecksum,
}

/// How a segment ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// At the last byte, or followed only by zeros (preallocated space).
    Clean,
    /// At a damaged record starting at `offset`: a torn write, or corruption.
    Damaged { offset: usize, damage: Damage },
}

/// What [`read_segment`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRead<'a> {
    /// The payloads of the intact records, in order.
    pub records: Vec<&'a [u8]>,
    /// Bytes the intact records take: where the next append goes.
    pub end_offset: usize,
    pub tail: Tail,
}

/// Reads records from the start of `segment` until its end, zeros, or the first damaged record.
pub fn read_segment(segment: &[u8]) -> SegmentRead<'_> {
    let mut records = Vec::new();
    let mut at = 0;
    let tail = loop {
        let rest = &segment[at..];
        if rest.iter().all(|&b| b == 0) {
            break Tail::Clean;
        }
        let damaged = |damage| Tail::Damaged { offset: at, damage };
        if rest.len() < RECORD_HEADER_BYTES {
            break damaged(Damage::ShortHeader);
        }
        let len_bytes: [u8; 4] = rest[..4].try_into().expect("4 bytes checked above");
        let crc_bytes: [u8; 4] = rest[4..8].try_into().expect("8 bytes checked above");
        let len = u32::from_le_bytes(len_bytes);
        if len == 0 || len as usize > RECORD_PAYLOAD_MAX {
            break damaged(Damage::BadLength(len));
        }
        let Some(payload) = rest.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len as usize)
        else {
            break damaged(Damage::ShortPayload { len });
        };
        if crc32c_update(crc32c(&len_bytes), payload) != u32::from_le_bytes(crc_bytes) {
            break damaged(Damage::BadChecksum);
        }
        records.push(payload);
        at += RECORD_HEADER_BYTES + len as usize;
    };
    SegmentRead {
        records,
        end_offset: at,
        tail,
    }
}

// ---- the stores under test -------------------------------------------------

/// Where the log entries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// redb, `Durability::Immediate`, table `log`: index → encoded entry (as `server/src/storage/redb.rs`).
    Redb,
    /// Segment file growing with every commit (`fdatasync` also records the new size).
    SegmentGrowing,
    /// Segment file sized up front with `set_len` (sparse: blocks are allocated by the writes).
    SegmentSetLen,
    /// Segment file allocated up front with `fallocate` (unwritten extents, converted by the writes).
    SegmentFallocate,
    /// Segment file written with zeros and synced up front (as PostgreSQL prepares WAL segments).
    SegmentZeroFilled,
}

impl Store {
    pub const ALL: [Store; 5] = [
        Store::Redb,
        Store::SegmentGrowing,
        Store::SegmentSetLen,
        Store::SegmentFallocate,
        Store::SegmentZeroFilled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Store::Redb => "redb Immediate",
            Store::SegmentGrowing => "segment, growing",
            Store::SegmentSetLen => "segment, set_len",
            Store::SegmentFallocate => "segment, fallocate",
            Store::SegmentZeroFilled => "segment, zero-filled",
        }
    }
}

/// Bounds of one run: whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub commits_max: usize,
    pub time_max: Duration,
}

/// One measured run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub store: Store,
    pub batch: usize,
    pub commits: usize,
    pub entries: usize,
    pub bytes: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

impl RunResult {
    pub fn commits_per_s(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64()
    }
    pub fn entries_per_s(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64()
    }
}

/// The postcard encoding of the entry at `index`: a `configuration/put` of a 200-byte value.
pub fn entry_bytes(index: u64) -> Vec<u8> {
    let mut value = format!("\"{index:020}");
    value.extend(std::iter::repeat_n('x', VALUE_BYTES - 1 - value.len()));
    value.push('"');
    debug_assert_eq!(value.len(), VALUE_BYTES);
    let entry = vcodr_core::Entry {
        epoch: 3,
        index,
        op: vcodr_core::Op::Put {
            key: format!(
                "configuration/sites/site-{:04}/interfaces/ge-0-0-{:02}/vlan",
                index % 10_000,
                index % 48
            ),
            value: value.into_bytes(),
        },
    };
    postcard::to_stdvec(&entry).expect("an Entry always encodes")
}

const LOG: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");

/// Runs every store of `stores` in `dir` (fresh files) with `batch` entries
/// per commit, interleaved: one commit on each store in turn, so that the
/// noise of a shared machine falls on all of them alike. Each store stops
/// after `limits.commits_max` commits or `limits.time_max` spent committing.
/// Throughput is commits over the time spent in that store's commits.
pub fn run_interleaved(
    stores: &[Store],
    batch: usize,
    limits: Limits,
    dir: &Path,
) -> anyhow::Result<Vec<RunResult>> {
    assert!(batch >= 1 && limits.commits_max >= 1);
    struct Running {
        committer: Committer,
        latencies: Vec<Duration>,
        busy: Duration,
        bytes: usize,
    }
    let mut running = stores
        .iter()
        .map(|&store| {
            Ok(Running {
                committer: Committer::open(store, batch, limits, dir)?,
                latencies: Vec::with_capacity(limits.commits_max),
                busy: Duration::ZERO,
                bytes: 0,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut index = 1u64;
    // Bounded: every round adds one commit to each store still running.
    for _round in 0..limits.commits_max {
        let entries: Vec<(u64, Vec<u8>)> = (index..index + batch as u64)
            .map(|i| (i, entry_bytes(i)))
            .collect();
        index += batch as u64;
        let entry_bytes: usize = entries.iter().map(|(_, e)| e.len()).sum();
        let mut any = false;
        for r in running.iter_mut().filter(|r| r.busy < limits.time_max) {
            let t0 = Instant::now();
            r.committer.commit(&entries)?;
            let took = t0.elapsed();
            r.latencies.push(took);
            r.busy += took;
            r.bytes += entry_bytes;
            any = true;
        }
        if !any {
            break;
        }
    }
    let mut results = Vec::new();
    for (store, mut r) in stores.iter().zip(running) {
        let commits = r.latencies.len();
        r.committer.verify(commits * batch)?;
        r.latencies.sort_unstable();
        results.push(RunResult {
            store: *store,
            batch,
            commits,
            entries: commits * batch,
            bytes: r.bytes,
            elapsed: r.busy,
            p50: percentile(&r.latencies, 0.50),
            p99: percentile(&r.latencies, 0.99),
        });
    }
    Ok(results)
}

enum Committer {
    Redb(redb::Database),
    Segment {
        file: File,
        path: std::path::PathBuf,
        offset: u64,
        /// Framed records of the commit under way (reused).
        buf: Vec<u8>,
    },
}

impl Committer {
    fn open(store: Store, batch: usize, limits: Limits, dir: &Path) -> anyhow::Result<Committer> {
        if store == Store::Redb {
            let path = dir.join(format!("log-{batch}.redb"));
            let db = redb::Database::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            return Ok(Committer::Redb(db));
        }
        let path = dir.join(format!("log-{batch}-{:?}.seg", store));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let record_bytes = RECORD_HEADER_BYTES + entry_bytes(u64::MAX).len();
        let size = (limits.commits_max * batch * record_bytes) as u64 + (1 << 20);
        if size > PREALLOCATE_BYTES_MAX {
            bail!("{} commits of {batch} entries need {size} bytes preallocated, over {PREALLOCATE_BYTES_MAX}: fewer --commits", limits.commits_max);
        }
        match store {
            Store::Redb | Store::SegmentGrowing => {}
            Store::SegmentSetLen => file.set_len(size)?,
            Store::SegmentFallocate => {
                rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size)
                    .with_context(|| format!("fallocate {}", path.display()))?
            }
            Store::SegmentZeroFilled => {
                let zeros = vec![0u8; 1 << 20];
                let mut left = size as usize;
                let mut w = &file;
                while left > 0 {
                    let n = left.min(zeros.len());
                    w.write_all(&zeros[..n])?;
                    left -= n;
                }
            }
        }
        // The file, its size and its directory entry are durable before the clock starts.
        file.sync_all()?;
        File::open(dir)?.sync_all()?;
        Ok(Committer::Segment {
            file,
            path,
            offset: 0,
            buf: Vec::new(),
        })
    }

    fn commit(&mut self, entries: &[(u64, Vec<u8>)]) -> anyhow::Result<()> {
        match self {
            Committer::Redb(db) => {
                let mut txn = db.begin_write()?;
                txn.set_durability(redb::Durability::Immediate)?;
                {
                    let mut t = txn.open_table(LOG)?;
                    for (i, e) in entries {
                        t.insert(*i, e.as_slice())?;
                    }
                }
                txn.commit()?;
            }
            Committer::Segment {
                file, offset, buf, ..
            } => {
                buf.clear();
                for (_, e) in entries {
                    encode_record(e, buf);
                }
                file.write_all_at(buf, *offset)?;
                file.sync_data()?;
                *offset += buf.len() as u64;
            }
        }
        Ok(())
    }

    /// Reads everything back: `entries` entries, indexes 1.., intact.
    fn verify(&self, entries: usize) -> anyhow::Result<()> {
        match self {
            Committer::Redb(db) => {
                use redb::{ReadableDatabase, ReadableTableMetadata};
                let n = db.begin_read()?.open_table(LOG)?.len()?;
                if n != entries as u64 {
                    bail!("redb holds {n} log entries, {entries} were committed");
                }
            }
            Committer::Segment { path, .. } => {
                let bytes = std::fs::read(path)?;
                let read = read_segment(&bytes);
                if read.tail != Tail::Clean || read.records.len() != entries {
                    bail!(
                        "{}: read back {} records ending {:?}, {entries} were committed",
                        path.display(),
                        read.records.len(),
                        read.tail
                    );
                }
                if let Some((i, _)) = read
                    .records
                    .iter()
                    .enumerate()
                    .find(|(i, r)| **r != entry_bytes(*i as u64 + 1).as_slice())
                {
                    bail!("{}: record {i} is not the entry written", path.display());
                }
            }
        }
        Ok(())
    }
}

/// The table: one row per store and batch, ratios against redb at the same batch.
pub fn render(results: &[RunResult]) -> String {
    let mut rows = vec![[
        "store",
        "batch",
        "commits",
        "p50 ms",
        "p99 ms",
        "commits/s",
        "entries/s",
        "MB/s",
        "p50 / redb",
        "entries/s / redb",
    ]
    .map(String::from)
    .to_vec()];
    for r in results {
        let redb = results
            .iter()
            .find(|b| b.store == Store::Redb && b.batch == r.batch);
        let (p50_ratio, rate_ratio) = match redb {
            Some(b) if b.p50 > Duration::ZERO && b.entries_per_s() > 0.0 => (
                format!("{:.2}", r.p50.as_secs_f64() / b.p50.as_secs_f64()),
                format!("{:.2}", r.entries_per_s() / b.entries_per_s()),
            ),
            _ => ("-".into(), "-".into()),
        };
        rows.push(vec![
            r.store.name().to_string(),
            r.batch.to_string(),
            r.commits.to_string(),
            ms(r.p50),
            ms(r.p99),
            format!("{:.0}", r.commits_per_s()),
            format!("{:.0}", r.entries_per_s()),
            format!("{:.2}", r.bytes as f64 / r.elapsed.as_secs_f64() / 1e6),
            p50_ratio,
            rate_ratio,
        ]);
    }
    render_table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c_update(crc32c(b"1234"), b"56789"), 0xE306_9283);
    }

    fn segment(payloads: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        for p in payloads {
            starts.push(out.len());
            encode_record(p, &mut out);
        }
        (out, starts)
    }

    const PAYLOADS: [&[u8]; 3] = [b"first", b"the second record", b"3"];

    #[test]
    fn records_read_back_in_order() {
        let (seg, _) = segment(&PAYLOADS);
        assert_eq!(seg.len(), 3 * RECORD_HEADER_BYTES + 5 + 17 + 1);
        assert_eq!(
            read_segment(&seg),
            SegmentRead {
                records: PAYLOADS.to_vec(),
                end_offset: seg.len(),
                tail: Tail::Clean
            }
        );
        assert_eq!(read_segment(&[]).tail, Tail::Clean);
    }

    #[test]
    fn zeros_after_the_last_record_are_preallocated_space() {
        let (mut seg, _) = segment(&PAYLOADS);
        let end = seg.len();
        seg.resize(end + 4096, 0);
        let read = read_segment(&seg);
        assert_eq!(
            (read.records, read.end_offset, read.tail),
            (PAYLOADS.to_vec(), end, Tail::Clean)
        );
    }

    #[test]
    fn every_truncation_of_the_last_record_is_detected() {
        let (seg, starts) = segment(&PAYLOADS);
        let last = starts[2];
        for cut in last + 1..seg.len() {
            let read = read_segment(&seg[..cut]);
            assert_eq!(read.records, PAYLOADS[..2].to_vec(), "cut at {cut}");
            assert_eq!(read.end_offset, last, "cut at {cut}");
            let damage = match read.tail {
                Tail::Damaged { offset, damage } if offset == last => damage,
                other => panic!("cut at {cut}: {other:?}"),
            };
            if cut - last < RECORD_HEADER_BYTES {
                assert_eq!(damage, Damage::ShortHeader, "cut at {cut}");
            } else {
                assert_eq!(damage, Damage::ShortPayload { len: 1 }, "cut at {cut}");
            }
        }
        // A cut exactly between records is a clean end.
        assert_eq!(read_segment(&seg[..last]).tail, Tail::Clean);
    }

    #[test]
    fn a_torn_write_into_preallocated_space_is_detected() {
        // Header written, payload still zeros: the checksum does not match.
        let (mut seg, starts) = segment(&PAYLOADS);
        let mid = starts[1];
        for b in &mut seg[mid + RECORD_HEADER_BYTES..] {
            *b = 0;
        }
        seg.resize(seg.len() + 512, 0);
        let read = read_segment(&seg);
        assert_eq!(read.records, PAYLOADS[..1].to_vec());
        assert_eq!(
            read.tail,
            Tail::Damaged {
                offset: mid,
                damage: Damage::BadChecksum
            }
        );
    }

    #[test]
    fn every_corrupt_byte_of_the_last_record_is_detected() {
        let (seg, starts) = segment(&PAYLOADS);
        let second = starts[1];
        for at in second..starts[2] {
            let mut bad = seg.clone();
            bad[at] ^= 0x40;
            let read = read_segment(&bad);
            assert_eq!(read.records, PAYLOADS[..1].to_vec(), "byte {at} flipped");
            assert!(
                matches!(read.tail, Tail::Damaged { offset, .. } if offset == second),
                "byte {at} flipped: {:?}",
                read.tail
            );
        }
        // Flipped length bits: too long for the segment, or over the limit.
        let mut long = seg.clone();
        long[starts[2] + 3] = 0x7F;
        assert_eq!(
            read_segment(&long).tail,
            Tail::Damaged {
                offset: starts[2],
                damage: Damage::BadLength(0x7F00_0001)
            }
        );
    }

    #[test]
    #[should_panic(expected = "outside 1..=")]
    fn an_empty_record_is_never_written() {
        encode_record(b"", &mut Vec::new());
    }

    #[test]
    fn entries_are_about_260_bytes() {
        let n = entry_bytes(1).len();
        assert!((250..=270).contains(&n), "{n}");
        assert_eq!(entry_bytes(u64::MAX).len(), entry_bytes(1).len() + 9);
    }

    #[test]
    fn every_store_reads_back_what_it_committed() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            commits_max: 5,
            time_max: Duration::from_secs(10),
        };
        let results = run_interleaved(&Store::ALL, 3, limits, dir.path()).unwrap();
        assert_eq!(results.len(), Store::ALL.len());
        for (r, store) in results.iter().zip(Store::ALL) {
            assert_eq!((r.store, r.commits, r.entries), (store, 5, 15));
        }
    }
}
