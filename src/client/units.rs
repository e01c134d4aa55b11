//! Units on the command line: sizes (`256M`), CPU shares (`0.5`), and how
//! limits and usage read for people.

use crate::proto;

/// Why a size or CPU value on the command line is not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnitError {
    /// Not a number with an optional suffix.
    #[error(
        "'{0}' is not a size: use a number of bytes with an optional K, M, G or T suffix (powers of 1024), e.g. 256M"
    )]
    BadSize(String),
    /// Not a decimal number of cores with at most three decimals.
    #[error("'{0}' is not a number of cores: use a decimal such as 0.5 or 2 (at most 3 decimals)")]
    BadCpus(String),
    /// Too large to represent.
    #[error("'{0}' is too large")]
    TooLarge(String),
}

/// Parses a size in bytes: digits, then optionally `K`, `M`, `G` or `T`
/// (powers of 1024, in either case; `KiB`/`MiB`/… and a trailing `B` are
/// accepted too, and mean the same).
/// `256M` is 268435456.
///
/// # Errors
/// [`UnitError::BadSize`], [`UnitError::TooLarge`].
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let bad = || UnitError::BadSize(s.to_owned());
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(bad());
    }
    let shift = match suffix {
        "" | "B" | "b" => 0,
        "K" | "k" | "KiB" | "KB" | "kb" | "kib" => 10,
        "M" | "m" | "MiB" | "MB" | "mb" | "mib" => 20,
        "G" | "g" | "GiB" | "GB" | "gb" | "gib" => 30,
        "T" | "t" | "TiB" | "TB" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| UnitError::TooLarge(s.to_owned()))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| UnitError::TooLarge(s.to_owned()))
}

/// Parses a CPU share in cores (`0.5`, `2`, `1.25`) into thousandths of a
/// core (500, 2000, 1250).
///
/// # Errors
/// [`UnitError::BadCpus`], [`UnitError::TooLarge`].
pub fn parse_cpus(s: &str) -> Result<u32, UnitError> {
    let bad = || UnitError::BadCpus(s.to_owned());
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) || frac.len() > 3 {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| UnitError::TooLarge(s.to_owned()))?
    };
    let frac: u64 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
    let millis = whole
        .checked_mul(1000)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(|| UnitError::TooLarge(s.to_owned()))?;
    u32::try_from(millis).map_err(|_| UnitError::TooLarge(s.to_owned()))
}

pub use crate::limits::human_bytes;

/// Thousandths of a core for people: `0.500 cores`, `1 core`.
pub fn human_cpus(millis: u32) -> String {
    if millis == 1000 {
        "1 core".to_owned()
    } else if millis % 1000 == 0 {
        format!("{} cores", millis / 1000)
    } else {
        format!("{}.{:03} cores", millis / 1000, millis % 1000)
    }
}

/// `memory 64.0 MiB, cpu 0.500 cores, pids 64` — the set limits, or
/// `none` when nothing is limited.
pub fn describe_limits(l: &proto::Limits) -> String {
    let mut parts = Vec::new();
    if let Some(m) = l.memory_bytes {
        parts.push(format!("memory {}", human_bytes(m)));
    }
    if let Some(c) = l.cpu_millis {
        parts.push(format!("cpu {}", human_cpus(c)));
    }
    if let Some(p) = l.pids {
        parts.push(format!("pids {p}"));
    }
    if let Some(r) = l.io_read_bps {
        parts.push(format!("io read {}/s", human_bytes(r)));
    }
    if let Some(w) = l.io_write_bps {
        parts.push(format!("io write {}/s", human_bytes(w)));
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// `peak memory 1.2 MiB, cpu 0.003 s, 1 OOM kill`.
pub fn describe_usage(u: &proto::ResourceUsage) -> String {
    let mut parts = Vec::new();
    if let Some(m) = u.peak_memory_bytes {
        parts.push(format!("peak memory {}", human_bytes(m)));
    }
    if let Some(c) = u.cpu_usec {
        parts.push(format!(
            "cpu {}.{:03} s",
            c / 1_000_000,
            (c % 1_000_000) / 1000
        ));
    }
    match u.oom_kills {
        0 => {}
        1 => parts.push("1 OOM kill".to_owned()),
        n => parts.push(format!("{n} OOM kills")),
    }
    if parts.is_empty() {
        "not counted".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_powers_of_1024() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10k"), Ok(10240));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
    }

    #[test]
    fn malformed_sizes_are_refused() {
        for s in ["", "M", "-1M", "1.5G", "12X", "1 G", "0x10"] {
            assert_eq!(parse_size(s), Err(UnitError::BadSize(s.to_owned())), "{s}");
        }
        assert_eq!(
            parse_size("99999999999999999999"),
            Err(UnitError::TooLarge("99999999999999999999".into()))
        );
        assert_eq!(
            parse_size("20000000T"),
            Err(UnitError::TooLarge("20000000T".into()))
        );
    }

    #[test]
    fn cpus_become_thousandths_of_a_core() {
        assert_eq!(parse_cpus("0.5"), Ok(500));
        assert_eq!(parse_cpus(".25"), Ok(250));
        assert_eq!(parse_cpus("2"), Ok(2000));
        assert_eq!(parse_cpus("1.125"), Ok(1125));
        assert_eq!(parse_cpus("0.2"), Ok(200));
        for s in ["", ".", "1.2345", "-1", "half", "1,5", "1e3"] {
            assert_eq!(parse_cpus(s), Err(UnitError::BadCpus(s.to_owned())), "{s}");
        }
        assert_eq!(
            parse_cpus("5000000"),
            Err(UnitError::TooLarge("5000000".into()))
        );
    }

    #[test]
    fn limits_and_usage_read_for_people() {
        let l = proto::Limits {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
            pids: Some(64),
            io_read_bps: None,
            io_write_bps: Some(10 << 20),
        };
        assert_eq!(
            describe_limits(&l),
            "memory 64.0 MiB, cpu 0.500 cores, pids 64, io write 10.0 MiB/s"
        );
        assert_eq!(describe_limits(&proto::Limits::default()), "none");
        let u = proto::ResourceUsage {
            peak_memory_bytes: Some(1536),
            cpu_usec: Some(2_345_678),
            oom_kills: 1,
        };
        assert_eq!(
            describe_usage(&u),
            "peak memory 1.5 KiB, cpu 2.345 s, 1 OOM kill"
        );
        assert_eq!(human_cpus(1000), "1 core");
        assert_eq!(human_cpus(3000), "3 cores");
    }
}
