//! What the measurement programs say about the machine they ran on, and the
//! latency percentiles they report.

use std::time::Duration;

/// The machine as `/proc` and the scheduler see it at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    /// CPUs this process may run on (what `nproc` prints).
    pub cpus: usize,
    /// `model name` of the first CPU in `/proc/cpuinfo`, or `unknown`.
    pub cpu_model: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
        }
    }

    /// `machine: nproc 2, Intel(R) Xeon(R) Processor; load average before 1.00 0.50 0.25, after ...`
    pub fn line(&self, load_before: &str, load_after: &str) -> String {
        format!(
            "machine: nproc {}, {}; load average (1/5/15 min) before {load_before}, after {load_after}",
            self.cpus, self.cpu_model
        )
    }
}

/// The `model name` of the first processor in `/proc/cpuinfo` text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_string())
    })
}

/// The 1, 5 and 15 minute load averages from `/proc/loadavg`, e.g. `2.24 1.89 2.35`.
pub fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fields: Vec<&str> = text.split_whitespace().take(3).collect();
    if fields.len() == 3 {
        fields.join(" ")
    } else {
        "unknown".into()
    }
}

/// Nearest-rank percentile `p` (0 < p <= 1) of `sorted` (ascending); zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    debug_assert!(p > 0.0 && p <= 1.0, "percentile {p} outside (0, 1]");
    debug_assert!(sorted.windows(2).all(|w| w[0] <= w[1]), "not sorted");
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds with three decimals, as the tables print them.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Rows of cells as a table: columns padded to their widest cell, the first
/// row a header, separated by ` | ` and underlined.
pub fn render_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (r, row) in rows.iter().enumerate() {
        let cells: Vec<String> = (0..columns)
            .map(|i| {
                let cell = row.get(i).map_or("", String::as_str);
                let pad = widths[i] - cell.chars().count();
                // Numbers read best right-aligned; the first column names the row.
                if i == 0 || r == 0 {
                    format!("{cell}{}", " ".repeat(pad))
                } else {
                    format!("{}{cell}", " ".repeat(pad))
                }
            })
            .collect();
        out += cells.join(" | ").trim_end();
        out.push('\n');
        if r == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out += &rule.join("-|-");
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n\nprocessor\t: 1\nmodel name\t: Other\n";
        assert_eq!(
            cpu_model(text).as_deref(),
            Some("Intel(R) Xeon(R) Processor")
        );
        assert_eq!(cpu_model("processor\t: 0\n"), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(
            percentile(&[Duration::from_millis(7)], 0.99),
            Duration::from_millis(7)
        );
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn tables_pad_columns_and_underline_the_header() {
        let rows = vec![
            vec!["name".to_string(), "n".to_string()],
            vec!["a".to_string(), "1000".to_string()],
            vec!["longer".to_string(), "2".to_string()],
        ];
        assert_eq!(
            render_table(&rows),
            "name   | n\n-------|-----\na      | 1000\nlonger |    2\n"
        );
    }
}

/// Resource counters of one process at one moment (`/proc/<pid>/stat` and `status`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Proc {
    /// utime + stime, in seconds (clock ticks of 10 ms).
    pub cpu_s: f64,
    pub rss_kib: u64,
}

/// `pid`'s counters now; zeros for a process that is gone.
pub fn proc_now(pid: u32) -> Proc {
    let cpu_s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0) as f64
        / 100.0;
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    Proc { cpu_s, rss_kib }
}

/// The calling thread's id (its `/proc/self/task/<tid>`).
pub fn current_tid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

/// Seconds thread `tid` of this process has run on a CPU
/// (`/proc/self/task/<tid>/schedstat`, nanoseconds, not clock ticks);
/// `None` for a thread that is gone or a kernel without schedstat.
pub fn thread_run_s(tid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    Some(s.split_whitespace().next()?.parse::<u64>().ok()? as f64 / 1e9)
}
