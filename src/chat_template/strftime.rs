//! `strftime_now(format)`, which Hugging Face templates (Llama 3.x, …) call for today's date.

/// English month and weekday names, as Python's `strftime` writes them in the C locale.
const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// A UTC date and time, broken down.
struct DateTime {
    year: i64,
    month: usize,
    day: u32,
    /// 0 = Monday.
    weekday: usize,
    day_of_year: u32,
    hour: u64,
    minute: u64,
    second: u64,
}

/// The civil date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, usize, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as usize;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

impl DateTime {
    fn from_unix(secs: u64) -> Self {
        let days = (secs / 86_400) as i64;
        let (year, month, day) = civil_from_days(days);
        let before: u32 = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][..month - 1].iter().sum();
        let leap = u32::from(month > 2 && is_leap(year));
        Self {
            year,
            month,
            day,
            // 1970-01-01 was a Thursday.
            weekday: (days + 3).rem_euclid(7) as usize,
            day_of_year: before + leap + day,
            hour: secs % 86_400 / 3600,
            minute: secs % 3600 / 60,
            second: secs % 60,
        }
    }
}

/// `format` with Python's common `strftime` codes filled in for `secs` (Unix time, UTC);
/// other codes are left as written.
pub(super) fn format(format: &str, secs: u64) -> String {
    let t = DateTime::from_unix(secs);
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(code) = chars.next() else {
            out.push('%');
            break;
        };
        let month = MONTHS[t.month - 1];
        let weekday = WEEKDAYS[t.weekday];
        match code {
            'Y' => out.push_str(&t.year.to_string()),
            'y' => out.push_str(&format!("{:02}", t.year.rem_euclid(100))),
            'm' => out.push_str(&format!("{:02}", t.month)),
            'd' => out.push_str(&format!("{:02}", t.day)),
            'e' => out.push_str(&format!("{:2}", t.day)),
            'j' => out.push_str(&format!("{:03}", t.day_of_year)),
            'B' => out.push_str(month),
            'b' | 'h' => out.push_str(&month[..3]),
            'A' => out.push_str(weekday),
            'a' => out.push_str(&weekday[..3]),
            'H' => out.push_str(&format!("{:02}", t.hour)),
            'I' => out.push_str(&format!("{:02}", (t.hour + 11) % 12 + 1)),
            'p' => out.push_str(if t.hour < 12 { "AM" } else { "PM" }),
            'M' => out.push_str(&format!("{:02}", t.minute)),
            'S' => out.push_str(&format!("{:02}", t.second)),
            '%' => out.push('%'),
            other => {
                out.push('%');
                out.push(other);
            }
        }
    }
    out
}

/// Now, as Unix seconds (0 if the clock is before 1970).
pub(super) fn now() -> u64 {
    web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn strftime_formats_python_codes() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        assert_eq!(super::format("%d %b %Y", 1_722_000_309), "26 Jul 2024");
        assert_eq!(super::format("%A %B %e, %y %H:%M:%S %p %j %% %Q", 1_722_000_309), "Friday July 26, 24 13:25:09 PM 208 % %Q");
        assert_eq!(super::format("%Y-%m-%d %a", 0), "1970-01-01 Thu");
        assert_eq!(super::format("%Y-%m-%d", 951_782_400), "2000-02-29");
    }
}
