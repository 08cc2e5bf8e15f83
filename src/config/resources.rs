//! The resource limits a route or post command puts on its jobs' cgroups,
//! `memory_max` and `cpu_weight`, with systemd's meaning and syntax
//! (`MemoryMax=`, `CPUWeight=`). They are parsed here; [`crate::job::cgroup`]
//! applies them.

use std::fmt;

/// The largest `cpu_weight` (systemd's and the kernel's `cpu.weight` range is 1..=10000).
pub const MAX_CPU_WEIGHT: u32 = 10_000;

/// The limits on one job's cgroup; `None`: not set (the kernel's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// The job's memory ceiling (`memory.max`): past it the kernel reclaims, then
    /// the OOM killer ends a process of the job.
    pub memory_max: Option<MemoryMax>,
    /// The job's share of CPU time against its siblings (`cpu.weight`, 1..=10000;
    /// the kernel's default is 100).
    pub cpu_weight: Option<u32>,
}

impl Limits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        self.memory_max.is_none() && self.cpu_weight.is_none()
    }

    /// The config keys of the limits that are set, for messages.
    pub fn keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.memory_max.is_some() {
            keys.push("memory_max");
        }
        if self.cpu_weight.is_some() {
            keys.push("cpu_weight");
        }
        keys
    }
}

/// A `memory_max` value, as systemd's `MemoryMax=` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryMax {
    /// At most this many bytes (at least 1).
    Bytes(u64),
    /// This share of the physical memory, in hundredths of a percent (1..=10000).
    Permyriad(u32),
    /// No limit (`"infinity"`): the cgroup's `memory.max` is `max`.
    Infinity,
}

/// The suffixes of a size, largest first, with their multipliers (base 1024).
const SUFFIXES: [(char, u64); 4] = [('T', 1 << 40), ('G', 1 << 30), ('M', 1 << 20), ('K', 1 << 10)];

impl MemoryMax {
    /// A byte count written as a TOML integer: at least 1.
    pub fn from_integer(bytes: i64) -> Result<MemoryMax, String> {
        match u64::try_from(bytes) {
            Ok(b) if b > 0 => Ok(MemoryMax::Bytes(b)),
            _ => Err(format!(
                "`memory_max` must be at least 1 byte, not {bytes} (leave it out for no limit)"
            )),
        }
    }

    /// A string in systemd's syntax: bytes (`"1073741824"`), a size with a suffix K,
    /// M, G or T, base 1024 (`"512M"`, `"1.5G"`), a percentage of the physical memory
    /// with at most two decimals (`"50%"`, `"12.5%"`), or `"infinity"`.
    pub fn parse(text: &str) -> Result<MemoryMax, String> {
        let bad = || {
            format!(
                "`memory_max` {text:?} is not a size: bytes, a number with K, M, G or T (base 1024) \
                 like \"512M\", a percentage of physical memory like \"50%\", or \"infinity\""
            )
        };
        if text == "infinity" {
            return Ok(MemoryMax::Infinity);
        }
        if let Some(number) = text.strip_suffix('%') {
            let permyriad = match decimal(number, 100, 2) {
                Ok(p) => p,
                Err(NotDecimal::Syntax) => return Err(bad()),
                Err(NotDecimal::Overflow) => u64::MAX,
            };
            return match u32::try_from(permyriad) {
                Ok(p) if (1..=10_000).contains(&p) => Ok(MemoryMax::Permyriad(p)),
                _ => Err(format!(
                    "`memory_max` {text:?} must be more than 0% and at most 100% of physical memory"
                )),
            };
        }
        let (number, multiplier) = match SUFFIXES.iter().find(|(s, _)| text.ends_with(*s)) {
            Some(&(_, m)) => (&text[..text.len() - 1], m),
            None if text.contains('.') => return Err(bad()),
            None => (text, 1),
        };
        match decimal(number, multiplier, 18) {
            Ok(0) => Err(format!(
                "`memory_max` {text:?} must be at least 1 byte (leave it out for no limit)"
            )),
            Ok(bytes) => Ok(MemoryMax::Bytes(bytes)),
            Err(NotDecimal::Overflow) => Err(format!("`memory_max` {text:?} is too large")),
            Err(NotDecimal::Syntax) => Err(bad()),
        }
    }

    /// What to write to `memory.max` on a machine with `physical_memory` bytes of RAM.
    pub fn cgroup_value(&self, physical_memory: u64) -> String {
        match self.bytes(physical_memory) {
            Some(bytes) => bytes.to_string(),
            None => "max".to_owned(),
        }
    }

    /// The limit in bytes on a machine with `physical_memory` bytes of RAM (a
    /// percentage: rounded down, at least one byte); `None`: no limit.
    pub fn bytes(&self, physical_memory: u64) -> Option<u64> {
        match *self {
            MemoryMax::Bytes(b) => Some(b),
            MemoryMax::Permyriad(p) => {
                let share = u128::from(physical_memory) * u128::from(p) / 10_000;
                Some(u64::try_from(share).unwrap_or(u64::MAX).max(1))
            }
            MemoryMax::Infinity => None,
        }
    }
}

/// Why a string is not a [`decimal`].
enum NotDecimal {
    /// It is not digits with an optional fraction.
    Syntax,
    /// The value does not fit 64 bits.
    Overflow,
}

/// `number` (digits, then optionally `.` and 1 to `max_fraction` digits) times
/// `multiplier`, the fraction's share rounded down.
fn decimal(number: &str, multiplier: u64, max_fraction: usize) -> Result<u64, NotDecimal> {
    let (whole, fraction) = match number.split_once('.') {
        Some((_, "")) => return Err(NotDecimal::Syntax),
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || fraction.len() > max_fraction {
        return Err(NotDecimal::Syntax);
    }
    let whole: u64 = whole.parse().map_err(|_| NotDecimal::Overflow)?;
    let mut total = whole.checked_mul(multiplier).ok_or(NotDecimal::Overflow)?;
    if !fraction.is_empty() {
        let scale = 10u128.pow(fraction.len() as u32);
        let part = fraction.parse::<u128>().map_err(|_| NotDecimal::Syntax)? * u128::from(multiplier) / scale;
        let part = u64::try_from(part).map_err(|_| NotDecimal::Overflow)?;
        total = total.checked_add(part).ok_or(NotDecimal::Overflow)?;
    }
    Ok(total)
}

impl fmt::Display for MemoryMax {
    /// In the syntax it is parsed from: the largest exact suffix (`512M`), a
    /// percentage (`12.5%`) or `infinity`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MemoryMax::Bytes(b) => match SUFFIXES.iter().find(|&&(_, m)| b % m == 0) {
                Some(&(suffix, m)) => write!(f, "{}{suffix}", b / m),
                None => write!(f, "{b}"),
            },
            MemoryMax::Permyriad(p) if p % 100 == 0 => write!(f, "{}%", p / 100),
            MemoryMax::Permyriad(p) if p % 10 == 0 => write!(f, "{}.{}%", p / 100, p % 100 / 10),
            MemoryMax::Permyriad(p) => write!(f, "{}.{:02}%", p / 100, p % 100),
            MemoryMax::Infinity => f.write_str("infinity"),
        }
    }
}

/// A `cpu_weight`: 1..=[`MAX_CPU_WEIGHT`].
pub fn cpu_weight(value: i64) -> Result<u32, String> {
    match u32::try_from(value) {
        Ok(w) if (1..=MAX_CPU_WEIGHT).contains(&w) => Ok(w),
        _ => Err(format!(
            "`cpu_weight` must be between 1 and {MAX_CPU_WEIGHT}, not {value} (the default weight is 100)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryMax::{self, *};

    #[test]
    fn sizes_parse_as_systemd_reads_them() {
        let ok = |s: &str| MemoryMax::parse(s).unwrap();
        assert_eq!(ok("1"), Bytes(1));
        assert_eq!(ok("1073741824"), Bytes(1 << 30));
        assert_eq!(ok("512K"), Bytes(512 << 10));
        assert_eq!(ok("512M"), Bytes(512 << 20));
        assert_eq!(ok("2G"), Bytes(2 << 30));
        assert_eq!(ok("1T"), Bytes(1 << 40));
        assert_eq!(ok("1.5G"), Bytes(3 << 29));
        assert_eq!(ok("0.5K"), Bytes(512));
        assert_eq!(ok("50%"), Permyriad(5000));
        assert_eq!(ok("12.5%"), Permyriad(1250));
        assert_eq!(ok("0.01%"), Permyriad(1));
        assert_eq!(ok("100%"), Permyriad(10_000));
        assert_eq!(ok("infinity"), Infinity);
        for bad in [
            "", "M", "1.5", "-1", "1 G", "1g", "1KB", "1P", "1.G", ".5G", "1.2.3M", "x%", "50.125%", "%",
            "Infinity", "max",
        ] {
            let e = MemoryMax::parse(bad).unwrap_err();
            assert!(e.contains("is not a size"), "{bad:?}: {e}");
        }
        for (zero_or_out, needle) in [
            ("0", "at least 1 byte"),
            ("0M", "at least 1 byte"),
            ("0.0000001K", "at least 1 byte"),
            ("0%", "more than 0%"),
            ("100.01%", "at most 100%"),
            ("99999999999999999999", "too large"),
            ("16777216T", "too large"),
        ] {
            let e = MemoryMax::parse(zero_or_out).unwrap_err();
            assert!(e.contains(needle), "{zero_or_out:?}: {e}");
        }
        assert_eq!(MemoryMax::from_integer(4096), Ok(Bytes(4096)));
        assert!(
            MemoryMax::from_integer(0)
                .unwrap_err()
                .contains("at least 1 byte")
        );
        assert!(MemoryMax::from_integer(-5).unwrap_err().contains("not -5"));
    }

    #[test]
    fn sizes_display_in_the_syntax_they_are_read_in() {
        for text in [
            "512M", "1G", "1.5G", "3K", "1000", "50%", "12.5%", "0.01%", "infinity",
        ] {
            let parsed = MemoryMax::parse(text).unwrap();
            let shown = parsed.to_string();
            assert_eq!(MemoryMax::parse(&shown).unwrap(), parsed, "{text} → {shown}");
        }
        assert_eq!(MemoryMax::parse("1.5G").unwrap().to_string(), "1536M");
        assert_eq!(Bytes(1 << 30).to_string(), "1G");
        assert_eq!(Permyriad(1234).to_string(), "12.34%");
    }

    #[test]
    fn percentages_are_of_physical_memory() {
        let gib = 1 << 30;
        assert_eq!(Permyriad(5000).bytes(8 * gib), Some(4 * gib));
        assert_eq!(Permyriad(1).bytes(100), Some(1));
        assert_eq!(Permyriad(10_000).cgroup_value(u64::MAX), u64::MAX.to_string());
        assert_eq!(Bytes(4096).cgroup_value(gib), "4096");
        assert_eq!(Infinity.cgroup_value(gib), "max");
        assert_eq!(Infinity.bytes(gib), None);
    }

    #[test]
    fn limits_name_the_keys_that_are_set() {
        let none = super::Limits::default();
        assert!(none.is_empty() && none.keys().is_empty());
        let both = super::Limits {
            memory_max: Some(Infinity),
            cpu_weight: Some(100),
        };
        assert!(!both.is_empty());
        assert_eq!(both.keys(), ["memory_max", "cpu_weight"]);
    }

    #[test]
    fn cpu_weights_are_one_to_ten_thousand() {
        assert_eq!(super::cpu_weight(1), Ok(1));
        assert_eq!(super::cpu_weight(10_000), Ok(10_000));
        for bad in [0, -1, 10_001, i64::MAX] {
            assert!(
                super::cpu_weight(bad)
                    .unwrap_err()
                    .contains("between 1 and 10000")
            );
        }
    }
}
