//! The target switch's own latency, read from its admin `/metrics`: the
//! `switchyard_request_duration_seconds` histogram (arrival of a request
//! to its answer written), so a report can show what the switch spends
//! next to the end-to-end figures.
//!
//! A plain HTTP/1.0 GET over a `TcpStream`, with timeouts and a bounded
//! read: this runs on the load generator's main thread, off the workers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The histogram the switch records its request latency in.
pub const METRIC: &str = "switchyard_request_duration_seconds";
/// Largest `/metrics` answer read; the switch's is a few kB.
const MAX_RESPONSE: u64 = 4 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(2);
/// Most buckets kept from one histogram (the switch has 18).
const MAX_BUCKETS: usize = 64;

/// Cumulative bucket counts by upper bound (seconds), ascending, and the
/// total count (the `+Inf` bucket).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
}

impl Histogram {
    /// What was recorded between `earlier` and `self` (counters only grow;
    /// a restart in between shows as negative counts, clamped to 0).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let before = |le: f64| {
            earlier
                .buckets
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, n)| *n)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, n)| (le, (n - before(le)).max(0.0)))
                .collect(),
            count: (self.count - earlier.count).max(0.0),
        }
    }

    /// Upper bound (seconds) of the bucket holding quantile `q` (0..1):
    /// the latency is at most this. `None` without samples; infinity when
    /// it lies past the last finite bucket.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        Some(
            self.buckets
                .iter()
                .find(|(_, n)| *n >= q * self.count)
                .map_or(f64::INFINITY, |(le, _)| *le),
        )
    }

    /// Share (0..1) of samples at or under `le` seconds, when `le` is a
    /// bucket bound.
    pub fn share_within(&self, le: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        self.buckets
            .iter()
            .find(|(b, _)| (b - le).abs() < le * 1e-9)
            .map(|(_, n)| n / self.count)
    }
}

/// Reads the switch's request-latency histogram from `admin`.
pub fn request_latency(admin: SocketAddr) -> Result<Histogram, String> {
    let body = get(admin, "/metrics").map_err(|e| format!("GET http://{admin}/metrics: {e}"))?;
    parse(&body, METRIC).ok_or_else(|| format!("http://{admin}/metrics has no {METRIC} histogram"))
}

/// The body of `GET path` (status 200 only).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    // One write: a server may answer and close after the first segment.
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut raw = Vec::with_capacity(16 * 1024);
    s.take(MAX_RESPONSE).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(std::io::Error::other(format!("answered `{status}`")));
    }
    Ok(body.to_string())
}

/// The histogram `name` from Prometheus text, summed over label sets.
pub fn parse(text: &str, name: &str) -> Option<Histogram> {
    let bucket = format!("{name}_bucket");
    let count = format!("{name}_count");
    let mut h = Histogram::default();
    let mut seen = false;
    for line in text.lines() {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (metric, labels) = key.split_once('{').unwrap_or((key, ""));
        if metric == count {
            h.count += value;
            seen = true;
        } else if metric == bucket {
            let Some(le) = labels
                .split(',')
                .find_map(|l| l.trim().strip_prefix("le=\""))
                .and_then(|l| l.split('"').next())
            else {
                continue;
            };
            if le == "+Inf" {
                continue;
            }
            let Ok(le) = le.parse::<f64>() else {
                continue;
            };
            if let Some(b) = h.buckets.iter_mut().find(|(b, _)| *b == le) {
                b.1 += value;
            } else if h.buckets.len() < MAX_BUCKETS {
                h.buckets.push((le, value));
            }
        }
    }
    h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    seen.then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE switchyard_request_duration_seconds histogram
switchyard_request_duration_seconds_bucket{le=\"0.0001\"} 10
switchyard_request_duration_seconds_bucket{le=\"0.001\"} 90
switchyard_request_duration_seconds_bucket{le=\"0.01\"} 99
switchyard_request_duration_seconds_bucket{le=\"+Inf\"} 100
switchyard_request_duration_seconds_sum 0.5
switchyard_request_duration_seconds_count 100
switchyard_requests_total 7
";

    #[test]
    fn parses_bounds_and_shares() {
        let h = parse(TEXT, METRIC).expect("found");
        assert_eq!(h.count, 100.0);
        assert_eq!(h.buckets.len(), 3);
        assert_eq!(h.quantile_bound(0.5), Some(0.001));
        assert_eq!(h.quantile_bound(0.99), Some(0.01));
        assert_eq!(h.quantile_bound(0.999), Some(f64::INFINITY));
        assert_eq!(h.share_within(0.001), Some(0.9));
        assert!(parse("other_metric 1\n", METRIC).is_none());
    }

    #[test]
    fn difference_of_two_scrapes() {
        let after = parse(TEXT, METRIC).expect("found");
        let before = Histogram {
            buckets: vec![(0.0001, 10.0), (0.001, 10.0), (0.01, 10.0)],
            count: 10.0,
        };
        let d = after.since(&before);
        assert_eq!(d.count, 90.0);
        assert_eq!(d.share_within(0.001), Some(80.0 / 90.0));
        assert_eq!(Histogram::default().quantile_bound(0.5), None);
    }
}
